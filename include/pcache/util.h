/*
 * util.h -- small utilities shared by every layer: CRC32C, little-endian access, helpers.
 *
 * Depends only on libc. Nothing here allocates or takes locks.
 */
#ifndef PCACHE_UTIL_H
#define PCACHE_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- CRC32C (Castagnoli) ------------------------------------------------------------------ */

/* Seed used by every pcachefs checksum (as dm-pcache: raw reflected CRC32C, no inversion). */
#define PCACHE_CRC_SEED 0x3B15Au

/* Continue a raw CRC32C over buf. Uses SSE4.2 when the CPU has it, a table otherwise. */
uint32_t pcache_crc32c(uint32_t crc, const void *buf, size_t len);
/* The portable table implementation (exposed for tests and the benchmark). */
uint32_t pcache_crc32c_sw(uint32_t crc, const void *buf, size_t len);

/* ---- little-endian fields ----------------------------------------------------------------- */
/* NOTE: pcachefs only runs on little-endian hosts (checked at compile time in format.h), so
 * these are plain loads and stores; they exist to mark every on-media access. */
static inline uint16_t pcache_le16(const void *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t pcache_le32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t pcache_le64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ---- misc --------------------------------------------------------------------------------- */
#define PCACHE_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define PCACHE_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PCACHE_MAX(a, b) ((a) > (b) ? (a) : (b))
#define PCACHE_ALIGN_UP(x, a) (((x) + (a) - 1) / (a) * (a))
#define PCACHE_ALIGN_DOWN(x, a) ((x) / (a) * (a))
#define PCACHE_IS_POW2(x) ((x) != 0 && ((x) & ((x) - 1)) == 0)
#define pcache_likely(x) __builtin_expect(!!(x), 1)
#define pcache_unlikely(x) __builtin_expect(!!(x), 0)
#define pcache_container_of(ptr, type, member) \
	((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* Monotonic clock in nanoseconds. */
uint64_t pcache_now_ns(void);

/* Sequence comparison for dual-slot records, wrap-around aware: 1 if a is newer than b. */
static inline int pcache_seq_after(uint64_t a, uint64_t b) { return (int64_t)(a - b) > 0; }

#endif
