/*
 * pmem.c -- the libpmem2 mapping of a cache device and the production persistence seam.
 *
 * The whole device is mapped once, shared. PMEM2_GRANULARITY_PAGE is requested so a regular file
 * on any filesystem (tmpfs for /dev/shm emulation included) maps; libpmem2 reports what it
 * found (byte on eADR pmem, cache line on ADR pmem, page otherwise) and picks matching
 * memcpy/flush/drain functions. PMEM2_FORCE_GRANULARITY in the environment is honoured by
 * libpmem2 itself (tests use it to run the cache-line path on ordinary memory).
 *
 * Invariants:
 *  1. libpmem2 types and PMEM2_E_* codes never leave this file: every error goes through
 *     pmem_errno() (our pmem2_err_to_errno(), see there) and is returned as -errno.
 *  2. The seam's ctx is the struct pcache_pmem_map itself, which lives inside the cache device
 *     (stable address for the device's lifetime).
 *  3. Metadata is read with pread() (or libpmem2's machine-check-safe read on DAX character
 *     devices, which do not support read(2)), never through the mapping: poison becomes -EIO.
 */
#include <errno.h>
#include <libpmem2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcache/media.h"
#include "pcache/util.h"
#include "pmem_i.h"

struct pcache_pmem_lib {
	struct pmem2_source *src;
	struct pmem2_map *map;
	enum pmem2_granularity gran;
	pmem2_memcpy_fn memcpy_fn;
	pmem2_memset_fn memset_fn;
	pmem2_persist_fn persist_fn;
	pmem2_flush_fn flush_fn;
	pmem2_drain_fn drain_fn;
};

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

/*
 * PMEM2_E_* (or a -errno passed through by libpmem2) -> -errno.
 * NOTE: pmem2_err_to_errno() is declared by libpmem2.h but Debian 12's libpmem2 1.12 does not
 * export it (undefined reference at link time), so this is our own table, following PMDK's
 * mapping: unsupported -> ENOTSUP, I/O -> EIO, access -> EACCES, everything else -> EINVAL.
 */
static int pmem_errno(int rc)
{
	if (rc >= 0)
		return -EIO;
	if (rc > PMEM2_E_UNKNOWN)
		return rc; /* already -errno */
	switch (rc) {
	case PMEM2_E_NOSUPP:
	case PMEM2_E_GRANULARITY_NOT_SUPPORTED:
	case PMEM2_E_SOURCE_TYPE_NOT_SUPPORTED:
		return -ENOTSUP;
	case PMEM2_E_IO_FAIL:
		return -EIO;
	case PMEM2_E_NO_ACCESS:
		return -EACCES;
	case PMEM2_E_MAP_RANGE:
	case PMEM2_E_LENGTH_OUT_OF_RANGE:
	case PMEM2_E_OFFSET_OUT_OF_RANGE:
		return -ERANGE;
	case PMEM2_E_SOURCE_EMPTY:
		return -ENOSPC;
	default:
		return -EINVAL;
	}
}

static int pmem_err(int rc, const char *what, char *err, size_t errlen)
{
	int e = pmem_errno(rc);
	snprintf(err, errlen, "%s: %s", what, pmem2_errormsg());
	return e;
}

/* ---- the production seam ------------------------------------------------------------------ */

static unsigned int pm_flags(unsigned int flags)
{
	unsigned int f = 0;

	if (flags & PCACHE_PM_NODRAIN)
		f |= PMEM2_F_MEM_NODRAIN;
	if (flags & PCACHE_PM_NONTEMPORAL)
		f |= PMEM2_F_MEM_NONTEMPORAL;
	return f;
}

static void pm_memcpy(void *ctx, void *dst, const void *src, size_t len, unsigned int flags)
{
	struct pcache_pmem_lib *l = ctx;

	l->memcpy_fn(dst, src, len, pm_flags(flags));
}

static void pm_memset(void *ctx, void *dst, int c, size_t len, unsigned int flags)
{
	struct pcache_pmem_lib *l = ctx;

	l->memset_fn(dst, c, len, pm_flags(flags));
}

static void pm_persist(void *ctx, const void *addr, size_t len)
{
	struct pcache_pmem_lib *l = ctx;

	l->persist_fn(addr, len);
}

static void pm_flush(void *ctx, const void *addr, size_t len)
{
	struct pcache_pmem_lib *l = ctx;

	l->flush_fn(addr, len);
}

static void pm_drain(void *ctx)
{
	struct pcache_pmem_lib *l = ctx;

	l->drain_fn();
}

static const struct pcache_pmem_ops pm_ops = {
	.memcpy = pm_memcpy,
	.memset = pm_memset,
	.persist = pm_persist,
	.flush = pm_flush,
	.drain = pm_drain,
};

/* ---- mapping ------------------------------------------------------------------------------ */

int pcache_pmem_source_size(int fd, uint64_t *size, char *err, size_t errlen)
{
	struct pmem2_source *src = NULL;
	size_t sz = 0;
	int rc;

	rc = pmem2_source_from_fd(&src, fd);
	if (rc)
		return pmem_err(rc, "device", err, errlen);
	rc = pmem2_source_size(src, &sz);
	pmem2_source_delete(&src);
	if (rc)
		return pmem_err(rc, "device size", err, errlen);
	*size = sz;
	return 0;
}

int pcache_pmem_map_open(struct pcache_pmem_map *m, int fd, bool read_only, char *err,
			 size_t errlen)
{
	struct pmem2_config *cfg = NULL;
	struct stat st;
	size_t sz = 0;
	int rc;

	memset(m, 0, sizeof(*m));
	if (fstat(fd, &st))
		return -errno;
	m->lib = calloc(1, sizeof(*m->lib));
	if (!m->lib)
		return -ENOMEM;
	if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode)) {
		snprintf(err, errlen, "device: not a regular file or DAX character device%s",
			 S_ISBLK(st.st_mode) ? " (libpmem2 cannot map a block device; use a DAX "
					       "device or a file on a DAX file system)" : "");
		rc = S_ISDIR(st.st_mode) ? -EISDIR : -ENOTSUP;
		goto out;
	}
	m->devdax = S_ISCHR(st.st_mode);
	rc = pmem2_source_from_fd(&m->lib->src, fd);
	if (rc) {
		rc = pmem_err(rc, "device", err, errlen);
		goto out;
	}
	rc = pmem2_source_size(m->lib->src, &sz);
	if (rc) {
		rc = pmem_err(rc, "device size", err, errlen);
		goto out_source;
	}
	rc = pmem2_config_new(&cfg);
	if (rc) {
		rc = pmem_err(rc, "pmem2 config", err, errlen);
		goto out_source;
	}
	rc = pmem2_config_set_required_store_granularity(cfg, PMEM2_GRANULARITY_PAGE);
	if (!rc)
		rc = pmem2_config_set_sharing(cfg, PMEM2_SHARED);
	if (!rc && read_only)
		rc = pmem2_config_set_protection(cfg, PMEM2_PROT_READ);
	if (rc) {
		rc = pmem_err(rc, "pmem2 config", err, errlen);
		goto out_config;
	}
	rc = pmem2_map_new(&m->lib->map, cfg, m->lib->src);
	if (rc) {
		rc = pmem_err(rc, "map device", err, errlen);
		goto out_config;
	}
	pmem2_config_delete(&cfg);

	m->base = pmem2_map_get_address(m->lib->map);
	m->size = pmem2_map_get_size(m->lib->map);
	m->lib->gran = pmem2_map_get_store_granularity(m->lib->map);
	m->lib->memcpy_fn = pmem2_get_memcpy_fn(m->lib->map);
	m->lib->memset_fn = pmem2_get_memset_fn(m->lib->map);
	m->lib->persist_fn = pmem2_get_persist_fn(m->lib->map);
	m->lib->flush_fn = pmem2_get_flush_fn(m->lib->map);
	m->lib->drain_fn = pmem2_get_drain_fn(m->lib->map);
	m->seam.ops = &pm_ops;
	m->seam.ctx = m->lib;
	/* a media error in the mapping is an error of the access, not the end of the process */
	rc = pcache_media_init();
	if (rc) {
		snprintf(err, errlen, "device: cannot install the SIGBUS handler: %s", strerror(-rc));
		pcache_pmem_map_close(m);
		return rc;
	}
	return 0;

out_config:
	pmem2_config_delete(&cfg);
out_source:
	pmem2_source_delete(&m->lib->src);
out:
	free(m->lib);
	m->lib = NULL;
	return rc;
}

void pcache_pmem_map_close(struct pcache_pmem_map *m)
{
	if (m->lib) {
		if (m->lib->map)
			pmem2_map_delete(&m->lib->map);
		if (m->lib->src)
			pmem2_source_delete(&m->lib->src);
		free(m->lib);
		m->lib = NULL;
	}
	m->base = NULL;
}

const char *pcache_pmem_granularity_name(const struct pcache_pmem_map *m)
{
	switch (m->lib->gran) {
	case PMEM2_GRANULARITY_BYTE:
		return "byte";
	case PMEM2_GRANULARITY_CACHE_LINE:
		return "cache line";
	case PMEM2_GRANULARITY_PAGE:
		return "page";
	}
	return "unknown";
}

int pcache_pmem_pread(const struct pcache_pmem_map *m, int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;
	ssize_t n;
	int rc;

	if (m->devdax) {
		rc = pmem2_source_pread_mcsafe(m->lib->src, buf, len, (size_t)off);
		return rc ? pmem_errno(rc) : 0; /* poison is PMEM2_E_IO_FAIL -> -EIO */
	}
	while (done < len) {
		n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO; /* past the end: the device shrank under us */
		done += (size_t)n;
	}
	return 0;
}

void pcache_pmem_prefault_range(const struct pcache_pmem_map *m, uint64_t off, uint64_t len,
				bool writable)
{
	volatile const char *p = m->base;
	long pg = sysconf(_SC_PAGESIZE);
	uint64_t step = (uint64_t)(pg > 0 ? pg : 4096), end;

	if (off >= m->size)
		return;
	len = PCACHE_MIN(len, m->size - off);
	/* madvise wants a page-aligned start */
	end = off + len;
	off = PCACHE_ALIGN_DOWN(off, step);
	if (madvise((char *)m->base + off, end - off, writable ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0)
		return;
	/* older kernels: read-fault every page (a write would need the seam; reads are enough) */
	for (; off < end; off += step)
		(void)p[off];
}

void pcache_pmem_prefault(const struct pcache_pmem_map *m, bool writable)
{
	pcache_pmem_prefault_range(m, 0, m->size, writable);
}
