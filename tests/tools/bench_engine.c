/*
 * bench_engine.c -- engine microbenchmark without FUSE: ops/s and µs/op of 4 KiB writes,
 * 4 KiB read hits, 1 MiB writes and 1 MiB read hits, one and two threads, with and without
 * data CRCs, beside plain memcpy of the same sizes in the same run; index bytes per extent;
 * replay speed of a large log. Prints a Markdown table on stdout.
 *
 *   bench_engine [--dir /dev/shm] [--quick]
 *
 * The cache device and the backing image are files in --dir (removed at exit). Background
 * threads are off (no writeback or GC interferes); every phase fits in the cache.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../core/cache_i.h"
#include "lib/engine_util.h"

#define CACHE_SIZE (2ull << 30)
#define IMG_SIZE (1ull << 30)

static char cpath[512], ipath[512];
static bool quick;

struct ctx {
	struct pcache_cache *c;
	struct pcache_image *img;
};

static void start(struct ctx *x, bool crc)
{
	struct pcache_cache_opts o;
	struct pcache_attach_opts ao = { .name = "bench", .path = ipath, .cache_mode = -1 };
	char err[256];

	if (eng_format(cpath, CACHE_SIZE, 16u << 20, crc)) {
		fprintf(stderr, "format failed\n");
		exit(1);
	}
	eng_opts(&o, cpath);
	o.no_background = true;
	o.prefault = true;
	if (pcache_cache_start(&o, &x->c, err, sizeof(err)) ||
	    pcache_image_attach(x->c, &ao, &x->img, err, sizeof(err))) {
		fprintf(stderr, "start: %s\n", err);
		exit(1);
	}
}

static void stop(struct ctx *x)
{
	pcache_image_put(x->img);
	pcache_cache_stop(x->c, false);
}

struct job {
	struct ctx *x;
	int tid, nthreads;
	size_t size;
	uint64_t ops;
	bool write;
	bool memcpy_only;
	uint8_t *mem;        /* memcpy target (memcpy_only) */
	uint64_t ns;
	int err;
};

/* Offsets: a pseudo-random permutation of slots inside the thread's own 512 MiB / nthreads. */
static uint64_t slot_off(const struct job *j, uint64_t i)
{
	uint64_t span = (512ull << 20) / (uint64_t)j->nthreads, slots = span / j->size;
	uint64_t s = (i * 2654435761ull) % slots;

	return (uint64_t)j->tid * span + s * j->size;
}

static void *job_main(void *arg)
{
	struct job *j = arg;
	uint8_t *buf = aligned_alloc(4096, j->size);
	uint64_t i, t0;

	memset(buf, 0x5A, j->size);
	t0 = pcache_now_ns();
	for (i = 0; i < j->ops && !j->err; i++) {
		uint64_t off = slot_off(j, i);

		if (j->memcpy_only) {
			if (j->write)
				memcpy(j->mem + off, buf, j->size);
			else
				memcpy(buf, j->mem + off, j->size);
		} else if (j->write) {
			j->err = pcache_image_write(j->x->img, buf, off, j->size, 0);
		} else {
			j->err = pcache_image_read(j->x->img, buf, off, j->size, NULL, NULL);
		}
	}
	j->ns = pcache_now_ns() - t0;
	free(buf);
	return NULL;
}

/* Run nthreads jobs once; returns ops/s over all threads (µs/op in *us, per thread). */
static double run1(struct ctx *x, int nthreads, size_t size, uint64_t ops, bool write,
		   uint8_t *mem, double *us)
{
	pthread_t t[2];
	struct job j[2];
	uint64_t maxns = 0;
	int i;

	for (i = 0; i < nthreads; i++) {
		j[i] = (struct job){ .x = x, .tid = i, .nthreads = nthreads, .size = size,
				     .ops = ops / (uint64_t)nthreads, .write = write,
				     .memcpy_only = mem != NULL, .mem = mem };
		pthread_create(&t[i], NULL, job_main, &j[i]);
	}
	for (i = 0; i < nthreads; i++) {
		pthread_join(t[i], NULL);
		if (j[i].err) {
			fprintf(stderr, "bench: I/O error %d\n", j[i].err);
			exit(1);
		}
		if (j[i].ns > maxns)
			maxns = j[i].ns;
	}
	*us = (double)maxns / 1e3 / (double)(ops / (uint64_t)nthreads);
	return (double)ops / ((double)maxns / 1e9);
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* The median of ROUNDS runs (rewrites of the same slots and re-reads are equivalent work). */
static double run(struct ctx *x, int nthreads, size_t size, uint64_t ops, bool write,
		  uint8_t *mem, double *us)
{
	double o[5], u[5];
	int r, n = quick ? 1 : 3;

	for (r = 0; r < n; r++)
		o[r] = run1(x, nthreads, size, ops, write, mem, &u[r]);
	qsort(o, (size_t)n, sizeof(o[0]), cmp_d);
	qsort(u, (size_t)n, sizeof(u[0]), cmp_d);
	*us = u[n / 2];
	return o[n / 2];
}

static void row(const char *what, int threads, const char *crc, double ops, double us, double base_us)
{
	printf("| %s | %d | %s | %.0f | %.2f | %.2f |\n", what, threads, crc, ops, us,
	       base_us > 0 ? us / base_us : 1.0);
}

int main(int argc, char **argv)
{
	const char *dir = "/dev/shm";
	uint8_t *mem;
	int i, crc, threads;
	double us, ops;
	double mc_us[2][2][2]; /* [size 4k/1m][write][threads-1] */
	uint64_t n4k, n1m;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			dir = argv[++i];
		else if (!strcmp(argv[i], "--quick"))
			quick = true;
	}
	n4k = quick ? 20000 : 50000;
	n1m = quick ? 100 : 150;
	snprintf(cpath, sizeof(cpath), "%s/pcache-bench-engine.%d", dir, getpid());
	snprintf(ipath, sizeof(ipath), "%s/pcache-bench-image.%d", dir, getpid());
	{
		int fd = open(ipath, O_CREAT | O_TRUNC | O_RDWR, 0600);

		if (fd < 0 || ftruncate(fd, (off_t)IMG_SIZE)) {
			perror(ipath);
			return 1;
		}
		close(fd);
	}
	mem = aligned_alloc(4096, 512ull << 20);
	memset(mem, 1, 512ull << 20);

	/* memcpy baselines, same sizes and offsets */
	for (threads = 1; threads <= 2; threads++) {
		run(NULL, threads, 4096, n4k, true, mem, &mc_us[0][1][threads - 1]);
		run(NULL, threads, 4096, n4k, false, mem, &mc_us[0][0][threads - 1]);
		run(NULL, threads, 1u << 20, n1m, true, mem, &mc_us[1][1][threads - 1]);
		run(NULL, threads, 1u << 20, n1m, false, mem, &mc_us[1][0][threads - 1]);
	}

	printf("| operation | threads | data CRC | ops/s | µs/op | × memcpy |\n");
	printf("|---|---|---|---|---|---|\n");
	for (threads = 1; threads <= 2; threads++) {
		ops = run(NULL, threads, 4096, n4k, true, mem, &us);
		row("memcpy 4 KiB", threads, "-", ops, us, 0);
		ops = run(NULL, threads, 1u << 20, n1m, true, mem, &us);
		row("memcpy 1 MiB", threads, "-", ops, us, 0);
	}
	for (crc = 0; crc <= 1; crc++) {
		for (threads = 1; threads <= 2; threads++) {
			struct ctx x;
			const char *cs = crc ? "on" : "off";

			start(&x, crc);
			ops = run(&x, threads, 4096, n4k, true, NULL, &us);
			row("write 4 KiB (persisted data, staged key)", threads, cs, ops, us, mc_us[0][1][threads - 1]);
			ops = run(&x, threads, 4096, n4k, false, NULL, &us);
			row("read hit 4 KiB", threads, cs, ops, us, mc_us[0][0][threads - 1]);
			ops = run(&x, threads, 1u << 20, n1m, true, NULL, &us);
			row("write 1 MiB", threads, cs, ops, us, mc_us[1][1][threads - 1]);
			ops = run(&x, threads, 1u << 20, n1m, false, NULL, &us);
			row("read hit 1 MiB", threads, cs, ops, us, mc_us[1][0][threads - 1]);
			stop(&x);
		}
	}
	printf("\n");

	/* index bytes per extent and replay of a large log */
	{
		struct ctx x;
		struct pcache_cache_status st;
		struct pcache_cache_opts o;
		struct pcache_attach_opts ao = { .name = "bench", .path = ipath, .cache_mode = -1 };
		uint64_t nkeys = quick ? 200000 : 1000000, k, t0, t1;
		uint8_t buf[512];
		char err[256];

		memset(buf, 7, sizeof(buf));
		start(&x, false);
		/* 512 B writes every 1 KiB: one extent each, no merging */
		for (k = 0; k < nkeys; k++)
			if (pcache_image_write(x.img, buf, (k * 1024) % IMG_SIZE, 512, 0)) {
				fprintf(stderr, "write failed\n");
				return 1;
			}
		pcache_cache_get_status(x.c, &st);
		printf("| index | value |\n|---|---|\n");
		printf("| extents indexed | %llu |\n", (unsigned long long)st.keys_indexed);
		printf("| index bytes per extent (arrays incl. slack + subtree headers) | %.1f |\n",
		       (double)st.index_bytes / (double)st.keys_indexed);
		printf("| index key size (struct pcache_ikey) | %zu |\n", sizeof(struct pcache_ikey));
		printf("| pmem store granularity (libpmem2) | %s |\n", st.granularity);
		stop(&x);
		eng_opts(&o, cpath);
		o.no_background = true;
		t0 = pcache_now_ns();
		if (pcache_cache_start(&o, &x.c, err, sizeof(err))) {
			fprintf(stderr, "restart: %s\n", err);
			return 1;
		}
		t1 = pcache_now_ns();
		if (pcache_image_attach(x.c, &ao, &x.img, err, sizeof(err))) {
			fprintf(stderr, "attach: %s\n", err);
			return 1;
		}
		printf("| replay at start: keys | %llu |\n", (unsigned long long)x.c->replay_keys);
		printf("| replay at start (log walk, refs, segment map): keys/s | %.2f M |\n",
		       (double)x.c->replay_keys / ((double)x.c->replay_ns / 1e9) / 1e6);
		printf("| start total (open + replay + threads): ms | %.1f |\n", (double)(t1 - t0) / 1e6);
		printf("| attach replay (log walk + index rebuild): keys/s | %.2f M |\n",
		       (double)x.c->replay_keys / ((double)(pcache_now_ns() - t1) / 1e9) / 1e6);
		stop(&x);
	}
	unlink(cpath);
	unlink(ipath);
	free(mem);
	return 0;
}
