/*
 * engine_util.h -- helpers for the engine's unit tests and tools: small cache devices, backing
 * images filled with self-describing sectors, and a synchronous read.
 *
 * Sector pattern: every 512-byte sector holds 32 copies of {image tag, version, sector}; version
 * 0 is the original content of a backing image. A sector that is all zeros reads as version
 * ENG_ZERO. Anything else (torn, another image's, garbage) decodes as an error.
 */
#ifndef PCACHE_ENGINE_UTIL_H
#define PCACHE_ENGINE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pcache/cache.h"

#define ENG_ZERO UINT32_MAX

/* Format path (created or truncated to size) with seg_size segments. 0 or -errno. */
int eng_format(const char *path, uint64_t size, uint64_t seg_size, bool data_crc);
/* Create an image file of size bytes holding version 0 of every sector for image tag. */
void eng_make_image(const char *path, uint64_t size, uint32_t tag);
/* Fill len bytes (sector multiple) for sectors starting at byte off with version v of tag. */
void eng_fill(uint8_t *buf, size_t len, uint32_t tag, uint64_t off, uint32_t v);
/* Decode the sector at buf (image byte offset off): 0 and *v, or -1 (not a sector of tag). */
int eng_decode(const uint8_t *buf, uint32_t tag, uint64_t off, uint32_t *v);
/*
 * Does the file at path (a backing image, read around the engine) hold version want of tag in
 * every sector of [off, off + len)? 0, or -1 with the first other sector's number in *bad.
 */
int eng_file_holds(const char *path, uint64_t off, size_t len, uint32_t tag, uint32_t want,
		   uint64_t *bad);
/* Start the engine on cache_path (eng_opts; no_background unless background) and attach
 * image_path as name. 0 or -errno with err set. */
int eng_start(const char *cache_path, const char *image_path, const char *name, bool background,
	      bool data_crc, struct pcache_cache **c, struct pcache_image **img, char *err,
	      size_t errlen);
/* Write len bytes of eng_fill(tag, off, v) at off through the engine. 0 or -errno. */
int eng_write(struct pcache_image *img, uint64_t off, size_t len, uint32_t tag, uint32_t v);
/* Drop *img (if any), stop *c (if any) without a drain; NULLs both. The stop's return. */
int eng_stop(struct pcache_cache **c, struct pcache_image **img);
/* Test teardown: drop *img, stop *c without a drain, unlink the two files; NULLs both. */
void eng_close(struct pcache_cache **c, struct pcache_image **img, const char *cache_path,
	       const char *image_path);
/* Read synchronously through the engine (waits for PCACHE_IO_PENDING). 0 or -errno. */
int eng_read(struct pcache_image *img, void *buf, uint64_t off, size_t len);
/* Seed for randomized tests: PCACHE_SEED from the environment, else from the clock; printed. */
uint32_t eng_seed(const char *test);
/* Default opts for a test cache at path. */
void eng_opts(struct pcache_cache_opts *o, const char *path);

#endif
