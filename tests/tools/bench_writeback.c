/*
 * bench_writeback.c -- benchmark of the writeback: drain a log of dirty data from a cache
 * device (a file standing in for pmem, e.g. on /dev/shm) to a backing file on disk.
 *
 * Usage:
 *   bench_writeback --cache PATH --backing PATH [--size-mib N] [--image-mib N] [--key-kib N]
 *                   [--pattern seq|rand] [--epoch-mib N] [--seed N] [--inflight N]
 *                   [--req-kib N] [--batch-mib N]
 *
 * Builds the log with tests/lib/logbuilder (size-mib of dirty keys of key-kib each, sequential
 * or uniformly random sector-aligned offsets, an upper-layer flush every epoch-mib), then times
 * pcache_wb_offline() alone -- the log scan, every write, every per-epoch flush and the final
 * dirty_tail persist -- and prints one line:
 *   bytes=B seconds=S mib_s=R ksets=K
 * The backing file must exist with at least image-mib MiB (it is overwritten).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/logbuilder.h"
#include "pcache/cache_dev.h"
#include "pcache/util.h"
#include "pcache/writeback.h"
#include "../../core/cache_writeback.h"

/* The cache file stands in for pmem: plain stores, no msync (durability is not measured). */
static void bw_memcpy(void *ctx, void *dst, const void *src, size_t len, unsigned int flags)
{
	memcpy(dst, src, len);
}

static void bw_memset(void *ctx, void *dst, int c, size_t len, unsigned int flags)
{
	memset(dst, c, len);
}

static void bw_persist(void *ctx, const void *addr, size_t len)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST); /* orders the stores before it (no flush needed) */
}

static void bw_drain(void *ctx)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static const struct pcache_pmem_ops bw_ops = {
	.memcpy = bw_memcpy, .memset = bw_memset, .persist = bw_persist, .flush = bw_persist,
	.drain = bw_drain,
};

static struct pcache_pmem bw_wrap(struct pcache_pmem real, void *base, uint64_t size, void *arg)
{
	struct pcache_pmem p = { .ops = &bw_ops, .ctx = NULL };

	return p;
}

static void die(const char *what, int r, const char *msg)
{
	fprintf(stderr, "bench_writeback: %s: %s\n", what, msg && msg[0] ? msg : strerror(-r));
	exit(1);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "cache", required_argument, NULL, 'c' },   { "backing", required_argument, NULL, 'b' },
		{ "size-mib", required_argument, NULL, 's' }, { "image-mib", required_argument, NULL, 'i' },
		{ "key-kib", required_argument, NULL, 'k' },  { "pattern", required_argument, NULL, 'p' },
		{ "epoch-mib", required_argument, NULL, 'e' }, { "seed", required_argument, NULL, 'r' },
		{ "inflight", required_argument, NULL, 'q' }, { "req-kib", required_argument, NULL, 'm' },
		{ "batch-mib", required_argument, NULL, 'B' }, { NULL, 0, NULL, 0 },
	};
	const char *cache = NULL, *backing = NULL, *pattern = "seq";
	uint64_t size = 1024ull << 20, image = 0, key = 64 << 10, epoch = 64ull << 20;
	uint64_t seg = 16u << 20, dev, done = 0, since_flush = 0, t0, t1;
	unsigned int seed = 1;
	struct pcache_format_opts fo;
	struct pcache_cache_dev_opts co;
	struct pcache_cache_dev *cd;
	struct pcache_image_ent e;
	struct pcache_wb_opts wo;
	struct pcache_wb_offline_opts oo;
	struct pcache_pos dt;
	struct lb lb;
	char err[1400];
	uint8_t *buf;
	int c, r;

	memset(&wo, 0, sizeof(wo));
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'c': cache = optarg; break;
		case 'b': backing = optarg; break;
		case 's': size = strtoull(optarg, NULL, 0) << 20; break;
		case 'i': image = strtoull(optarg, NULL, 0) << 20; break;
		case 'k': key = strtoull(optarg, NULL, 0) << 10; break;
		case 'p': pattern = optarg; break;
		case 'e': epoch = strtoull(optarg, NULL, 0) << 20; break;
		case 'r': seed = (unsigned int)strtoul(optarg, NULL, 0); break;
		case 'q': wo.max_inflight = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 'm': wo.max_req_bytes = (uint32_t)strtoul(optarg, NULL, 0) << 10; break;
		case 'B': wo.batch_bytes = strtoull(optarg, NULL, 0) << 20; break;
		default:
			fprintf(stderr, "usage: see the comment at the top of bench_writeback.c\n");
			return 2;
		}
	}
	if (!cache || !backing || !key || key % 512 || key > (4u << 20) ||
	    (strcmp(pattern, "seq") && strcmp(pattern, "rand"))) {
		fprintf(stderr, "bench_writeback: --cache and --backing are required; key-kib 1..4096, "
			"pattern seq|rand\n");
		return 2;
	}
	if (!image)
		image = size;
	/* data + the key log (40 B per key, ksets of 128) + slack, in 16 MiB segments */
	dev = (2u << 20) + PCACHE_ALIGN_UP(size + size / key * 48 + 8 * seg, seg) + (1u << 20);
	unlink(cache);
	memset(&fo, 0, sizeof(fo));
	fo.seg_size = seg;
	r = pcache_cache_dev_format(cache, dev, &fo, err, sizeof(err));
	if (r)
		die("format", r, err);
	memset(&co, 0, sizeof(co));
	co.path = cache;
	co.wrap_pmem = bw_wrap;
	r = pcache_cache_dev_open(&co, &cd, err, sizeof(err));
	if (r)
		die("open", r, err);
	memset(&e, 0, sizeof(e));
	snprintf(e.name, sizeof(e.name), "bench");
	snprintf(e.path, sizeof(e.path), "%s", backing);
	e.size = image;
	e.lbs = 512;
	e.state = PCACHE_IMAGE_ATTACHED;
	r = pcache_cache_dev_image_add(cd, &e);
	if (r)
		die("image add", r, NULL);

	buf = malloc(key);
	if (!buf)
		die("malloc", -ENOMEM, NULL);
	for (uint64_t i = 0; i < key; i++)
		buf[i] = (uint8_t)(i * 7 + 1);
	lb_init(&lb, cd);
	while (done < size) {
		uint64_t off;

		if (!strcmp(pattern, "seq"))
			off = done % image;
		else
			off = (uint64_t)((((uint64_t)rand_r(&seed) << 31) ^ (uint64_t)rand_r(&seed)) %
					 (image / key)) * key;
		buf[0] = (uint8_t)(done >> 12);
		r = lb_write(&lb, e.id, off, buf, (uint32_t)key);
		if (r)
			die("build log", r, NULL);
		done += key;
		since_flush += key;
		if (since_flush >= epoch) {
			r = lb_flush(&lb);
			if (r)
				die("build log", r, NULL);
			since_flush = 0;
		}
	}
	r = lb_flush(&lb);
	if (r)
		die("build log", r, NULL);
	free(buf);

	wo.quiet = true;
	memset(&oo, 0, sizeof(oo));
	oo.wb = &wo;
	t0 = pcache_now_ns();
	r = pcache_wb_offline(cd, &oo, err, sizeof(err));
	t1 = pcache_now_ns();
	if (r)
		die("writeback", r, err);
	pcache_cache_dev_get_dirty_tail(cd, &dt);
	if (dt.lsn != lb.head.lsn)
		die("writeback", -EIO, "dirty_tail did not reach the end of the log");
	printf("bytes=%" PRIu64 " seconds=%.3f mib_s=%.1f ksets=%" PRIu64 "\n", size,
	       (double)(t1 - t0) / 1e9, (double)size / (1 << 20) / ((double)(t1 - t0) / 1e9), lb.ksets);
	pcache_cache_dev_close(cd);
	unlink(cache);
	return 0;
}
