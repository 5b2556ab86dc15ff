/*
 * fsync_writer.c -- durability probe for kill -9 tests of the daemon.
 *
 * Write mode: writes records into slots of a file (O_DIRECT), makes them durable (fsync after a
 * small random batch, or every write when the file is opened O_SYNC / O_DSYNC), and only then
 * appends "slot gen" lines for them to a log file kept outside the mount. It runs until the
 * count is reached or a write fails (the daemon died), and exits 0 either way.
 *
 *   fsync_writer write FILE LOG --slots N --first-slot S --gen-base G [--mode fsync|osync|odsync]
 *                [--count N] [--seed N] [--record-size BYTES]
 *   fsync_writer verify FILE LOG [--record-size BYTES]
 *
 * Record layout: every 512-byte sector of a record is self-describing (magic, slot, gen, sector
 * index, payload derived from those, CRC32C), so verify checks each sector on its own.
 *
 * Verify: for every slot named in the log, with g = the largest logged gen of that slot, every
 * sector of the slot must hold a valid sector of that slot with gen >= g (a later write that was
 * not yet logged may have landed too; an older one, garbage, or another slot's data is a failure).
 * Exit 0 when all logged records are there, 1 otherwise (with one line per bad sector, max 20).
 *
 *   fsync_writer backing FILE STATE --slots N [--record-size BYTES]
 *
 * Backing mode, for the backing image alone while no daemon runs (it was zero before the first
 * write): every sector of slots 0..N-1 must be zero or a valid sector of its own slot (never
 * garbage, a torn sector or another slot's data), and no sector may hold an older generation than
 * the last scan recorded in STATE (the backing never rolls back). STATE is then rewritten.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pcache/util.h"

#define SECTOR 512u
#define FW_MAGIC 0x46535957524954ULL   /* "TIRWYSF" */

struct fw_sector_hdr {
	uint64_t magic;
	uint64_t slot;
	uint64_t gen;
	uint32_t idx;
	uint32_t crc;   /* over the whole sector with crc = 0 */
};

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

static void fill_sector(unsigned char *p, uint64_t slot, uint64_t gen, uint32_t idx)
{
	struct fw_sector_hdr h = { FW_MAGIC, slot, gen, idx, 0 };
	uint64_t s = (slot * 0x9E3779B97F4A7C15ULL) ^ (gen + 1) ^ ((uint64_t)idx << 48) ^ 1;

	for (size_t i = sizeof(h); i + 8 <= SECTOR; i += 8) {
		uint64_t v = rng_next(&s);

		memcpy(p + i, &v, 8);
	}
	memcpy(p, &h, sizeof(h));
	h.crc = pcache_crc32c(PCACHE_CRC_SEED, p, SECTOR);
	memcpy(p + offsetof(struct fw_sector_hdr, crc), &h.crc, 4);
}

/* 0 = valid sector of slot (gen in *gen), -1 = invalid. */
static int check_sector(const unsigned char *p, uint64_t slot, uint32_t idx, uint64_t *gen)
{
	unsigned char tmp[SECTOR];
	struct fw_sector_hdr h;
	uint32_t crc;

	memcpy(&h, p, sizeof(h));
	if (h.magic != FW_MAGIC || h.slot != slot || h.idx != idx)
		return -1;
	memcpy(tmp, p, SECTOR);
	memset(tmp + offsetof(struct fw_sector_hdr, crc), 0, 4);
	crc = pcache_crc32c(PCACHE_CRC_SEED, tmp, SECTOR);
	if (crc != h.crc)
		return -1;
	fill_sector(tmp, slot, h.gen, idx);
	if (memcmp(tmp, p, SECTOR) != 0)
		return -1;
	*gen = h.gen;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: fsync_writer write FILE LOG --slots N --first-slot S --gen-base G\n"
			"                    [--mode fsync|osync|odsync] [--count N] [--seed N] [--record-size B]\n"
			"       fsync_writer verify FILE LOG [--record-size B]\n"
			"       fsync_writer backing FILE STATE --slots N [--record-size B]\n");
	exit(2);
}

static int do_write(const char *file, const char *logp, uint64_t slots, uint64_t first, uint64_t gen,
		    const char *mode, uint64_t count, uint64_t seed, size_t rsize)
{
	int flags = O_RDWR | O_DIRECT;
	int fd, lfd;
	unsigned char *buf;
	uint64_t pending[16], rng = seed ? seed : 88172645463325252ULL, done = 0;
	int npend = 0, batch;
	bool per_write = false;
	char line[64];

	if (!strcmp(mode, "osync")) {
		flags |= O_SYNC;
		per_write = true;
	} else if (!strcmp(mode, "odsync")) {
		flags |= O_DSYNC;
		per_write = true;
	} else if (strcmp(mode, "fsync") != 0) {
		usage();
	}
	fd = open(file, flags);
	if (fd < 0) {
		fprintf(stderr, "fsync_writer: open %s: %s\n", file, strerror(errno));
		return 1;
	}
	lfd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (lfd < 0) {
		fprintf(stderr, "fsync_writer: open %s: %s\n", logp, strerror(errno));
		return 1;
	}
	if (posix_memalign((void **)&buf, 4096, rsize) != 0)
		return 1;
	batch = 1 + (int)(rng_next(&rng) % 8);
	while (!count || done < count) {
		uint64_t slot = first + rng_next(&rng) % slots;

		gen++;
		for (uint32_t i = 0; i < rsize / SECTOR; i++)
			fill_sector(buf + (size_t)i * SECTOR, slot, gen, i);
		if (pwrite(fd, buf, rsize, (off_t)(slot * rsize)) != (ssize_t)rsize) {
			/* the daemon is gone: stop, log nothing more */
			fprintf(stderr, "fsync_writer: write stopped: %s\n", strerror(errno));
			break;
		}
		done++;
		pending[npend++] = slot;
		pending[npend++] = gen;
		if (per_write || npend / 2 >= batch || npend >= 16) {
			if (!per_write && fsync(fd) != 0) {
				fprintf(stderr, "fsync_writer: fsync stopped: %s\n", strerror(errno));
				break;
			}
			/* durable now: log it (the log outlives the daemon, not the machine) */
			for (int i = 0; i < npend; i += 2) {
				int n = snprintf(line, sizeof(line), "%" PRIu64 " %" PRIu64 "\n", pending[i], pending[i + 1]);

				if (write(lfd, line, (size_t)n) != n) {
					fprintf(stderr, "fsync_writer: log write failed\n");
					return 1;
				}
			}
			npend = 0;
			batch = 1 + (int)(rng_next(&rng) % 8);
		}
	}
	printf("fsync_writer: %" PRIu64 " records written\n", done);
	free(buf);
	close(lfd);
	close(fd);
	return 0;
}

static int do_verify(const char *file, const char *logp, size_t rsize)
{
	FILE *lf = fopen(logp, "r");
	uint64_t *latest = NULL, nslots = 0, slot, gen, logged = 0, bad = 0;
	unsigned char *buf;
	int fd;

	if (!lf) {
		fprintf(stderr, "fsync_writer: open %s: %s\n", logp, strerror(errno));
		return 1;
	}
	while (fscanf(lf, "%" SCNu64 " %" SCNu64, &slot, &gen) == 2) {
		if (slot >= nslots) {
			uint64_t n = slot + 1024;
			uint64_t *nl = realloc(latest, n * sizeof(*nl));

			if (!nl)
				return 1;
			memset(nl + nslots, 0, (n - nslots) * sizeof(*nl));
			latest = nl;
			nslots = n;
		}
		if (gen > latest[slot])
			latest[slot] = gen;
		logged++;
	}
	fclose(lf);
	fd = open(file, O_RDONLY | O_DIRECT);
	if (fd < 0 || posix_memalign((void **)&buf, 4096, rsize) != 0) {
		fprintf(stderr, "fsync_writer: open %s: %s\n", file, strerror(errno));
		return 1;
	}
	for (slot = 0; slot < nslots; slot++) {
		if (!latest[slot])
			continue;
		if (pread(fd, buf, rsize, (off_t)(slot * rsize)) != (ssize_t)rsize) {
			fprintf(stderr, "fsync_writer: read slot %" PRIu64 ": %s\n", slot, strerror(errno));
			return 1;
		}
		for (uint32_t i = 0; i < rsize / SECTOR; i++) {
			uint64_t g = 0;

			if (check_sector(buf + (size_t)i * SECTOR, slot, i, &g) != 0 || g < latest[slot]) {
				if (bad++ < 20)
					fprintf(stderr, "fsync_writer: slot %" PRIu64 " sector %u: %s (logged gen %" PRIu64
						", found %" PRIu64 ")\n", slot, i, g ? "older generation" : "invalid content",
						latest[slot], g);
			}
		}
	}
	close(fd);
	free(buf);
	free(latest);
	printf("fsync_writer: %" PRIu64 " logged records checked, %" PRIu64 " bad sectors\n", logged, bad);
	return bad ? 1 : 0;
}

static bool all_zero(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

static int do_backing(const char *file, const char *statep, uint64_t slots, size_t rsize)
{
	uint64_t spr = rsize / SECTOR, n = slots * spr, bad = 0, rolled = 0, written = 0;
	uint64_t *old = calloc(n, sizeof(*old)), *now = calloc(n, sizeof(*now));
	unsigned char *buf;
	FILE *sf;
	int fd;

	if (!old || !now || posix_memalign((void **)&buf, 4096, rsize) != 0)
		return 1;
	sf = fopen(statep, "rb");
	if (sf) {
		if (fread(old, sizeof(*old), n, sf) != n)
			memset(old, 0, n * sizeof(*old)); /* a state of other geometry: start over */
		fclose(sf);
	}
	fd = open(file, O_RDONLY | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "fsync_writer: open %s: %s\n", file, strerror(errno));
		return 1;
	}
	for (uint64_t slot = 0; slot < slots; slot++) {
		if (pread(fd, buf, rsize, (off_t)(slot * rsize)) != (ssize_t)rsize) {
			fprintf(stderr, "fsync_writer: read slot %" PRIu64 ": %s\n", slot, strerror(errno));
			return 1;
		}
		for (uint32_t i = 0; i < spr; i++) {
			const unsigned char *p = buf + (size_t)i * SECTOR;
			uint64_t g = 0, k = slot * spr + i;

			if (!all_zero(p, SECTOR) && check_sector(p, slot, i, &g) != 0) {
				if (bad++ < 20)
					fprintf(stderr, "fsync_writer: backing slot %" PRIu64 " sector %u: invalid content\n",
						slot, i);
				continue;
			}
			now[k] = g;
			written += g != 0;
			if (g < old[k] && rolled++ < 20)
				fprintf(stderr, "fsync_writer: backing slot %" PRIu64 " sector %u rolled back from gen %"
					PRIu64 " to %" PRIu64 "\n", slot, i, old[k], g);
		}
	}
	close(fd);
	sf = fopen(statep, "wb");
	if (!sf || fwrite(now, sizeof(*now), n, sf) != n) {
		fprintf(stderr, "fsync_writer: cannot write %s\n", statep);
		return 1;
	}
	fclose(sf);
	printf("fsync_writer: backing: %" PRIu64 " sectors written back, %" PRIu64 " invalid, %" PRIu64
	       " rolled back\n", written, bad, rolled);
	free(buf);
	free(old);
	free(now);
	return bad || rolled ? 1 : 0;
}

int main(int argc, char **argv)
{
	uint64_t slots = 1024, first = 0, gen = 0, count = 0, seed = 0;
	const char *mode = "fsync";
	size_t rsize = 4096;

	if (argc < 4)
		usage();
	for (int i = 4; i < argc; i++) {
		const char *k = argv[i];

		if (i + 1 >= argc)
			usage();
		const char *v = argv[++i];

		if (!strcmp(k, "--slots"))
			slots = strtoull(v, NULL, 0);
		else if (!strcmp(k, "--first-slot"))
			first = strtoull(v, NULL, 0);
		else if (!strcmp(k, "--gen-base"))
			gen = strtoull(v, NULL, 0);
		else if (!strcmp(k, "--mode"))
			mode = v;
		else if (!strcmp(k, "--count"))
			count = strtoull(v, NULL, 0);
		else if (!strcmp(k, "--seed"))
			seed = strtoull(v, NULL, 0);
		else if (!strcmp(k, "--record-size"))
			rsize = strtoull(v, NULL, 0);
		else
			usage();
	}
	if (rsize == 0 || rsize % 4096 || slots == 0)
		usage();
	if (!strcmp(argv[1], "write"))
		return do_write(argv[2], argv[3], slots, first, gen, mode, count, seed, rsize);
	if (!strcmp(argv[1], "verify"))
		return do_verify(argv[2], argv[3], rsize);
	if (!strcmp(argv[1], "backing"))
		return do_backing(argv[2], argv[3], slots, rsize);
	usage();
	return 2;
}
