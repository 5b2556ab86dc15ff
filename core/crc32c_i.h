/*
 * crc32c_i.h -- private interface between core/util.c (the CRC32C dispatcher and its portable
 * table path) and the CPU-specific fast path: core/crc32c_<arch>.c, one file per
 * architecture, picked by the Makefile (core/crc32c_generic.c where there is none).
 *
 * Depends only on libc.
 */
#ifndef PCACHE_CRC32C_I_H
#define PCACHE_CRC32C_I_H

#include <stddef.h>
#include <stdint.h>

typedef uint32_t (*pcache_crc32c_fn)(uint32_t crc, const void *buf, size_t len);

/*
 * The CPU instruction path, when this build has one and the CPU running it supports it (asked
 * at run time); NULL otherwise. Called once, from pcache_crc32c()'s one-time initialisation.
 * The path computes exactly what pcache_crc32c_sw() does (raw reflected CRC32C, no inversion).
 */
pcache_crc32c_fn pcache_crc32c_hw_probe(void);

#endif
