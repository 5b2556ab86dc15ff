/*
 * bench_backing.c -- drive the backing layer with one fio-like job and print its rate.
 *
 *   bench_backing --file PATH --rw randread|randwrite|read|write --bs BYTES --qd N
 *                 --runtime SECONDS [--path queue|direct] [--no-direct]
 *
 * Keeps qd requests in flight on one image for runtime seconds. --path queue (default): each
 * end callback submits the next request with pcache_backing_submit() from the completion
 * thread (the engine's miss-read shape); --path direct: the main thread sleeps until
 * completions free slots, then refills them with pcache_backing_submit_direct() between
 * pcache_backing_plug() and unplug() (the writeback shape).
 * Offsets are bs-aligned: uniform random for rand*, sequential (wrapping) otherwise.
 * Prints one line: "iops=N mib_s=N ios=N errors=N seconds=S cpu_us_per_io=C" (errors make the
 * exit status 1); C is the process's user+system CPU time (all threads) per completed I/O.
 */
#include <errno.h>
#include <getopt.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "pcache/backing.h"
#include "pcache/util.h"

struct bench {
	struct pcache_backing *b;
	bool rand, write, direct_path;
	size_t bs;
	unsigned int qd;
	uint64_t blocks;    /* image size / bs */
	uint64_t next_blk;  /* sequential cursor (completion thread, or main with --path direct) */
	uint64_t rng;
	uint64_t deadline_ns;
	uint64_t ios, errors; /* completion thread only */
	unsigned int running;
	sem_t done;         /* queue path: one post per finished slot; direct: one per completion */
	uint8_t *bufs;
};

struct slot {
	struct bench *bn;
	unsigned int idx;
};

static uint64_t bench_next_off(struct bench *bn)
{
	uint64_t blk;

	if (bn->rand) {
		/* xorshift64* */
		bn->rng ^= bn->rng >> 12;
		bn->rng ^= bn->rng << 25;
		bn->rng ^= bn->rng >> 27;
		blk = (bn->rng * 0x2545F4914F6CDD1DULL) % bn->blocks;
	} else {
		blk = bn->next_blk++;
		if (bn->next_blk == bn->blocks)
			bn->next_blk = 0;
	}
	return blk * bn->bs;
}

static void bench_end(void *priv, int status);

static int bench_submit(struct slot *s)
{
	struct bench *bn = s->bn;
	struct pcache_backing_io io = {
		.op = bn->write ? PCACHE_BIO_WRITE : PCACHE_BIO_READ,
		.off = bench_next_off(bn),
		.len = bn->bs,
		.kmem = bn->bufs + (size_t)s->idx * bn->bs,
		.end = bench_end,
		.priv = s,
	};

	return bn->direct_path ? pcache_backing_submit_direct(bn->b, &io) :
				 pcache_backing_submit(bn->b, &io);
}

static void bench_end(void *priv, int status)
{
	struct slot *s = priv;
	struct bench *bn = s->bn;

	if (status)
		bn->errors++;
	else
		bn->ios++;
	if (bn->direct_path || pcache_now_ns() >= bn->deadline_ns || bench_submit(s) != 0)
		sem_post(&bn->done);
}

static void usage(void)
{
	fprintf(stderr, "usage: bench_backing --file PATH --rw randread|randwrite|read|write "
			"--bs BYTES --qd N --runtime SECONDS [--path queue|direct] [--no-direct]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "file", required_argument, NULL, 'f' }, { "rw", required_argument, NULL, 'r' },
		{ "bs", required_argument, NULL, 'b' },   { "qd", required_argument, NULL, 'q' },
		{ "runtime", required_argument, NULL, 't' },
		{ "path", required_argument, NULL, 'p' },
		{ "no-direct", no_argument, NULL, 'n' }, { NULL, 0, NULL, 0 },
	};
	struct pcache_backing_opts opts = { 0 };
	struct bench bn = { .bs = 4096, .qd = 32, .rng = 0x9E3779B97F4A7C15ULL };
	const char *file = NULL, *rw = "randread";
	double runtime = 5, secs, cpu;
	struct rusage ru;
	struct slot *slots;
	uint64_t start;
	char err[256];
	unsigned int i;
	int c, ret;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'f': file = optarg; break;
		case 'r': rw = optarg; break;
		case 'b': bn.bs = strtoull(optarg, NULL, 0); break;
		case 'q': bn.qd = (unsigned int)strtoul(optarg, NULL, 0); break;
		case 't': runtime = strtod(optarg, NULL); break;
		case 'p': bn.direct_path = !strcmp(optarg, "direct"); break;
		case 'n': opts.no_direct = true; break;
		default: usage();
		}
	}
	if (!file || !bn.bs || !bn.qd || runtime <= 0)
		usage();
	bn.rand = !strncmp(rw, "rand", 4);
	bn.write = strstr(rw, "write") != NULL;
	opts.read_only = !bn.write;
	opts.queue_depth = bn.qd;
	ret = pcache_backing_open(file, &opts, &bn.b, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "bench_backing: %s\n", err);
		return 1;
	}
	bn.blocks = pcache_backing_size(bn.b) / bn.bs;
	if (!bn.blocks || posix_memalign((void **)&bn.bufs, 4096, bn.bs * bn.qd)) {
		fprintf(stderr, "bench_backing: image smaller than bs or out of memory\n");
		return 1;
	}
	memset(bn.bufs, 0xa5, bn.bs * bn.qd);
	slots = calloc(bn.qd, sizeof(*slots));
	sem_init(&bn.done, 0, 0);

	start = pcache_now_ns();
	bn.deadline_ns = start + (uint64_t)(runtime * 1e9);
	for (i = 0; i < bn.qd; i++) {
		slots[i] = (struct slot){ .bn = &bn, .idx = i };
		if (bench_submit(&slots[i]) != 0) {
			fprintf(stderr, "bench_backing: submit failed\n");
			return 1;
		}
	}
	if (bn.direct_path) {
		/* like a writeback thread: sleep until completions freed slots, then refill every
		 * free slot in one burst (slots are reused in turn; buffer contents do not matter) */
		unsigned int inflight = bn.qd, next = 0;

		while (inflight) {
			unsigned int freed = 1;

			while (sem_wait(&bn.done) && errno == EINTR)
				;
			while (sem_trywait(&bn.done) == 0)
				freed++;
			inflight -= freed;
			pcache_backing_plug(bn.b);
			while (freed-- && pcache_now_ns() < bn.deadline_ns) {
				if (bench_submit(&slots[next]) == 0)
					inflight++;
				next = (next + 1) % bn.qd;
			}
			pcache_backing_unplug(bn.b);
		}
	} else {
		for (i = 0; i < bn.qd; i++)
			while (sem_wait(&bn.done) && errno == EINTR)
				;
	}
	secs = (double)(pcache_now_ns() - start) / 1e9;
	pcache_backing_close(bn.b);
	getrusage(RUSAGE_SELF, &ru);
	cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
	      (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
	printf("iops=%.0f mib_s=%.1f ios=%llu errors=%llu seconds=%.2f cpu_us_per_io=%.2f\n",
	       (double)bn.ios / secs, (double)bn.ios * (double)bn.bs / secs / 1048576.0,
	       (unsigned long long)bn.ios, (unsigned long long)bn.errors, secs,
	       bn.ios ? cpu / (double)bn.ios : 0.0);
	free(slots);
	free(bn.bufs);
	return bn.errors ? 1 : 0;
}
