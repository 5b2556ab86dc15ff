/*
 * media.h -- media errors of the cache mapping: a SIGBUS during a guarded access becomes -EIO.
 *
 * The data area of the cache device is read and written through its mapping. A poisoned line
 * (pmem with an uncorrectable error) or a page the mapped file no longer has (a file cut under
 * the mapping) raises SIGBUS on access. The engine runs those accesses guarded: a SIGBUS whose
 * address lies in the range the calling thread guards ends the guarded call with -EIO. Any
 * other SIGBUS goes to the handler that was installed before (by default the process dies:
 * a real bug is never hidden).
 *
 * Guards are per thread and do not nest. The handler is installed once per process
 * (pcache_media_init, called when a cache device is mapped). The kernel's own accesses to the
 * mapping (a zero-copy FUSE reply, an io_uring write from it) do not raise SIGBUS: they fail
 * with EFAULT, which the callers treat as a media error too.
 */
#ifndef PCACHE_MEDIA_H
#define PCACHE_MEDIA_H

#include <stddef.h>
#include <stdint.h>

struct pcache_pmem;

/* Install the SIGBUS handler (once per process; later calls do nothing). 0 or -errno. */
int pcache_media_init(void);

/* memcpy() from the mapping (src) into ordinary memory: 0, or -EIO on a media error. */
int pcache_media_copy(void *dst, const void *src, size_t len);
/* CRC32C (seed PCACHE_CRC_SEED) of len bytes of the mapping at p: 0 and *crc, or -EIO. */
int pcache_media_crc(const void *p, size_t len, uint32_t *crc);
/* pm->ops->memcpy() into the mapping (dst) with flags: 0, or -EIO on a media error. */
int pcache_media_store(const struct pcache_pmem *pm, void *dst, const void *src, size_t len,
		       unsigned int flags);

/* Test hook: whether the handler is installed (0/1). */
int pcache_media_handler_installed(void);

#endif
