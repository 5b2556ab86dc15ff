/*
 * unaligned_stress.c -- concurrent unaligned writers on disjoint byte ranges that share sectors,
 * checked against an in-memory model.
 *
 *   unaligned_stress FILE [--threads N] [--offset BYTES] [--length BYTES] [--ops N] [--seed N]
 *                    [--max-cell BYTES]
 *
 * The region [offset, offset+length) of FILE is cut into cells of random size (1..max-cell
 * bytes); cell i belongs to thread i % N, so neighbouring cells of different threads share a
 * 512-byte sector almost always. Each thread repeatedly writes random bytes over a random part of
 * one of its cells (pwrite, no O_DIRECT: the daemon sees the unaligned request) and sometimes
 * reads its cell back and compares it with the model (only it writes those bytes). At the end the
 * whole region is read and compared with the model: a daemon that loses bytes in a read-modify-
 * write of a shared sector fails here. Exit 0 = equal, 1 = mismatch or I/O error.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct cell {
	uint64_t off, len;
};

static int fd;
static unsigned char *model;
static struct cell *cells;
static size_t ncells;
static unsigned int nthreads = 4;
static uint64_t region_off, region_len = 1 << 20, ops = 20000, seed = 1, max_cell = 3000;
static int failed;

static uint64_t rnd(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

static void *worker(void *arg)
{
	unsigned int t = (unsigned int)(uintptr_t)arg;
	uint64_t s = seed * 7919 + t * 104729 + 1;
	unsigned char *buf = malloc(max_cell);

	if (!buf)
		return NULL;
	for (uint64_t i = 0; i < ops && !__atomic_load_n(&failed, __ATOMIC_RELAXED); i++) {
		size_t mine = (ncells - t + nthreads - 1) / nthreads;
		struct cell *c;
		uint64_t a, l;

		if (mine == 0)
			break;
		c = &cells[t + nthreads * (rnd(&s) % mine)];
		a = rnd(&s) % c->len;
		l = 1 + rnd(&s) % (c->len - a);
		if (rnd(&s) % 8 == 0) {
			/* read back the whole cell: only this thread writes it */
			if (pread(fd, buf, c->len, (off_t)(region_off + c->off)) != (ssize_t)c->len) {
				fprintf(stderr, "unaligned_stress: read: %s\n", strerror(errno));
				__atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
				break;
			}
			if (memcmp(buf, model + c->off, c->len) != 0) {
				fprintf(stderr, "unaligned_stress: thread %u: cell at %" PRIu64 " (+%" PRIu64
					") differs from the model while running\n", t, region_off + c->off, c->len);
				__atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
				break;
			}
			continue;
		}
		for (uint64_t j = 0; j < l; j++)
			buf[j] = (unsigned char)rnd(&s);
		if (pwrite(fd, buf, l, (off_t)(region_off + c->off + a)) != (ssize_t)l) {
			fprintf(stderr, "unaligned_stress: write: %s\n", strerror(errno));
			__atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
			break;
		}
		memcpy(model + c->off + a, buf, l);
	}
	free(buf);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t th[64];
	unsigned char *final;
	uint64_t s, pos, bad = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: unaligned_stress FILE [--threads N] [--offset B] [--length B] [--ops N] "
				"[--seed N] [--max-cell B]\n");
		return 2;
	}
	for (int i = 2; i + 1 < argc; i += 2) {
		uint64_t v = strtoull(argv[i + 1], NULL, 0);

		if (!strcmp(argv[i], "--threads"))
			nthreads = (unsigned int)v;
		else if (!strcmp(argv[i], "--offset"))
			region_off = v;
		else if (!strcmp(argv[i], "--length"))
			region_len = v;
		else if (!strcmp(argv[i], "--ops"))
			ops = v;
		else if (!strcmp(argv[i], "--seed"))
			seed = v;
		else if (!strcmp(argv[i], "--max-cell"))
			max_cell = v;
		else {
			fprintf(stderr, "unaligned_stress: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	if (nthreads < 1 || nthreads > 64 || max_cell < 1 || region_len < max_cell)
		return 2;
	fd = open(argv[1], O_RDWR);
	model = malloc(region_len);
	final = malloc(region_len);
	cells = malloc(sizeof(*cells) * region_len);
	if (fd < 0 || !model || !final || !cells) {
		fprintf(stderr, "unaligned_stress: open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	if (pread(fd, model, region_len, (off_t)region_off) != (ssize_t)region_len) {
		fprintf(stderr, "unaligned_stress: initial read: %s\n", strerror(errno));
		return 1;
	}
	s = seed * 31 + 17;
	for (pos = 0; pos < region_len; ncells++) {
		uint64_t l = 1 + rnd(&s) % max_cell;

		if (l > region_len - pos)
			l = region_len - pos;
		cells[ncells].off = pos;
		cells[ncells].len = l;
		pos += l;
	}
	for (unsigned int t = 0; t < nthreads; t++)
		pthread_create(&th[t], NULL, worker, (void *)(uintptr_t)t);
	for (unsigned int t = 0; t < nthreads; t++)
		pthread_join(th[t], NULL);
	if (failed)
		return 1;
	if (pread(fd, final, region_len, (off_t)region_off) != (ssize_t)region_len) {
		fprintf(stderr, "unaligned_stress: final read: %s\n", strerror(errno));
		return 1;
	}
	for (pos = 0; pos < region_len; pos++) {
		if (final[pos] != model[pos] && bad++ < 10)
			fprintf(stderr, "unaligned_stress: byte %" PRIu64 ": 0x%02x, model 0x%02x\n",
				region_off + pos, final[pos], model[pos]);
	}
	printf("unaligned_stress: %zu cells, %u threads, %" PRIu64 " ops each, %" PRIu64 " bad bytes\n",
	       ncells, nthreads, ops, bad);
	close(fd);
	free(final);
	free(model);
	free(cells);
	return bad ? 1 : 0;
}
