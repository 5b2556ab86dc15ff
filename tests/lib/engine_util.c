/*
 * engine_util.c -- helpers for the engine's unit tests and tools (see engine_util.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine_util.h"

int eng_format(const char *path, uint64_t size, uint64_t seg_size, bool data_crc)
{
	struct pcache_format_opts fo = { .seg_size = seg_size, .data_crc = data_crc };
	char err[256];
	int fd, ret;

	unlink(path);
	fd = open(path, O_CREAT | O_RDWR, 0600);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) != 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	close(fd);
	ret = pcache_cache_dev_format(path, 0, &fo, err, sizeof(err));
	if (ret)
		fprintf(stderr, "eng_format %s: %s\n", path, err);
	return ret;
}

struct sect_word {
	uint32_t tag, v;
	uint64_t sector;
};

void eng_fill(uint8_t *buf, size_t len, uint32_t tag, uint64_t off, uint32_t v)
{
	size_t s, i;

	for (s = 0; s < len / 512; s++) {
		struct sect_word w = { tag | 0xA5000000u, v, off / 512 + s };

		for (i = 0; i < 32; i++)
			memcpy(buf + s * 512 + i * 16, &w, 16);
	}
}

int eng_decode(const uint8_t *buf, uint32_t tag, uint64_t off, uint32_t *v)
{
	struct sect_word w;
	size_t i;

	for (i = 0; i < 512; i++)
		if (buf[i])
			break;
	if (i == 512) {
		*v = ENG_ZERO;
		return 0;
	}
	memcpy(&w, buf, 16);
	if (w.tag != (tag | 0xA5000000u) || w.sector != off / 512)
		return -1;
	for (i = 1; i < 32; i++)
		if (memcmp(buf + i * 16, &w, 16))
			return -1;
	*v = w.v;
	return 0;
}

int eng_file_holds(const char *path, uint64_t off, size_t len, uint32_t tag, uint32_t want,
		   uint64_t *bad)
{
	uint8_t *buf = malloc(len);
	int fd = open(path, O_RDONLY), ret = 0;
	uint32_t v;

	*bad = off / 512;
	if (!buf || fd < 0 || pread(fd, buf, len, (off_t)off) != (ssize_t)len)
		ret = -1;
	for (size_t s = 0; !ret && s < len; s += 512) {
		if (eng_decode(buf + s, tag, off + s, &v) || v != want) {
			*bad = (off + s) / 512;
			ret = -1;
		}
	}
	if (fd >= 0)
		close(fd);
	free(buf);
	return ret;
}

int eng_start(const char *cache_path, const char *image_path, const char *name, bool background,
	      bool data_crc, struct pcache_cache **c, struct pcache_image **img, char *err,
	      size_t errlen)
{
	struct pcache_cache_opts o;
	struct pcache_attach_opts ao = { .name = name, .path = image_path, .cache_mode = -1 };
	int ret;

	eng_opts(&o, cache_path);
	o.no_background = !background;
	o.data_crc = data_crc;
	ret = pcache_cache_start(&o, c, err, errlen);
	if (ret)
		return ret;
	ret = pcache_image_attach(*c, &ao, img, err, errlen);
	if (ret) {
		pcache_cache_stop(*c, false);
		*c = NULL;
	}
	return ret;
}

int eng_write(struct pcache_image *img, uint64_t off, size_t len, uint32_t tag, uint32_t v)
{
	uint8_t *buf = malloc(len);
	int ret;

	if (!buf)
		return -ENOMEM;
	eng_fill(buf, len, tag, off, v);
	ret = pcache_image_write(img, buf, off, len, 0);
	free(buf);
	return ret;
}

int eng_stop(struct pcache_cache **c, struct pcache_image **img)
{
	int ret = 0;

	if (*img)
		pcache_image_put(*img);
	*img = NULL;
	if (*c)
		ret = pcache_cache_stop(*c, false);
	*c = NULL;
	return ret;
}

void eng_close(struct pcache_cache **c, struct pcache_image **img, const char *cache_path,
	       const char *image_path)
{
	(void)eng_stop(c, img);
	unlink(cache_path);
	unlink(image_path);
}

void eng_make_image(const char *path, uint64_t size, uint32_t tag)
{
	static uint8_t buf[1 << 16];
	uint64_t off;
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);

	if (fd < 0)
		abort();
	for (off = 0; off < size; off += sizeof(buf)) {
		size_t n = size - off < sizeof(buf) ? (size_t)(size - off) : sizeof(buf);

		eng_fill(buf, n, tag, off, 0);
		if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n)
			abort();
	}
	close(fd);
}

struct rd {
	pthread_mutex_t m;
	pthread_cond_t cv;
	bool done;
	int st;
};

static void rd_done(void *p, int st)
{
	struct rd *r = p;

	pthread_mutex_lock(&r->m);
	r->st = st;
	r->done = true;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->m);
}

int eng_read(struct pcache_image *img, void *buf, uint64_t off, size_t len)
{
	struct rd r = { .m = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
	int ret = pcache_image_read(img, buf, off, len, rd_done, &r);

	if (ret != PCACHE_IO_PENDING)
		return ret;
	pthread_mutex_lock(&r.m);
	while (!r.done)
		pthread_cond_wait(&r.cv, &r.m);
	pthread_mutex_unlock(&r.m);
	pthread_mutex_destroy(&r.m);
	pthread_cond_destroy(&r.cv);
	return r.st;
}

uint32_t eng_seed(const char *test)
{
	const char *s = getenv("PCACHE_SEED");
	uint32_t seed;

	if (s && *s)
		seed = (uint32_t)strtoul(s, NULL, 0);
	else
		seed = (uint32_t)time(NULL) ^ (uint32_t)getpid() * 2654435761u;
	fprintf(stderr, "%s: seed %u (PCACHE_SEED=%u reproduces)\n", test, seed, seed);
	return seed;
}

void eng_opts(struct pcache_cache_opts *o, const char *path)
{
	memset(o, 0, sizeof(*o));
	o->path = path;
	o->gc_percent = -1;
}
