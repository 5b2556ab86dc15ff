/*
 * format.c -- `pcachectl format`: write an empty pcachefs cache (format v1).
 *
 * Invariants:
 *  1. Nothing is overwritten without --force when the device holds anything: a valid pcachefs
 *     cache (which may hold dirty data not yet written back) or any non-zero byte in the
 *     superblock area (another format, a partition table, a file system), any signature
 *     libblkid recognises, or data in the first MiB behind a zeroed superblock area. A blank
 *     device or a file created here formats without --force.
 *  2. Options are validated before the device is touched (segment size, gc percent, device
 *     size large enough for PCACHE_MIN_SEGS segments).
 *  3. The format itself is pcache_cache_dev_format(): it takes the exclusive lock, so a mounted
 *     device is refused even with --force.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcache/util.h"
#include "pcachectl_i.h"

static int format_run(int argc, char **argv);

const struct pcachectl_cmd pcachectl_cmd_format = {
	.name = "format",
	.run = format_run,
	.usage = "format [--segment-size=SIZE] [--data-crc] [--gc-percent=N|auto] [--size=SIZE] [--force] DEVICE",
	.help =
		"Write an empty pcachefs cache (on-media format v1) on DEVICE: a DAX device or a file\n"
		"(a file on /dev/shm emulates persistent memory). The first mount also formats a\n"
		"blank device; use this command to choose options or to reuse a device.\n\n"
		"options:\n"
		"  --segment-size=SIZE  segment size, a power of two from 1M to 1G (default: 1/256 of\n"
		"                       the device, 4M to 16M)\n"
		"  --data-crc           store a CRC32C of cached data and verify it (fixed at format)\n"
		"  --gc-percent=N|auto  start evicting clean data at N% of segments used (0-90), or keep\n"
		"                       a free reserve sized from the write rate (auto, the default)\n"
		"  --size=SIZE          create DEVICE as a file of SIZE bytes if missing (or empty)\n"
		"  --max-images=N       entries of the image table, a multiple of 64 from 64 to 512\n"
		"                       (default: one per MiB of the device, 64 to 512)\n"
		"  --force              overwrite a device that is not blank, including an existing\n"
		"                       pcachefs cache and any dirty data in it\n"
		"SIZE takes K, M, G, T suffixes (powers of 1024).\n\n"
		"exit status: 0 formatted, 1 refused (device not blank; use --force), 3 error.\n",
};

/* What DEVICE holds now: 0 blank/missing, 1 a pcachefs cache, 2 something else. */
static int device_content(const char *path, char *what, size_t len)
{
	struct pcache_cache_dev_opts o = { .path = path, .read_only = true };
	struct pcache_cache_dev *cd;
	char err[512], uuid[40];
	int rc, n;

	rc = pcache_cache_dev_open(&o, &cd, err, sizeof(err));
	if (rc == 0) {
		struct pcache_image_ent *ents = calloc(PCACHE_MAX_IMAGES, sizeof(*ents));

		n = ents ? pcache_cache_dev_images(cd, ents, PCACHE_MAX_IMAGES) : 0;
		free(ents);
		snprintf(what, len, "a pcachefs cache (uuid %s, %d image%s; its dirty data would be lost)",
			 pcachectl_fmt_uuid(pcache_cache_dev_sb(cd)->uuid, uuid, sizeof(uuid)), n,
			 n == 1 ? "" : "s");
		pcache_cache_dev_close(cd);
		return 1;
	}
	if (rc == -ENODATA || rc == -ENOENT)
		return 0;
	if (rc == -ENOTEMPTY) { /* zero superblock area, but a signature or data behind it */
		snprintf(what, len, "data that is not a pcachefs cache (%s)", err);
		return 2;
	}
	if (rc == -EBUSY || rc == -EACCES || rc == -EPERM || rc == -EISDIR || rc == -ENOTSUP) {
		snprintf(what, len, "%s", err);
		return -1;
	}
	snprintf(what, len, "data that is not a valid pcachefs cache (%s)", err);
	return 2;
}

static int format_run(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "segment-size", required_argument, NULL, 's' },
		{ "data-crc", no_argument, NULL, 'c' },
		{ "gc-percent", required_argument, NULL, 'g' },
		{ "size", required_argument, NULL, 'S' },
		{ "max-images", required_argument, NULL, 'm' },
		{ "force", no_argument, NULL, 'f' },
		{ NULL, 0, NULL, 0 },
	};
	const struct pcachectl_cmd *cmd = &pcachectl_cmd_format;
	struct pcache_format_opts fo = { 0 };
	struct pcache_cache_dev_opts oo = { .read_only = true };
	struct pcache_cache_dev *cd;
	uint64_t size = 0, dev_size = 0, seg_base;
	uint32_t seg_count;
	bool force = false;
	struct stat st;
	char what[600], err[512], b1[32], b2[32], uuid[40];
	const char *path;
	int c, rc;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (pcache_parse_size(optarg, &fo.seg_size))
				return pcachectl_usage_error(cmd, "--segment-size: '%s' is not a size", optarg);
			if (!PCACHE_IS_POW2(fo.seg_size) || fo.seg_size < PCACHE_MIN_SEG_SIZE ||
			    fo.seg_size > PCACHE_MAX_SEG_SIZE)
				return pcachectl_usage_error(cmd, "--segment-size: %s is not a power of two between 1M and 1G",
							     optarg);
			break;
		case 'c':
			fo.data_crc = true;
			break;
		case 'g':
			if (pcache_parse_gc_percent(optarg, &fo.gc_percent))
				return pcachectl_usage_error(cmd, "--gc-percent: '%s' is not 0..%u or auto",
							     optarg, PCACHE_MAX_GC_PERCENT);
			fo.set_gc_percent = true;
			break;
		case 'S':
			if (pcache_parse_size(optarg, &size) || size == 0)
				return pcachectl_usage_error(cmd, "--size: '%s' is not a size", optarg);
			break;
		case 'f':
			force = true;
			break;
		case 'm': {
			char *end;
			unsigned long v = strtoul(optarg, &end, 10);

			if (!*optarg || *end || v > UINT32_MAX || !pcache_max_images_valid((uint32_t)v))
				return pcachectl_usage_error(cmd, "--max-images: '%s' is not a multiple of %u from %u to %u",
							     optarg, PCACHE_IMAGES_STEP, PCACHE_MAX_IMAGES_V1,
							     PCACHE_MAX_IMAGES);
			fo.max_images = (uint32_t)v;
			break;
		}
		default:
			return pcachectl_usage_error(cmd, "unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	if (optind != argc - 1)
		return pcachectl_usage_error(cmd, optind == argc ? "no DEVICE given" : "more than one DEVICE given");
	path = argv[optind];

	/* the size the device will have: the existing one, or --size for a missing/empty file */
	if (stat(path, &st) == 0) {
		if (S_ISREG(st.st_mode) && st.st_size > 0) {
			if (size && (uint64_t)st.st_size != size)
				return pcachectl_usage_error(cmd, "%s exists with %lld bytes; --size only creates a missing or empty file",
							     path, (long long)st.st_size);
			dev_size = (uint64_t)st.st_size;
		} else if (S_ISREG(st.st_mode)) {
			if (!size)
				return pcachectl_usage_error(cmd, "%s is empty; give --size to size it", path);
			dev_size = size;
		}
		/* a DAX device: its size is checked by the format itself */
	} else if (errno == ENOENT) {
		if (!size)
			return pcachectl_usage_error(cmd, "%s does not exist; give --size to create it as a file", path);
		dev_size = size;
	} else {
		fprintf(stderr, "pcachectl format: %s: %s\n", path, strerror(errno));
		return PCACHECTL_ERROR;
	}
	if (dev_size) {
		rc = pcache_cache_dev_geometry(dev_size, fo.seg_size ? fo.seg_size : pcache_default_seg_size(dev_size),
					       fo.max_images ? fo.max_images : pcache_default_max_images(dev_size),
					       &seg_count, &seg_base);
		if (rc == -ENOSPC) {
			uint64_t s = fo.seg_size ? fo.seg_size : pcache_default_seg_size(dev_size);

			fprintf(stderr, "pcachectl format: %s: too small: %s holds fewer than %u segments of %s (need at least %s)\n",
				path, pcache_fmt_size(dev_size, b1, sizeof(b1)), PCACHE_MIN_SEGS,
				pcache_fmt_size(s, b2, sizeof(b2)),
				pcache_fmt_size(2ull * 1024 * 1024 + PCACHE_MIN_SEGS * s, what, sizeof(what)));
			return PCACHECTL_ERROR;
		}
	}

	rc = device_content(path, what, sizeof(what));
	if (rc < 0) {
		fprintf(stderr, "pcachectl format: %s\n", what);
		return PCACHECTL_ERROR;
	}
	if (rc > 0 && !force) {
		fprintf(stderr, "pcachectl format: %s holds %s.\nRefusing to overwrite it; use --force to format anyway.\n",
			path, what);
		return PCACHECTL_REPAIRABLE;
	}

	rc = pcache_cache_dev_format(path, size, &fo, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "pcachectl format: %s\n", err);
		return PCACHECTL_ERROR;
	}
	oo.path = path;
	rc = pcache_cache_dev_open(&oo, &cd, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "pcachectl format: %s: formatted, but does not open: %s\n", path, err);
		return PCACHECTL_ERROR;
	}
	printf("formatted %s: %u segments of %s (%s of cache), uuid %s, granularity %s%s\n", path,
	       pcache_cache_dev_seg_count(cd),
	       pcache_fmt_size(pcache_cache_dev_seg_size(cd), b1, sizeof(b1)),
	       pcache_fmt_size(pcache_cache_dev_seg_count(cd) * pcache_cache_dev_seg_size(cd), b2,
				  sizeof(b2)),
	       pcachectl_fmt_uuid(pcache_cache_dev_sb(cd)->uuid, uuid, sizeof(uuid)),
	       pcache_cache_dev_granularity(cd), fo.data_crc ? ", data CRC on" : "");
	pcache_cache_dev_close(cd);
	return PCACHECTL_OK;
}
