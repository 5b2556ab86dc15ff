/*
 * rangelock.c -- per-image byte-range locks for the FUSE write path.
 *
 * The engine accepts only sector-aligned requests, so an unaligned write is a read-modify-write
 * of its edge sectors (ops.c). Two unaligned writers that share a sector would otherwise read the
 * same old sector and the second write would undo the first writer's bytes. The RMW holds its
 * aligned envelope exclusively; aligned writes hold their range shared, so they never wait for
 * each other and only wait for an overlapping RMW (and an RMW waits for them).
 *
 * Invariants:
 *  1. Two held ranges overlap only if both are shared.
 *  2. A range is on the held list exactly between pfs_rangelock_lock() and _unlock().
 *  3. Waiters re-check after every unlock (one broadcast per unlock that has waiters).
 * The list is short (at most one entry per in-flight write), so a linear scan is enough.
 */
#include "daemon_i.h"

#include <errno.h>

int pfs_rangelock_init(struct pfs_rangelock *rl)
{
	int err = pthread_mutex_init(&rl->mu, NULL);

	if (err)
		return -err;
	err = pthread_cond_init(&rl->cv, NULL);
	if (err) {
		pthread_mutex_destroy(&rl->mu);
		return -err;
	}
	rl->held = NULL;
	rl->waiters = 0;
	return 0;
}

void pfs_rangelock_destroy(struct pfs_rangelock *rl)
{
	pthread_cond_destroy(&rl->cv);
	pthread_mutex_destroy(&rl->mu);
}

static bool conflicts(const struct pfs_rangelock *rl, uint64_t start, uint64_t end, bool excl)
{
	for (const struct pfs_range *h = rl->held; h; h = h->next) {
		if (h->start < end && start < h->end && (excl || h->excl))
			return true;
	}
	return false;
}

void pfs_rangelock_lock(struct pfs_rangelock *rl, struct pfs_range *r, uint64_t start, uint64_t end, bool excl)
{
	r->start = start;
	r->end = end;
	r->excl = excl;
	pthread_mutex_lock(&rl->mu);
	while (conflicts(rl, start, end, excl)) {
		rl->waiters++;
		pthread_cond_wait(&rl->cv, &rl->mu);
		rl->waiters--;
	}
	r->next = rl->held;
	rl->held = r;
	pthread_mutex_unlock(&rl->mu);
}

void pfs_rangelock_unlock(struct pfs_rangelock *rl, struct pfs_range *r)
{
	pthread_mutex_lock(&rl->mu);
	for (struct pfs_range **p = &rl->held; *p; p = &(*p)->next) {
		if (*p == r) {
			*p = r->next;
			break;
		}
	}
	if (rl->waiters)
		pthread_cond_broadcast(&rl->cv);
	pthread_mutex_unlock(&rl->mu);
}
