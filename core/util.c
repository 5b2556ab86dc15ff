/*
 * util.c -- CRC32C and the clock (see include/pcache/util.h).
 *
 * CRC32C: the SSE4.2 crc32 instruction, 8 bytes at a time, when cpuid says the CPU has it;
 * otherwise a byte-wise table (slicing is not worth it: every x86-64 server we run on has
 * SSE4.2). Both compute the raw reflected CRC with no pre/post inversion, so results match
 * dm-pcache's crc32c(seed, ...) for the same seed. Measured in make bench (engine rows).
 */
#include <cpuid.h>
#include <nmmintrin.h>
#include <pthread.h>
#include <time.h>

#include "pcache/util.h"

static uint32_t crc_table[256];
static int crc_hw;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
	unsigned int a, b, c, d;
	uint32_t i, j, r;

	for (i = 0; i < 256; i++) {
		r = i;
		for (j = 0; j < 8; j++)
			r = (r >> 1) ^ (0x82F63B78u & (0u - (r & 1)));
		crc_table[i] = r;
	}
	if (__get_cpuid(1, &a, &b, &c, &d))
		crc_hw = !!(c & bit_SSE4_2);
}

uint32_t pcache_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	pthread_once(&crc_once, crc_init);
	while (len--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return crc;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len)
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

uint32_t pcache_crc32c(uint32_t crc, const void *buf, size_t len)
{
	pthread_once(&crc_once, crc_init);
	if (pcache_likely(crc_hw))
		return crc32c_hw(crc, buf, len);
	return pcache_crc32c_sw(crc, buf, len);
}

uint64_t pcache_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
