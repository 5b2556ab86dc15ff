/*
 * pmem_i.h -- private interface of core/pmem.c: the libpmem2 mapping of a cache device and the
 * production persistence seam (struct pcache_pmem of include/pcache/cache_dev.h).
 *
 * Depends only on libpmem2 and cache_dev.h. Nothing outside core/ includes it; libpmem2 types
 * and PMEM2_E_* codes stop here (every function returns 0 or -errno).
 */
#ifndef PCACHE_PMEM_I_H
#define PCACHE_PMEM_I_H

#include <libpmem2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pcache/cache_dev.h"

/* One mapping of a whole device (file, block device or DAX character device). */
struct pcache_pmem_map {
	struct pmem2_source *src;
	struct pmem2_map *map;
	void *base;
	uint64_t size;
	enum pmem2_granularity gran;
	bool devdax;             /* character device: pread() does not work, use mcsafe reads */
	pmem2_memcpy_fn memcpy_fn;
	pmem2_memset_fn memset_fn;
	pmem2_persist_fn persist_fn;
	pmem2_flush_fn flush_fn;
	pmem2_drain_fn drain_fn;
	struct pcache_pmem seam; /* the production seam; seam.ctx points back at this struct */
};

/*
 * Size of the device behind fd as libpmem2 sees it (regular file size, block or DAX device
 * capacity). 0 or -errno.
 */
int pcache_pmem_source_size(int fd, uint64_t *size, char *err, size_t errlen);

/*
 * Map the whole device behind fd (shared; read-only when read_only). Page granularity is
 * requested so any file works; the granularity found is in m->gran. 0 or -errno (err filled).
 */
int pcache_pmem_map_open(struct pcache_pmem_map *m, int fd, bool read_only, char *err,
			 size_t errlen);
/* Unmap and free; m may be zeroed or half-opened. */
void pcache_pmem_map_close(struct pcache_pmem_map *m);

/* "byte", "cache line" or "page". */
const char *pcache_pmem_granularity_name(const struct pcache_pmem_map *m);

/*
 * Read len bytes at off from the device (pread(), or libpmem2's machine-check-safe read for a
 * DAX character device). A media error (poison) is -EIO, never SIGBUS.
 */
int pcache_pmem_pread(const struct pcache_pmem_map *m, int fd, void *buf, size_t len, uint64_t off);

/* Pre-fault the whole mapping (write faults when writable). Best effort, returns nothing. */
void pcache_pmem_prefault(const struct pcache_pmem_map *m, bool writable);
/* The same for [off, off + len) (clipped to the mapping). */
void pcache_pmem_prefault_range(const struct pcache_pmem_map *m, uint64_t off, uint64_t len,
				bool writable);

#endif
