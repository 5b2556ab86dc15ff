/*
 * handover.c -- what one daemon passes to the next when the FUSE connection changes hands
 * (keeper.c, or the service manager's fd store through fdstore.c, holds it meanwhile): the
 * hand-over state (the INIT request, the image slots), the session hooks that keep it current,
 * and the resend of requests the old daemon never answered.
 *
 * Invariants:
 *  1. Inode numbers and file handles are values derived from (slot, generation, kind): a new
 *     daemon that puts every image back in the slot it had, with the generation it had, answers
 *     the kernel's existing inodes and open files as the old one did. Slots keep their
 *     generation even when free, so a slot reused later still never matches a stale inode.
 *  2. The keeper (or the fd store) gets the state before the change it records is visible to
 *     the kernel where that matters (open counts: before the open reply), and every worker's
 *     fd before that worker's first read, so a request the daemon read is always on an fd the
 *     keeper (or the store) holds.
 *  3. The INIT request is replayed into the new session, never answered twice: the kernel
 *     negotiates once per connection.
 */
#include "daemon_i.h"

#include <errno.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PFS_NOTIFY_RESEND 7   /* FUSE_NOTIFY_RESEND (kernel 6.9, protocol 7.40; not in Debian's fuse.h) */

static struct {
	pthread_mutex_t mu;        /* guards init */
	uint8_t init[PFS_HSTATE_INIT_MAX];
	uint32_t init_len;
} ho = { .mu = PTHREAD_MUTEX_INITIALIZER };

int pfs_hstate_check(const struct pfs_hstate *st, size_t len)
{
	if (len != sizeof(*st) || st->magic != PFS_HSTATE_MAGIC || st->version != PFS_HSTATE_VERSION ||
	    st->size != sizeof(*st) || st->init_len > PFS_HSTATE_INIT_MAX ||
	    memchr(st->cache_path, '\0', sizeof(st->cache_path)) == NULL ||
	    memchr(st->mountpoint, '\0', sizeof(st->mountpoint)) == NULL)
		return -EPROTO;
	for (int i = 0; i < PFS_MAX_SLOTS; i++) {
		const struct pfs_hslot *h = &st->slots[i];

		if (h->attached > 1 || memchr(h->name, '\0', sizeof(h->name)) == NULL ||
		    (h->attached && !pcache_name_valid(h->name)))
			return -EPROTO;
	}
	return 0;
}

void pfs_hstate_build(struct pfs_hstate *st)
{
	memset(st, 0, sizeof(*st));
	st->magic = PFS_HSTATE_MAGIC;
	st->version = PFS_HSTATE_VERSION;
	st->size = sizeof(*st);
	st->mnt_dev = atomic_load(&pfs.mnt_dev);
	st->owner_pid = (uint32_t)getpid();
	snprintf(st->cache_path, sizeof(st->cache_path), "%s", pfs.opts->cache_path);
	snprintf(st->mountpoint, sizeof(st->mountpoint), "%s", pfs.opts->mountpoint);
	pthread_mutex_lock(&ho.mu);
	st->init_len = ho.init_len;
	memcpy(st->init, ho.init, ho.init_len);
	pthread_mutex_unlock(&ho.mu);
	pthread_mutex_lock(&pfs.lock);
	for (int i = 0; i < PFS_MAX_SLOTS; i++) {
		const struct pfs_slot *s = &pfs.slots[i];
		struct pfs_hslot *h = &st->slots[i];

		h->gen = atomic_load(&s->gen);
		if (s->state == PFS_SLOT_ATTACHED) {
			h->attached = 1;
			h->open_count = s->open_count;
			snprintf(h->name, sizeof(h->name), "%s", s->name);
		} else if (s->reserved[0]) {
			/* not attached again yet (its backing is missing): keep the claim */
			h->attached = 1;
			h->open_count = s->restore_open;
			snprintf(h->name, sizeof(h->name), "%s", s->reserved);
		}
	}
	pthread_mutex_unlock(&pfs.lock);
}

void pfs_hstate_reserve_slots(const struct pfs_hstate *st)
{
	pthread_mutex_lock(&pfs.lock);
	for (int i = 0; i < PFS_MAX_SLOTS; i++) {
		const struct pfs_hslot *h = &st->slots[i];
		struct pfs_slot *s = &pfs.slots[i];

		if (s->state != PFS_SLOT_FREE)
			continue;
		if (h->attached) {
			/* slot_fill() adds one: the image comes back with the generation it had */
			atomic_store(&s->gen, h->gen - 1);
			snprintf(s->reserved, sizeof(s->reserved), "%s", h->name);
			s->restore_open = h->open_count;
		} else {
			atomic_store(&s->gen, h->gen);
		}
	}
	pthread_mutex_unlock(&pfs.lock);
	pthread_mutex_lock(&ho.mu);
	ho.init_len = st->init_len;
	memcpy(ho.init, st->init, st->init_len);
	pthread_mutex_unlock(&ho.mu);
}

const void *pfs_handover_init(size_t *len)
{
	*len = ho.init_len;
	return ho.init_len ? ho.init : NULL;
}

static void on_init(const void *req, size_t len)
{
	if (len > PFS_HSTATE_INIT_MAX)
		return;   /* larger than any INIT request: not one we can replay */
	pthread_mutex_lock(&ho.mu);
	memcpy(ho.init, req, len);
	ho.init_len = (uint32_t)len;
	pthread_mutex_unlock(&ho.mu);
	/* the INIT reply follows; the keeper must know it before any later request is read */
	pfs_handover_changed();
}

static void on_reader_fd(int fd)
{
	int ret = pfs_keeper_send(PFS_KMSG_FD, fd, NULL, 0);

	if (ret == -ENOTCONN)
		ret = pfs_fdstore_add_clone(fd);
	if (ret && ret != -ENOTCONN)
		pfs_log(LOG_WARNING, "cannot hand a worker's fd to the %s: %s (requests it reads are "
			"lost if the daemon dies)", pfs_fdstore_on() ? "fd store" : "keeper", strerror(-ret));
}

void pfs_handover_hooks(struct pcache_fuse_session_cfg *cfg)
{
	cfg->on_init = on_init;
	cfg->on_reader_fd = on_reader_fd;
}

void pfs_handover_changed(void)
{
	struct pfs_hstate *st;
	int ret;

	if (!pfs_keeper_connected() && !pfs_fdstore_on())
		return;
	st = malloc(sizeof(*st));
	if (!st)
		return;
	pfs_hstate_build(st);
	pfs_fdstore_put_state(st);
	ret = pfs_keeper_send(PFS_KMSG_STATE, -1, st, sizeof(*st));
	if (ret && ret != -ENOTCONN)
		pfs_log(LOG_WARNING, "cannot update the keeper: %s", strerror(-ret));
	free(st);
}

int pfs_handover_resend(int fuse_fd)
{
	struct fuse_out_header oh = { .len = sizeof(oh), .error = PFS_NOTIFY_RESEND, .unique = 0 };
	ssize_t n = write(fuse_fd, &oh, sizeof(oh));

	if (n == (ssize_t)sizeof(oh))
		return 0;
	return n < 0 ? -errno : -EIO;
}
