/*
 * crc32c_x86_64.c -- the CRC32C fast path on x86-64: the SSE4.2 crc32 instruction, 8 bytes at
 * a time (see crc32c_i.h).
 *
 * The build does not assume SSE4.2 (no -msse4.2): only crc32c_sse42() is compiled for it, with
 * a per-function target attribute, and it is handed out only after the CPU says it has the
 * instruction (cpuid, through __builtin_cpu_supports). Everything else in the program stays
 * baseline x86-64, so it runs, with the table path, on a CPU without SSE4.2.
 */
#include <nmmintrin.h>
#include <string.h>

#include "crc32c_i.h"

__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint64_t c = crc, v;

	while (len && ((uintptr_t)p & 7)) {
		c = _mm_crc32_u8((uint32_t)c, *p++);
		len--;
	}
	while (len >= 8) {
		memcpy(&v, p, 8);
		c = _mm_crc32_u64(c, v);
		p += 8;
		len -= 8;
	}
	while (len--)
		c = _mm_crc32_u8((uint32_t)c, *p++);
	return (uint32_t)c;
}

pcache_crc32c_fn pcache_crc32c_hw_probe(void)
{
	/* needed before __builtin_cpu_supports when called early (constructors, ifunc resolvers) */
	__builtin_cpu_init();
	return __builtin_cpu_supports("sse4.2") ? crc32c_sse42 : NULL;
}
