/*
 * live.c -- the commands that work on a mounted pcachefs through its control tree:
 *
 *   pcachectl status [--json] MOUNTPOINT     a summary of .pcache/status.json (or the JSON)
 *   pcachectl flush [--image NAME] [--quiet] MOUNTPOINT
 *                                            write back all dirty data (of one image), with
 *                                            a progress line on a terminal
 *
 * A MOUNTPOINT is a directory holding .pcache/status.json; anything else is refused with one
 * line. The daemon does the work: flush writes "1" to .pcache/flush (.pcache/images/NAME/flush),
 * a write that returns once everything is written back. That write runs in a child thread while
 * the main thread polls status.json for dirty_bytes and draws the progress line.
 *
 * Invariants:
 *  1. Nothing but the control files is touched: status only reads; flush writes one file once.
 *  2. Exit status: 0 success, 1 refused or failed with exactly one line on stderr (not a
 *     pcachefs mount, no such image, the daemon's write failed), 3 usage error.
 *  3. The progress line is drawn only on a terminal (progress.c); stdout carries the
 *     result alone (the summary, or the daemon's JSON byte for byte).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pcache/format.h"
#include "pcache/util.h"
#include "pcachectl_i.h"

#define LIVE_POLL_NS 200000000L          /* status.json is read 5 times a second */
#define LIVE_STATUS_MAX (16u << 20)      /* a status.json larger than this is not believed */

static int status_run(int argc, char **argv);
static int flush_run(int argc, char **argv);

const struct pcachectl_cmd pcachectl_cmd_status = {
	.name = "status",
	.run = status_run,
	.usage = "status [--json] MOUNTPOINT",
	.help = "Show the state of a mounted pcachefs: the cache (size, segments used, dirty data,\n"
		"knobs) and each image (mode, size, dirty and cached bytes, hit ratio, errors), read\n"
		"from MOUNTPOINT/.pcache/status.json. For a cache device that is not mounted, use\n"
		"'pcachectl info'.\n\n"
		"options:\n"
		"  --json     print status.json itself (one JSON object)\n\n"
		"exit status: 0 ok, 1 not a pcachefs mount or status unreadable, 3 usage error.\n",
};

const struct pcachectl_cmd pcachectl_cmd_flush = {
	.name = "flush",
	.run = flush_run,
	.usage = "flush [--image NAME] [--quiet] MOUNTPOINT",
	.help = "Write back every dirty byte of a mounted pcachefs (or of image NAME) to the backing\n"
		"images, and return when that is done. On a terminal a progress line (bytes left,\n"
		"rate, ETA) is drawn on stderr; otherwise nothing is printed. Needs root, like\n"
		"writing MOUNTPOINT/.pcache/flush. Writeback runs at the writeback_rate knob.\n\n"
		"options:\n"
		"  --image NAME  only image NAME (.pcache/images/NAME/flush)\n"
		"  --quiet       no progress line\n\n"
		"exit status: 0 all written back, 1 not a pcachefs mount, no such image or the\n"
		"writeback failed, 3 usage error.\n",
};

/* Read MNT/.pcache/<rel> whole (control files are direct-io: read to EOF). 0 or -errno. */
static int read_ctl(const char *mnt, const char *rel, char **out, size_t *outlen)
{
	char path[PCACHE_PATH_MAX + 64];
	size_t len = 0, cap = 8192;
	char *buf, *nb;
	ssize_t n;
	int fd, ret = 0;

	snprintf(path, sizeof(path), "%s/.pcache/%s", mnt, rel);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	buf = malloc(cap);
	if (!buf) {
		ret = -ENOMEM;
		goto close_fd;
	}
	for (;;) {
		if (cap - len < 4096) {
			if (cap >= LIVE_STATUS_MAX) {
				ret = -EFBIG;
				goto free_buf;
			}
			nb = realloc(buf, cap * 2);
			if (!nb) {
				ret = -ENOMEM;
				goto free_buf;
			}
			buf = nb;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = -errno;
			goto free_buf;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	*out = buf;
	if (outlen)
		*outlen = len;
	close(fd);
	return 0;
free_buf:
	free(buf);
close_fd:
	close(fd);
	return ret;
}

/*
 * Recognise a mount point and read its status.json. On failure prints the one line of
 * invariant 2 (prefixed "pcachectl <cmd>: MNT: ") and returns PCACHECTL_FAILED.
 */
static int load_status(const char *cmd, const char *mnt, char **text, size_t *len,
		       struct pcachectl_json **js)
{
	struct stat st;
	int ret;

	if (stat(mnt, &st) != 0) {
		fprintf(stderr, "pcachectl %s: %s: %s\n", cmd, mnt, strerror(errno));
		return PCACHECTL_FAILED;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "pcachectl %s: %s: not a directory (for a cache device use 'pcachectl "
			"info')\n", cmd, mnt);
		return PCACHECTL_FAILED;
	}
	ret = read_ctl(mnt, "status.json", text, len);
	if (ret == -ENOENT || ret == -ENOTDIR) {
		fprintf(stderr, "pcachectl %s: %s: not a pcachefs mount (no .pcache/status.json)\n", cmd,
			mnt);
		return PCACHECTL_FAILED;
	}
	if (ret) {
		fprintf(stderr, "pcachectl %s: %s: cannot read .pcache/status.json: %s\n", cmd, mnt,
			strerror(-ret));
		return PCACHECTL_FAILED;
	}
	ret = pcachectl_json_parse(*text, js);
	if (ret) {
		fprintf(stderr, "pcachectl %s: %s: .pcache/status.json: %s\n", cmd, mnt,
			ret == -EINVAL ? "not valid JSON" : strerror(-ret));
		free(*text);
		return PCACHECTL_FAILED;
	}
	return PCACHECTL_OK;
}

static const struct pcachectl_json *find_image(const struct pcachectl_json *js, const char *name)
{
	const struct pcachectl_json *imgs = pcachectl_json_get(js, "images");
	size_t i;

	if (!imgs || imgs->type != PCACHECTL_JSON_ARRAY)
		return NULL;
	for (i = 0; i < imgs->n; i++)
		if (!strcmp(pcachectl_json_s(&imgs->child[i], "name", ""), name))
			return &imgs->child[i];
	return NULL;
}

/* ---- status ------------------------------------------------------------------------------- */

static void print_summary(const char *mnt, const struct pcachectl_json *js)
{
	const struct pcachectl_json *c = pcachectl_json_get(js, "cache");
	const struct pcachectl_json *imgs = pcachectl_json_get(js, "images");
	const struct pcachectl_json *un = pcachectl_json_get(js, "unattached");
	const struct pcachectl_json *v;
	char a[32], b[32], d[32];
	uint64_t rate = pcachectl_json_u64(c, "writeback_rate", 0);
	const struct pcachectl_json *ga = pcachectl_json_get(c, "gc_auto");
	bool gc_auto = ga && ga->b;
	size_t i;

	printf("%s: pcachefs %s\n", mnt, pcachectl_json_s(js, "version", "?"));
	v = pcachectl_json_get(c, "data_crc");
	printf("cache      %s, %s, %" PRIu64 "/%" PRIu64 " segments of %s used, %s granularity%s\n",
	       pcachectl_json_s(c, "path", "?"),
	       pcache_fmt_size(pcachectl_json_u64(c, "size", 0), a, sizeof(a)),
	       pcachectl_json_u64(c, "segs_used", 0), pcachectl_json_u64(c, "seg_count", 0),
	       pcache_fmt_size(pcachectl_json_u64(c, "seg_size", 0), b, sizeof(b)),
	       pcachectl_json_s(c, "granularity", "?"), v && v->b ? ", data CRC" : "");
	printf("dirty      %s (%" PRIu64 "%% of the cache), written back %s\n",
	       pcache_fmt_size(pcachectl_json_u64(c, "dirty_bytes", 0), a, sizeof(a)),
	       pcachectl_json_u64(c, "dirty_percent", 0),
	       pcache_fmt_size(pcachectl_json_u64(c, "wb_bytes", 0), b, sizeof(b)));
	if (rate)
		snprintf(d, sizeof(d), "%s/s", pcache_fmt_size(rate, a, sizeof(a)));
	printf("knobs      writeback_rate %s, dirty_high %" PRIu64 "%%, dirty_low %" PRIu64 "%%, "
	       "gc_percent %s%" PRIu64 "%%%s\n", rate ? d : "unlimited", pcachectl_json_u64(c, "dirty_high", 0),
	       pcachectl_json_u64(c, "dirty_low", 0), gc_auto ? "auto (" : "",
	       pcachectl_json_u64(c, "gc_percent", 0), gc_auto ? ")" : "");
	if (pcachectl_json_u64(c, "wb_errors", 0) || pcachectl_json_u64(c, "full_waits", 0) ||
	    pcachectl_json_u64(c, "media_errors", 0))
		printf("events     %" PRIu64 " writeback errors, %" PRIu64 " writers waited for space, %" PRIu64
		       " media errors\n", pcachectl_json_u64(c, "wb_errors", 0),
		       pcachectl_json_u64(c, "full_waits", 0), pcachectl_json_u64(c, "media_errors", 0));
	for (i = 0; imgs && imgs->type == PCACHECTL_JSON_ARRAY && i < imgs->n; i++) {
		const struct pcachectl_json *im = &imgs->child[i];
		uint64_t hit = pcachectl_json_u64(im, "read_hit_bytes", 0);
		uint64_t miss = pcachectl_json_u64(im, "read_miss_bytes", 0);
		uint64_t errs = pcachectl_json_u64(im, "crc_errors", 0) +
				pcachectl_json_u64(im, "backing_errors", 0);

		printf("image      %s: %s, %s, dirty %s, ", pcachectl_json_s(im, "name", "?"),
		       pcachectl_json_s(im, "cache_mode", "?"),
		       pcache_fmt_size(pcachectl_json_u64(im, "size", 0), a, sizeof(a)),
		       pcache_fmt_size(pcachectl_json_u64(im, "dirty_bytes", 0), b, sizeof(b)));
		printf("cached %s", pcache_fmt_size(pcachectl_json_u64(im, "cached_bytes", 0), a, sizeof(a)));
		if (hit + miss)
			printf(", read hits %u%%", (unsigned int)((double)hit * 100 / (double)(hit + miss)));
		if (errs)
			printf(", %" PRIu64 " errors", errs);
		printf(" (%s)\n", pcachectl_json_s(im, "path", "?"));
	}
	for (i = 0; un && un->type == PCACHECTL_JSON_ARRAY && i < un->n; i++)
		printf("image      %s: %s, dirty %s (%s)\n", pcachectl_json_s(&un->child[i], "name", "?"),
		       pcachectl_json_s(&un->child[i], "state", "?"),
		       pcache_fmt_size(pcachectl_json_u64(&un->child[i], "dirty_bytes", 0), a, sizeof(a)),
		       pcachectl_json_s(&un->child[i], "path", "?"));
}

static int status_run(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 },
	};
	const struct pcachectl_cmd *cmd = &pcachectl_cmd_status;
	struct pcachectl_json *js;
	bool json = false;
	size_t len;
	char *text;
	int c, rc;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		if (c == 'j')
			json = true;
		else
			return pcachectl_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
	}
	if (optind != argc - 1)
		return pcachectl_usage_error(cmd, optind == argc ? "no MOUNTPOINT given" :
					     "more than one MOUNTPOINT given");
	rc = load_status(cmd->name, argv[optind], &text, &len, &js);
	if (rc)
		return rc;
	/* invariant 3: --json is the daemon's text unchanged (it was parsed only to validate it) */
	if (json)
		fwrite(text, 1, len, stdout);
	else
		print_summary(argv[optind], js);
	pcachectl_json_free(js);
	free(text);
	return fflush(stdout) == 0 ? PCACHECTL_OK : PCACHECTL_FAILED;
}

/* ---- flush -------------------------------------------------------------------------------- */

struct flush_job {
	char path[PCACHE_PATH_MAX + 64];
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;                /* protected by lock */
	int err;                  /* 0 or errno of the write; written before done */
};

/* The child thread: one write of "1" that returns when the daemon has written everything back. */
static void *flush_thread(void *arg)
{
	struct flush_job *j = arg;
	ssize_t n;
	int fd, err = 0;

	fd = open(j->path, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		err = errno;
	} else {
		do
			n = write(fd, "1\n", 2);
		while (n < 0 && errno == EINTR);
		if (n < 0)
			err = errno;
		if (close(fd) != 0 && !err && errno != EINTR)
			err = errno;
	}
	pthread_mutex_lock(&j->lock);
	j->err = err;
	j->done = true;
	pthread_cond_signal(&j->cond);
	pthread_mutex_unlock(&j->lock);
	return NULL;
}

/*
 * The progress measures of the cache (image NULL) or of one image from a fresh status.json:
 * dirty_bytes, and wb_bytes (written to the backing so far). dirty_bytes falls only when a
 * flush epoch is complete (its dirty tail moves), wb_bytes after every batch. 0 or -errno.
 */
static int poll_dirty(const char *mnt, const char *image, uint64_t *dirty, uint64_t *wb)
{
	const struct pcachectl_json *o;
	struct pcachectl_json *js;
	char *text;
	int ret;

	ret = read_ctl(mnt, "status.json", &text, NULL);
	if (ret)
		return ret;
	ret = pcachectl_json_parse(text, &js);
	free(text);
	if (ret)
		return ret;
	o = image ? find_image(js, image) : pcachectl_json_get(js, "cache");
	ret = o ? 0 : -ENOENT;
	if (o) {
		*dirty = pcachectl_json_u64(o, "dirty_bytes", 0);
		*wb = pcachectl_json_u64(o, "wb_bytes", 0);
	}
	pcachectl_json_free(js);
	return ret;
}

static int flush_run(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "image", required_argument, NULL, 'i' },
		{ "quiet", no_argument, NULL, 'q' },
		{ NULL, 0, NULL, 0 },
	};
	const struct pcachectl_cmd *cmd = &pcachectl_cmd_flush;
	struct pcachectl_progress bar;
	struct pcachectl_json *js;
	struct flush_job job;
	const char *mnt, *image = NULL;
	uint64_t total = 0, dirty = 0, wb0 = 0, wb = 0, done_bytes;
	bool quiet = false, done;
	pthread_t tid;
	char *text;
	int c, rc;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		if (c == 'i')
			image = optarg;
		else if (c == 'q')
			quiet = true;
		else
			return pcachectl_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
	}
	if (optind != argc - 1)
		return pcachectl_usage_error(cmd, optind == argc ? "no MOUNTPOINT given" :
					     "more than one MOUNTPOINT given");
	mnt = argv[optind];
	if (image && (!*image || strchr(image, '/') || !strcmp(image, ".") || !strcmp(image, "..")))
		return pcachectl_usage_error(cmd, "bad image name '%s'", image);

	rc = load_status(cmd->name, mnt, &text, NULL, &js);
	if (rc)
		return rc;
	if (image && !find_image(js, image)) {
		fprintf(stderr, "pcachectl flush: %s: no attached image '%s'\n", mnt, image);
		pcachectl_json_free(js);
		free(text);
		return PCACHECTL_FAILED;
	}
	total = pcachectl_json_u64(image ? find_image(js, image) : pcachectl_json_get(js, "cache"),
				   "dirty_bytes", 0);
	wb0 = pcachectl_json_u64(image ? find_image(js, image) : pcachectl_json_get(js, "cache"),
				 "wb_bytes", 0);
	pcachectl_json_free(js);
	free(text);

	memset(&job, 0, sizeof(job));
	if (image)
		snprintf(job.path, sizeof(job.path), "%s/.pcache/images/%s/flush", mnt, image);
	else
		snprintf(job.path, sizeof(job.path), "%s/.pcache/flush", mnt);
	pthread_mutex_init(&job.lock, NULL);
	pthread_cond_init(&job.cond, NULL);
	rc = pthread_create(&tid, NULL, flush_thread, &job);
	if (rc) {
		fprintf(stderr, "pcachectl flush: %s: cannot start: %s\n", mnt, strerror(rc));
		goto destroy;
	}
	pcachectl_progress_start(&bar, "flush", quiet, false);
	pcachectl_progress_update(&bar, 0, total, NULL, false);
	for (;;) {
		uint64_t deadline = pcache_now_ns() + LIVE_POLL_NS;

		pthread_mutex_lock(&job.lock);
		while (!job.done && pcache_cond_wait_until(&job.cond, &job.lock, deadline) != ETIMEDOUT)
			;
		done = job.done;
		pthread_mutex_unlock(&job.lock);
		if (done)
			break;
		/* a failed poll (the image detached meanwhile) only skips a redraw */
		if (bar.tty && poll_dirty(mnt, image, &dirty, &wb) == 0) {
			/* writes that go on during the flush make more to do: the total grows */
			if (dirty > total)
				total = dirty;
			/* done: what left the dirty count, or more finely what reached the backing */
			done_bytes = PCACHE_MAX(total - dirty, wb - PCACHE_MIN(wb0, wb));
			pcachectl_progress_update(&bar, PCACHE_MIN(done_bytes, total), total, NULL, false);
		}
	}
	pthread_join(tid, NULL);
	if (!job.err)
		pcachectl_progress_update(&bar, total, total, NULL, true);
	pcachectl_progress_end(&bar);
	if (job.err == EACCES || job.err == EPERM)
		fprintf(stderr, "pcachectl flush: %s: permission denied (flush needs root)\n", mnt);
	else if (job.err)
		fprintf(stderr, "pcachectl flush: %s: writeback failed: %s (see the daemon's log)\n", mnt,
			strerror(job.err));
	rc = job.err ? PCACHECTL_FAILED : PCACHECTL_OK;
destroy:
	pthread_cond_destroy(&job.cond);
	pthread_mutex_destroy(&job.lock);
	return rc ? PCACHECTL_FAILED : PCACHECTL_OK;
}
