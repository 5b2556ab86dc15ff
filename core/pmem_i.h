/*
 * pmem_i.h -- private interface of core/pmem.c: the libpmem2 mapping of a cache device and the
 * production persistence seam (struct pcache_pmem of include/pcache/cache_dev.h).
 *
 * Depends only on cache_dev.h. Nothing outside core/ includes it; libpmem2's types and
 * PMEM2_E_* codes stay inside core/pmem.c (struct pcache_pmem_lib is opaque; every function
 * returns 0 or -errno).
 */
#ifndef PCACHE_PMEM_I_H
#define PCACHE_PMEM_I_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pcache/cache_dev.h"

/* libpmem2's handles and functions of one mapping (core/pmem.c). */
struct pcache_pmem_lib;

/* One mapping of a whole device (file or DAX character device). */
struct pcache_pmem_map {
	struct pcache_pmem_lib *lib;
	void *base;
	uint64_t size;
	bool devdax;             /* character device: pread() does not work, use mcsafe reads */
	struct pcache_pmem seam; /* the production seam; seam.ctx is lib */
};

/*
 * Size of the device behind fd as libpmem2 sees it (regular file size, block or DAX device
 * capacity). 0 or -errno.
 */
int pcache_pmem_source_size(int fd, uint64_t *size, char *err, size_t errlen);

/*
 * Map the whole device behind fd (shared; read-only when read_only). Page granularity is
 * requested so any file works; pcache_pmem_granularity_name() says what was found. 0 or -errno
 * (err filled).
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
