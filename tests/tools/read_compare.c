/*
 * read_compare.c -- random reads of any alignment from FILE compared with the same bytes of REF.
 *
 *   read_compare FILE REF [--ops N] [--max-len BYTES] [--threads N] [--seed N]
 *
 * Each thread preads N pieces at random offsets (any byte) and random lengths (1..max-len,
 * shortened at EOF) from both files and compares them; a piece is also read again at once (a
 * second, likely cached, answer must be the same). Used on a pcachefs image file over a
 * reference copy: the daemon trims its aligned envelope to the exact request, whichever path
 * (zero-copy hit or copy) served it. Exit 0 = every piece equal, 1 = mismatch or I/O error.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fd, ref_fd;
static uint64_t size;
static long ops = 2000, max_len = 1 << 20;
static unsigned int seed = 1;

static int read_full(int f, unsigned char *buf, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pread(f, buf, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		buf += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* The first differing byte of a and b (len bytes), or len. */
static size_t first_diff(const unsigned char *a, const unsigned char *b, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (a[i] != b[i])
			return i;
	return len;
}

static void *worker(void *arg)
{
	unsigned int rs = seed * 7919u + (unsigned int)(intptr_t)arg;
	unsigned char *a = malloc((size_t)max_len), *b = malloc((size_t)max_len);
	long i;
	intptr_t bad = 0;

	if (!a || !b) {
		fprintf(stderr, "read_compare: out of memory\n");
		bad = 1;
		goto out;
	}
	for (i = 0; i < ops && !bad; i++) {
		uint64_t off = (((uint64_t)rand_r(&rs) << 31) | (uint64_t)rand_r(&rs)) % size;
		size_t len = 1 + (size_t)rand_r(&rs) % (size_t)max_len, d;
		int pass, ret;

		if (len > size - off)
			len = (size_t)(size - off);
		ret = read_full(ref_fd, b, len, off);
		if (ret) {
			fprintf(stderr, "read_compare: reference read at %" PRIu64 ": %s\n", off, strerror(-ret));
			bad = 1;
			break;
		}
		for (pass = 0; pass < 2; pass++) {
			ret = read_full(fd, a, len, off);
			if (ret) {
				fprintf(stderr, "read_compare: read %zu at %" PRIu64 ": %s\n", len, off, strerror(-ret));
				bad = 1;
				break;
			}
			d = first_diff(a, b, len);
			if (d != len) {
				fprintf(stderr, "read_compare: read %zu at %" PRIu64 " (pass %d): byte %" PRIu64
					" is %02x, want %02x\n", len, off, pass, off + d, a[d], b[d]);
				bad = 1;
				break;
			}
		}
	}
out:
	free(a);
	free(b);
	return (void *)bad;
}

int main(int argc, char **argv)
{
	pthread_t th[16];
	long threads = 1, t;
	struct stat st;
	int i, bad = 0;

	if (argc < 3) {
		fprintf(stderr, "usage: read_compare FILE REF [--ops N] [--max-len BYTES] [--threads N] [--seed N]\n");
		return 1;
	}
	for (i = 3; i + 1 < argc; i += 2) {
		long v = strtol(argv[i + 1], NULL, 0);

		if (!strcmp(argv[i], "--ops"))
			ops = v;
		else if (!strcmp(argv[i], "--max-len"))
			max_len = v;
		else if (!strcmp(argv[i], "--threads"))
			threads = v;
		else if (!strcmp(argv[i], "--seed"))
			seed = (unsigned int)v;
		else {
			fprintf(stderr, "read_compare: unknown option %s\n", argv[i]);
			return 1;
		}
	}
	if (threads < 1 || threads > 16 || max_len < 1 || ops < 0) {
		fprintf(stderr, "read_compare: bad --threads, --max-len or --ops\n");
		return 1;
	}
	fd = open(argv[1], O_RDONLY);
	ref_fd = open(argv[2], O_RDONLY);
	if (fd < 0 || ref_fd < 0 || fstat(ref_fd, &st) != 0 || st.st_size == 0) {
		fprintf(stderr, "read_compare: cannot open %s or %s\n", argv[1], argv[2]);
		return 1;
	}
	size = (uint64_t)st.st_size;
	for (t = 0; t < threads; t++) {
		if (pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t) != 0) {
			fprintf(stderr, "read_compare: cannot start a thread\n");
			return 1;
		}
	}
	for (t = 0; t < threads; t++) {
		void *r;

		pthread_join(th[t], &r);
		bad |= r != NULL;
	}
	close(fd);
	close(ref_fd);
	if (!bad)
		printf("read_compare: %ld pieces of up to %ld bytes equal (%ld threads)\n", ops * threads,
		       max_len, threads);
	return bad;
}
