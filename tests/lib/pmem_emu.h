/*
 * pmem_emu.h -- a persistence emulator for the cache device seam (struct pcache_pmem).
 *
 * Installed through pcache_cache_opts.wrap_pmem. Stores go to the real mapping at once (the
 * engine reads them back as usual), but a shadow copy of the device is updated only with what
 * is persisted: a memcpy/memset without PCACHE_PM_NODRAIN, persist(), or flush() followed by
 * drain(). Each of those is a "persist event". With crash_at = N the N-th event is applied torn
 * (a random subset of its 64-byte lines) and the shadow freezes: everything later is lost, as
 * in a power failure at that instant (on_crash runs then). pmem_emu_power_fail() writes the
 * shadow over the device file (after the cache was stopped), so the next start replays exactly
 * what survived.
 */
#ifndef PCACHE_PMEM_EMU_H
#define PCACHE_PMEM_EMU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pcache/cache_dev.h"

struct pmem_emu_range {
	uint64_t off, len;
};

struct pmem_emu {
	/* settings */
	uint64_t crash_at;        /* 0 = never crash */
	uint32_t seed;            /* torn-write choice */
	/*
	 * Called at the crash event, in the thread that persists, with the emulator's lock held
	 * (no other persist can pass it meanwhile): the place to freeze what else a power
	 * failure freezes, such as the backing images. Set after pmem_emu_init(); may be NULL.
	 */
	void (*on_crash)(void *arg);
	void *crash_arg;
	/* state */
	struct pcache_pmem real;
	uint8_t *base;
	uint64_t size;
	uint8_t *shadow;
	uint64_t events;          /* persist events so far */
	bool crashed;
	struct pmem_emu_range *pend; /* flushed, not drained */
	size_t npend, cappend;
	void *lock;               /* pthread_mutex_t */
};

/* Reset e for a run (keeps nothing of a previous run); crash_at 0 = no crash. */
void pmem_emu_init(struct pmem_emu *e, uint64_t crash_at, uint32_t seed);
/* The wrap_pmem hook: pass pmem_emu_wrap and the struct pmem_emu as wrap_arg. */
struct pcache_pmem pmem_emu_wrap(struct pcache_pmem real, void *base, uint64_t size, void *arg);
/* Persist events so far (thread safe). */
uint64_t pmem_emu_events(struct pmem_emu *e);
/* Write the shadow over the device file (cache stopped); 0 or -errno. Frees the shadow. */
int pmem_emu_power_fail(struct pmem_emu *e, const char *path);
/* Free the emulator's memory without a power failure. */
void pmem_emu_free(struct pmem_emu *e);

#endif
