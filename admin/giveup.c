/*
 * giveup.c -- `pcachectl give-up MOUNTPOINT NAME --yes`: drop the dirty data of an
 * image whose backing failed for good, so the writeback of the other images goes on.
 *
 * The daemon does it (.pcache/give_up takes "NAME confirm"); this command only insists on the
 * confirmation flag and reports. The image is detached and forgotten by the cache; its backing
 * keeps the crash-consistent state the writeback had reached. Exit status: 0 done, 1 refused
 * (no confirmation, not a pcachefs mount, unknown or open image: one line), 3 usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcachectl_i.h"

static int giveup_run(int argc, char **argv);

const struct pcachectl_cmd pcachectl_cmd_give_up = {
	.name = "give-up",
	.run = giveup_run,
	.usage = "give-up --yes MOUNTPOINT NAME",
	.help = "Give up the dirty data of image NAME of a mounted pcachefs: what the cache holds of\n"
		"it and never wrote to its backing is dropped, the image is detached and forgotten,\n"
		"and the writeback of the other images goes on. For a backing that failed for good\n"
		"(a dead disk) or is gone; its backing keeps the crash-consistent state the writeback\n"
		"had reached. The image must not be open. Needs root.\n\n"
		"options:\n"
		"  --yes      required: confirms that the dirty data of NAME is lost\n\n"
		"exit status: 0 done, 1 refused or failed, 3 usage error.\n",
};

static int giveup_run(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "yes", no_argument, NULL, 'y' },
		{ NULL, 0, NULL, 0 },
	};
	const struct pcachectl_cmd *cmd = &pcachectl_cmd_give_up;
	char path[4096], line[256];
	bool yes = false;
	struct stat st;
	ssize_t n;
	int c, fd, err = 0;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		if (c == 'y')
			yes = true;
		else
			return pcachectl_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
	}
	if (optind != argc - 2)
		return pcachectl_usage_error(cmd, "expected MOUNTPOINT and NAME");
	if (strlen(argv[optind + 1]) >= sizeof(line) - 16)
		return pcachectl_usage_error(cmd, "image name too long");
	if (!yes) {
		fprintf(stderr, "pcachectl give-up: refusing without --yes: the dirty data of image %s "
			"would be lost\n", argv[optind + 1]);
		return PCACHECTL_FAILED;
	}
	snprintf(path, sizeof(path), "%s/.pcache/give_up", argv[optind]);
	if (stat(path, &st) != 0) {
		fprintf(stderr, "pcachectl give-up: %s: not a pcachefs mount\n", argv[optind]);
		return PCACHECTL_FAILED;
	}
	snprintf(line, sizeof(line), "%s confirm\n", argv[optind + 1]);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		err = errno;
	} else {
		n = write(fd, line, strlen(line));
		if (n < 0)
			err = errno;
		close(fd);
	}
	if (err) {
		fprintf(stderr, "pcachectl give-up: %s: image %s: %s%s\n", argv[optind], argv[optind + 1],
			strerror(err), err == EINVAL ? " (no such image?)" : err == EBUSY ? " (open?)" : "");
		return PCACHECTL_FAILED;
	}
	printf("gave up the dirty data of image %s; it is detached and forgotten\n", argv[optind + 1]);
	return PCACHECTL_OK;
}
