/*
 * util.h -- small utilities shared by every layer: CRC32C, little-endian access, logging,
 * helpers.
 *
 * Depends only on libc. Nothing here allocates; only pcache_log() takes a lock (its own).
 */
#ifndef PCACHE_UTIL_H
#define PCACHE_UTIL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- CRC32C (Castagnoli) ------------------------------------------------------------------ */

/* Seed used by every pcachefs checksum (as dm-pcache: raw reflected CRC32C, no inversion). */
#define PCACHE_CRC_SEED 0x3B15Au

/*
 * Continue a raw CRC32C over buf. Uses the CPU's instruction (SSE4.2 on x86-64) when the build
 * has that path and the CPU supports it (checked once at run time), a table otherwise.
 */
uint32_t pcache_crc32c(uint32_t crc, const void *buf, size_t len);
/* The portable table implementation (exposed for tests and the benchmark). */
uint32_t pcache_crc32c_sw(uint32_t crc, const void *buf, size_t len);
/* true when pcache_crc32c() can use a CPU instruction path on this build and CPU. */
bool pcache_crc32c_has_hw(void);

/* Test hook: which path pcache_crc32c() takes from now on, for the whole process. */
enum pcache_crc_impl {
	PCACHE_CRC_IMPL_AUTO,   /* the run-time choice (the default) */
	PCACHE_CRC_IMPL_SW,     /* the table */
	PCACHE_CRC_IMPL_HW,     /* the CPU instruction path */
};
/* Returns 0, -ENOTSUP for PCACHE_CRC_IMPL_HW when there is none, -EINVAL for another value. */
int pcache_crc32c_set_impl(enum pcache_crc_impl impl);

/* ---- little-endian fields ----------------------------------------------------------------- */
/* NOTE: pcachefs only runs on little-endian hosts (checked at compile time in format.h), so
 * these are plain loads and stores; they exist to mark every on-media access. */
static inline uint16_t pcache_le16(const void *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t pcache_le32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t pcache_le64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ---- logging ------------------------------------------------------------------------------ */
/*
 * Every message of the engine (core/) and the backing layer (backing/) goes through
 * pcache_log(); the program decides where lines go with pcache_set_log_hook() (the daemon:
 * syslog or stderr). Without a hook a line goes to stderr as "pcache: MESSAGE".
 * Levels are syslog's priorities, so a hook can pass them on unchanged.
 * Repeated lines are rate limited per format string: at most PCACHE_LOG_BURST lines of one
 * format per PCACHE_LOG_INTERVAL_NS; the first line of the next interval is preceded by
 * "N similar messages suppressed: FORMAT".
 */
#define PCACHE_LOG_ERR 3
#define PCACHE_LOG_WARNING 4
#define PCACHE_LOG_NOTICE 5
#define PCACHE_LOG_INFO 6
#define PCACHE_LOG_DEBUG 7
#define PCACHE_LOG_BURST 10
#define PCACHE_LOG_INTERVAL_NS (5ull * 1000000000u)

/* Receives one formatted line (no trailing newline); may be called from any thread. */
typedef void pcache_log_hook_fn(int level, const char *line);
/* Install hook (NULL = back to stderr). Set it before starting threads that log. */
void pcache_set_log_hook(pcache_log_hook_fn *hook);
/* Change the rate limit (burst lines per interval; burst 0 = no limit). For tests and tools. */
void pcache_set_log_ratelimit(unsigned int burst, uint64_t interval_ns);
void pcache_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void pcache_vlog(int level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

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

/*
 * Timed waits, all on the clock of pcache_now_ns() (CLOCK_MONOTONIC, whatever clock the
 * condition variable was created with): a step of the wall clock neither stretches nor cuts a
 * wait. With mu held, as pthread_cond_timedwait(): 0 when woken (or spuriously: callers
 * re-check their condition), ETIMEDOUT once the deadline has passed.
 */
int pcache_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t deadline_ns);
int pcache_cond_wait_ns(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t ns);
/* pthread_join() giving up at deadline_ns (pcache_now_ns() clock): 0 or ETIMEDOUT. */
int pcache_join_until(pthread_t t, uint64_t deadline_ns);

/* Sequence comparison for dual-slot records, wrap-around aware: 1 if a is newer than b. */
static inline int pcache_seq_after(uint64_t a, uint64_t b) { return (int64_t)(a - b) > 0; }

/* ---- sizes and names shared by the daemon and pcachectl ------------------------------------ */

/*
 * Parse a size: decimal digits, then optionally K, M, G or T (powers of 1024, either case),
 * optionally followed by "i" and/or "B" ("4K", "4Ki", "4KiB", "4kb"), or a bare "B" ("512B").
 * 0 and *out, or -EINVAL (empty, sign, garbage, overflow).
 */
int pcache_parse_size(const char *s, uint64_t *out);
/*
 * The segment size a format of a dev_size-byte device uses by default: 1/256 of it rounded
 * down to a power of two, within 4..16 MiB (PCACHE_DEFAULT_SEG_SIZE). A small cache gets more,
 * smaller segments, so that GC's free reserve and the partly filled head segments cost less
 * of it.
 */
uint64_t pcache_default_seg_size(uint64_t dev_size);
/*
 * The image table a format of a dev_size-byte device gets by default: one entry per MiB,
 * rounded down to a multiple of 64, within 64..PCACHE_MAX_IMAGES (so at most 1/512 of it).
 */
uint32_t pcache_default_max_images(uint64_t dev_size);
/* A version 2 table size: a multiple of 64 in 64..PCACHE_MAX_IMAGES. */
bool pcache_max_images_valid(uint32_t n);
/* gc_percent: a value 0..PCACHE_MAX_GC_PERCENT or PCACHE_GC_PERCENT_AUTO. */
bool pcache_gc_percent_valid(uint32_t v);
/* Parse "auto" or a number 0..PCACHE_MAX_GC_PERCENT (no sign, no blanks). 0 or -EINVAL. */
int pcache_parse_gc_percent(const char *s, uint32_t *out);
/* "512 B", "16 MiB", "1.5 GiB" (one decimal unless exact) into buf; returns buf. */
const char *pcache_fmt_size(uint64_t v, char *buf, size_t len);
/*
 * s as a JSON string, quotes included, handed to put() in pieces: '"' and '\\' backslashed,
 * control characters and DEL as \\u00XX, every other byte as it is (names and paths are bytes:
 * UTF-8 passes through).
 */
void pcache_json_string(const char *s, void (*put)(void *arg, const char *p, size_t n), void *arg);
/* Cache mode name ("writeback", "writethrough", "writearound"; "unknown" otherwise). */
const char *pcache_mode_name(uint32_t mode);
/* Parse a cache mode name (trailing blanks and newlines allowed): PCACHE_MODE_* or -EINVAL. */
int pcache_mode_parse(const char *s);

#endif
