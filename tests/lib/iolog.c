/*
 * iolog.c -- read an fio iolog (see iolog.h).
 */
#include <errno.h>
#include <string.h>

#include "iolog.h"

int iolog_open(struct iolog *l, const char *path, const char *prog)
{
	char line[64];

	l->f = fopen(path, "r");
	if (!l->f) {
		fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
		return -1;
	}
	if (!fgets(line, sizeof(line), l->f) || (strncmp(line, "fio version 2 iolog", 19) &&
						strncmp(line, "fio version 3 iolog", 19))) {
		fprintf(stderr, "%s: %s: not an fio version 2 or 3 iolog\n", prog, path);
		fclose(l->f);
		l->f = NULL;
		return -1;
	}
	l->v3 = line[12] == '3';
	return 0;
}

int iolog_next(struct iolog *l, struct iolog_op *op)
{
	char line[4096 + 128], act[32];
	unsigned long long off, len;

	while (fgets(line, sizeof(line), l->f)) {
		if (l->v3 ? sscanf(line, "%*u %4095s %31s %llu %llu", op->file, act, &off, &len) != 4 :
			    sscanf(line, "%4095s %31s %llu %llu", op->file, act, &off, &len) != 4)
			continue; /* add / open / close / wait lines */
		if (!strcmp(act, "read"))
			op->kind = IOLOG_READ;
		else if (!strcmp(act, "write"))
			op->kind = IOLOG_WRITE;
		else if (!strcmp(act, "trim"))
			op->kind = IOLOG_TRIM;
		else
			continue;
		op->off = off;
		op->len = len;
		return 1;
	}
	return 0;
}

void iolog_close(struct iolog *l)
{
	if (l->f)
		fclose(l->f);
	l->f = NULL;
}
