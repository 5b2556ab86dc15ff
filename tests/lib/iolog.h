/*
 * iolog.h -- read an fio iolog (version 2, or 3 with a timestamp first on each line, as
 * fio --write_iolog writes it): the reads, writes and trims, in order (tests/tools).
 */
#ifndef PCACHE_IOLOG_H
#define PCACHE_IOLOG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum iolog_kind { IOLOG_READ, IOLOG_WRITE, IOLOG_TRIM };

struct iolog_op {
	char file[4096];
	enum iolog_kind kind;
	uint64_t off, len;
};

struct iolog {
	FILE *f;
	bool v3;
};

/* Open path and check its header: 0, or -1 with a message on stderr (prog: its prefix). */
int iolog_open(struct iolog *l, const char *path, const char *prog);
/* The next read, write or trim (other lines are skipped): 1, or 0 at the end. */
int iolog_next(struct iolog *l, struct iolog_op *op);
void iolog_close(struct iolog *l);

#endif
