/*
 * pmem_emu.c -- the persistence emulator (see pmem_emu.h).
 *
 * Invariants:
 *  1. The shadow only ever receives bytes that the engine made durable through the seam.
 *  2. After the crash event nothing reaches the shadow, whatever the engine does later.
 *  3. The real mapping always receives every store (the running engine is not disturbed).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pmem_emu.h"

static pthread_mutex_t *L(struct pmem_emu *e)
{
	return e->lock;
}

void pmem_emu_init(struct pmem_emu *e, uint64_t crash_at, uint32_t seed)
{
	memset(e, 0, sizeof(*e));
	e->crash_at = crash_at;
	e->seed = seed ? seed : 1;
	e->lock = calloc(1, sizeof(pthread_mutex_t));
	pthread_mutex_init(L(e), NULL);
}

/* Lock held: one persist event over [off, off+len) of the mapping. */
static void event(struct pmem_emu *e, uint64_t off, uint64_t len)
{
	if (e->crashed || !e->shadow)
		return;
	e->events++;
	if (off > e->size || len > e->size - off)
		return;
	if (e->crash_at && e->events == e->crash_at) {
		/* torn: a pseudo-random subset of the 64-byte lines makes it */
		uint64_t a = off;

		while (a < off + len) {
			uint64_t next = (a / 64 + 1) * 64;
			uint64_t n = (next < off + len ? next : off + len) - a;

			e->seed = e->seed * 1103515245u + 12345u;
			if ((e->seed >> 16) & 1)
				memcpy(e->shadow + a, e->base + a, n);
			a += n;
		}
		e->crashed = true;
		if (e->on_crash)
			e->on_crash(e->crash_arg);
		return;
	}
	memcpy(e->shadow + off, e->base + off, len);
}

static uint64_t off_of(struct pmem_emu *e, const void *addr)
{
	return (uint64_t)((const uint8_t *)addr - e->base);
}

static void pend_add(struct pmem_emu *e, uint64_t off, uint64_t len)
{
	if (e->npend == e->cappend) {
		size_t cap = e->cappend ? e->cappend * 2 : 64;
		struct pmem_emu_range *p = realloc(e->pend, cap * sizeof(*p));

		if (!p)
			abort();
		e->pend = p;
		e->cappend = cap;
	}
	e->pend[e->npend++] = (struct pmem_emu_range){ off, len };
}

static void emu_memcpy(void *ctx, void *dst, const void *src, size_t len, unsigned int flags)
{
	struct pmem_emu *e = ctx;

	memcpy(dst, src, len);
	pthread_mutex_lock(L(e));
	if (flags & PCACHE_PM_NODRAIN)
		pend_add(e, off_of(e, dst), len);
	else
		event(e, off_of(e, dst), len);
	pthread_mutex_unlock(L(e));
}

static void emu_memset(void *ctx, void *dst, int c, size_t len, unsigned int flags)
{
	struct pmem_emu *e = ctx;

	memset(dst, c, len);
	pthread_mutex_lock(L(e));
	if (flags & PCACHE_PM_NODRAIN)
		pend_add(e, off_of(e, dst), len);
	else
		event(e, off_of(e, dst), len);
	pthread_mutex_unlock(L(e));
}

static void emu_persist(void *ctx, const void *addr, size_t len)
{
	struct pmem_emu *e = ctx;

	pthread_mutex_lock(L(e));
	event(e, off_of(e, addr), len);
	pthread_mutex_unlock(L(e));
}

static void emu_flush(void *ctx, const void *addr, size_t len)
{
	struct pmem_emu *e = ctx;

	pthread_mutex_lock(L(e));
	pend_add(e, off_of(e, addr), len);
	pthread_mutex_unlock(L(e));
}

static void emu_drain(void *ctx)
{
	struct pmem_emu *e = ctx;
	size_t i;

	/*
	 * NOTE: flushed ranges of every thread become durable at any drain (a drain orders the
	 * caller's flushes only; applying more is the optimistic side, which never hides a
	 * missing persist of the caller's own stores).
	 */
	pthread_mutex_lock(L(e));
	for (i = 0; i < e->npend; i++)
		event(e, e->pend[i].off, e->pend[i].len);
	e->npend = 0;
	pthread_mutex_unlock(L(e));
}

static const struct pcache_pmem_ops emu_ops = {
	.memcpy = emu_memcpy,
	.memset = emu_memset,
	.persist = emu_persist,
	.flush = emu_flush,
	.drain = emu_drain,
};

struct pcache_pmem pmem_emu_wrap(struct pcache_pmem real, void *base, uint64_t size, void *arg)
{
	struct pmem_emu *e = arg;

	e->real = real;
	e->base = base;
	e->size = size;
	e->shadow = malloc(size);
	if (!e->shadow)
		abort();
	memcpy(e->shadow, base, size);
	return (struct pcache_pmem){ .ops = &emu_ops, .ctx = e };
}

uint64_t pmem_emu_events(struct pmem_emu *e)
{
	uint64_t n;

	pthread_mutex_lock(L(e));
	n = e->events;
	pthread_mutex_unlock(L(e));
	return n;
}

void pmem_emu_free(struct pmem_emu *e)
{
	free(e->shadow);
	free(e->pend);
	if (e->lock) {
		pthread_mutex_destroy(L(e));
		free(e->lock);
	}
	e->shadow = NULL;
	e->pend = NULL;
	e->lock = NULL;
}

int pmem_emu_power_fail(struct pmem_emu *e, const char *path)
{
	int fd = open(path, O_WRONLY);
	uint64_t off = 0;
	int ret = 0;

	if (fd < 0)
		return -errno;
	while (off < e->size) {
		ssize_t n = pwrite(fd, e->shadow + off, (size_t)(e->size - off), (off_t)off);

		if (n <= 0) {
			ret = n < 0 ? -errno : -EIO;
			break;
		}
		off += (uint64_t)n;
	}
	close(fd);
	pmem_emu_free(e);
	return ret;
}
