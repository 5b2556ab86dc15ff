/*
 * cachedev_image.c -- add, rename or remove an image entry of a cache device through the
 * cache_dev API (the image table is otherwise edited by a running pcachefs). Behaviour tests use
 * it to give pcachectl an image table to show.
 *
 *   cachedev_image DEVICE add NAME PATH [SIZE]     prints "slot S id I"
 *   cachedev_image DEVICE rename OLD NEW
 *   cachedev_image DEVICE remove NAME
 *
 * Exit status: 0 done, 1 the API refused (the error is printed), 2 usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pcache/cache_dev.h"

int main(int argc, char **argv)
{
	struct pcache_cache_dev_opts o = { 0 };
	struct pcache_image_ent e;
	struct pcache_cache_dev *cd;
	char err[512];
	int rc;

	if (argc < 4) {
		fprintf(stderr, "usage: cachedev_image DEVICE add NAME PATH [SIZE] | rename OLD NEW | remove NAME\n");
		return 2;
	}
	o.path = argv[1];
	rc = pcache_cache_dev_open(&o, &cd, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "cachedev_image: %s\n", err);
		return 1;
	}
	memset(&e, 0, sizeof(e));
	if (!strcmp(argv[2], "add") && argc >= 5) {
		snprintf(e.name, sizeof(e.name), "%s", argv[3]);
		snprintf(e.path, sizeof(e.path), "%s", argv[4]);
		e.size = argc > 5 ? strtoull(argv[5], NULL, 0) : 1ull << 30;
		e.lbs = 512;
		e.file_mode = 0600;
		rc = pcache_cache_dev_image_add(cd, &e);
		if (!rc)
			printf("slot %u id %u\n", e.slot, e.id);
	} else if (!strcmp(argv[2], "rename") && argc == 5) {
		rc = pcache_cache_dev_image_find(cd, argv[3], &e);
		if (!rc) {
			snprintf(e.name, sizeof(e.name), "%s", argv[4]);
			rc = pcache_cache_dev_image_update(cd, &e);
		}
	} else if (!strcmp(argv[2], "remove") && argc == 4) {
		rc = pcache_cache_dev_image_find(cd, argv[3], &e);
		if (!rc)
			rc = pcache_cache_dev_image_remove(cd, e.slot);
	} else {
		pcache_cache_dev_close(cd);
		fprintf(stderr, "cachedev_image: bad command\n");
		return 2;
	}
	pcache_cache_dev_close(cd);
	if (rc) {
		fprintf(stderr, "cachedev_image: %s %s: %s\n", argv[2], argv[3], strerror(-rc));
		return 1;
	}
	return 0;
}
