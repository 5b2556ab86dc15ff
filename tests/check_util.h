/*
 * check_util.h -- small helpers shared by the Check suites.
 *
 * Scratch space: every test gets files under one per-run directory, chosen by
 * check_scratch_dir() (PCACHE_SCRATCH, else a fresh mkdtemp under /tmp). Suites that need a
 * cache device use /dev/shm files through check_scratch_path(). Nothing here asserts on its own.
 */
#ifndef PCACHE_CHECK_UTIL_H
#define PCACHE_CHECK_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* The per-run scratch directory (created on first use, removed by the runner's atexit). */
const char *check_scratch_dir(void);
/* Write "<scratch>/<name>" into buf (size len); returns buf. */
char *check_scratch_path(char *buf, size_t len, const char *name);
/* Create (or truncate) a file of the given size filled with a deterministic pattern. */
void check_make_file(const char *path, uint64_t size, uint32_t seed);
/* The byte the pattern of check_make_file() holds at offset off. */
uint8_t check_pattern_byte(uint64_t off, uint32_t seed);
/* 1 when running under ThreadSanitizer (PCACHE_TSAN set): suites shrink their loops. */
int check_under_tsan(void);

#endif
