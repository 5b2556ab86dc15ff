/*
 * trace_engine.c -- pcachefs's own hit ratio on an I/O trace, without FUSE: replay an fio
 * iolog (version 2 or 3, as fio --write_iolog writes it) through the cache engine, one request
 * at a time, with its background threads (GC, writeback) running, and print the share of read
 * bytes served from the cache after the warm-up, beside what GC copied forward.
 *
 *   trace_engine --cache SIZE [--seg SIZE] [--warmup OPS] [--gc-percent N] [--no-copy]
 *                [--dir DIR] IOLOG
 *
 * The cache device (SIZE, segments of --seg, default as pcachectl format) and one sparse backing image per
 * file of the trace are created in DIR (default /dev/shm) and removed at exit. The numbers are
 * comparable with tests/tools/cache_sim on the same trace and the same --warmup.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../core/cache_i.h"
#include "lib/engine_util.h"
#include "lib/iolog.h"

#define MAX_FILES 8

struct op {
	uint8_t file;
	uint8_t kind; /* enum iolog_kind */
	uint32_t len;
	uint64_t off;
};

static char *names[MAX_FILES];
static uint64_t sizes[MAX_FILES];
static int nfiles;
static char cpath[512], ipath[MAX_FILES][512];

static void cleanup(void)
{
	if (cpath[0])
		unlink(cpath);
	for (int i = 0; i < nfiles; i++)
		if (ipath[i][0])
			unlink(ipath[i]);
}

static int file_index(const char *name)
{
	for (int i = 0; i < nfiles; i++)
		if (!strcmp(names[i], name))
			return i;
	if (nfiles == MAX_FILES) {
		fprintf(stderr, "trace_engine: more than %d files in the trace\n", MAX_FILES);
		exit(2);
	}
	names[nfiles] = strdup(name);
	return nfiles++;
}

/* Read the whole trace into memory (so that parsing costs the replay nothing). */
static struct op *load(const char *path, uint64_t *nops)
{
	static struct iolog_op io;
	struct op *v = NULL;
	uint64_t n = 0, cap = 0;
	struct iolog l;
	int fi;

	if (iolog_open(&l, path, "trace_engine"))
		exit(1);
	while (iolog_next(&l, &io)) {
		if (!io.len || io.len > (1u << 20) || io.off % 512 || io.len % 512)
			continue;
		fi = file_index(io.file);
		if (n == cap) {
			cap = cap ? cap * 2 : 1u << 20;
			v = realloc(v, cap * sizeof(*v));
			if (!v) {
				fprintf(stderr, "trace_engine: out of memory\n");
				exit(1);
			}
		}
		v[n].file = (uint8_t)fi;
		v[n].kind = (uint8_t)io.kind;
		v[n].off = io.off;
		v[n].len = (uint32_t)io.len;
		sizes[fi] = PCACHE_MAX(sizes[fi], io.off + io.len);
		n++;
	}
	iolog_close(&l);
	*nops = n;
	return v;
}

static void usage(void)
{
	fprintf(stderr, "usage: trace_engine --cache SIZE [--seg SIZE] [--warmup OPS] [--gc-percent N] "
		"[--no-copy] [--dir DIR] IOLOG\n");
	exit(2);
}

int main(int argc, char **argv)
{
	uint64_t cache = 0, seg = 0, warmup = 0, gcp = UINT64_MAX, nops, i;
	uint64_t rd0 = 0, hit0 = 0, cp0 = 0, rd, hit, cp;
	struct pcache_image *img[MAX_FILES] = { 0 };
	struct pcache_cache_opts o;
	struct pcache_cache *c;
	const char *dir = "/dev/shm";
	bool copy = true;
	char err[256];
	uint8_t *buf;
	struct op *ops;
	int a, ret;

	for (a = 1; a < argc && argv[a][0] == '-'; a++) {
		uint64_t *dst = NULL;

		if (!strcmp(argv[a], "--no-copy")) {
			copy = false;
			continue;
		}
		if (a + 1 >= argc)
			usage();
		if (!strcmp(argv[a], "--dir")) {
			dir = argv[++a];
			continue;
		}
		dst = !strcmp(argv[a], "--cache") ? &cache : !strcmp(argv[a], "--seg") ? &seg :
		      !strcmp(argv[a], "--warmup") ? &warmup : !strcmp(argv[a], "--gc-percent") ? &gcp : NULL;
		if (!dst || pcache_parse_size(argv[++a], dst))
			usage();
	}
	if (!cache || a != argc - 1)
		usage();
	ops = load(argv[a], &nops);
	atexit(cleanup);
	snprintf(cpath, sizeof(cpath), "%s/trace-engine-cache.%d", dir, (int)getpid());
	if (eng_format(cpath, cache, seg, false)) {
		fprintf(stderr, "trace_engine: format %s failed\n", cpath);
		return 1;
	}
	eng_opts(&o, cpath);
	o.no_copy_forward = !copy;
	if (gcp != UINT64_MAX)
		o.gc_percent = (int)gcp;
	if (pcache_cache_start(&o, &c, err, sizeof(err))) {
		fprintf(stderr, "trace_engine: start: %s\n", err);
		return 1;
	}
	for (int f = 0; f < nfiles; f++) {
		struct pcache_attach_opts ao = { .path = ipath[f], .cache_mode = -1 };
		char nm[16];
		int fd;

		snprintf(ipath[f], sizeof(ipath[f]), "%s/trace-engine-img%d.%d", dir, f, (int)getpid());
		snprintf(nm, sizeof(nm), "t%d", f);
		ao.name = nm;
		fd = open(ipath[f], O_CREAT | O_TRUNC | O_WRONLY, 0600);
		if (fd < 0 || ftruncate(fd, (off_t)((sizes[f] + (1u << 20) - 1) & ~((1ull << 20) - 1))) != 0) {
			fprintf(stderr, "trace_engine: %s: %s\n", ipath[f], strerror(errno));
			return 1;
		}
		close(fd);
		if (pcache_image_attach(c, &ao, &img[f], err, sizeof(err))) {
			fprintf(stderr, "trace_engine: attach: %s\n", err);
			return 1;
		}
	}
	buf = aligned_alloc(4096, 1u << 20);
	if (!buf)
		return 1;
	memset(buf, 0xa5, 1u << 20);
	for (i = 0; i < nops; i++) {
		const struct op *p = &ops[i];

		if (i == warmup) {
			rd0 = hit0 = 0;
			for (int f = 0; f < nfiles; f++) {
				rd0 += atomic_load(&img[f]->read_bytes);
				hit0 += atomic_load(&img[f]->read_hit_bytes);
			}
			cp0 = atomic_load(&c->gc_copied_bytes);
		}
		if (p->kind == IOLOG_READ)
			ret = eng_read(img[p->file], buf, p->off, p->len);
		else if (p->kind == IOLOG_WRITE)
			ret = pcache_image_write(img[p->file], buf, p->off, p->len, 0);
		else
			ret = pcache_image_discard(img[p->file], p->off, p->len, false);
		if (ret) {
			fprintf(stderr, "trace_engine: op %" PRIu64 ": %s\n", i, strerror(-ret));
			return 1;
		}
	}
	rd = hit = 0;
	for (int f = 0; f < nfiles; f++) {
		rd += atomic_load(&img[f]->read_bytes);
		hit += atomic_load(&img[f]->read_hit_bytes);
	}
	cp = atomic_load(&c->gc_copied_bytes);
	rd -= rd0;
	hit -= hit0;
	cp -= cp0;
	{
		struct pcache_cache_status st;

		pcache_cache_get_status(c, &st);
		printf("pcachefs hit %.2f%% of %" PRIu64 " read bytes (cache %" PRIu64 " MiB, data area %" PRIu64
		       " bytes in %u segments, gc_percent %u, copy-forward %s: %.3f bytes copied per byte read, "
		       "%" PRIu64 " ops, %" PRIu64 " warm-up)\n", rd ? 100.0 * (double)hit / (double)rd : 0.0, rd,
		       cache >> 20, (uint64_t)st.seg_count * st.seg_size, st.seg_count, st.gc_percent,
		       copy ? "on" : "off",
		       rd ? (double)cp / (double)rd : 0.0, nops, PCACHE_MIN(warmup, nops));
		printf("  fills skipped %" PRIu64 ", gc dropped %" PRIu64 " MiB, copied %" PRIu64 " MiB in %" PRIu64
		       " keys, segments used %u (data %u, log %u), gc runs %" PRIu64 "\n",
		       atomic_load(&c->fill_skips), atomic_load(&c->gc_dropped_bytes) >> 20,
		       atomic_load(&c->gc_copied_bytes) >> 20, atomic_load(&c->gc_copied_keys), st.segs_used,
		       st.segs_data, st.segs_log, st.gc_runs);
	}
	for (int f = 0; f < nfiles; f++)
		pcache_image_put(img[f]);
	(void)pcache_cache_stop(c, false);
	free(buf);
	free(ops);
	return 0;
}
