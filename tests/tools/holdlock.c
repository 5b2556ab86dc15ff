/*
 * holdlock.c -- open a cache device through the cache_dev API (taking its exclusive lock) and
 * hold it until killed. Behaviour tests use it to stand in for a mounted pcachefs.
 *
 *   holdlock DEVICE      prints "locked <pid>" once the device is open and locked, then sleeps
 *
 * Exit status: 1 if the open fails (the error is printed), otherwise it never exits by itself.
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "pcache/cache_dev.h"

int main(int argc, char **argv)
{
	struct pcache_cache_dev_opts o = { 0 };
	struct pcache_cache_dev *cd;
	char err[512];
	int rc;

	if (argc != 2) {
		fprintf(stderr, "usage: holdlock DEVICE\n");
		return 2;
	}
	o.path = argv[1];
	rc = pcache_cache_dev_open(&o, &cd, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "holdlock: %s\n", err);
		return 1;
	}
	printf("locked %d\n", (int)getpid());
	fflush(stdout);
	for (;;)
		pause();
}
