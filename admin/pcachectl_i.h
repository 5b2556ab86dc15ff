/*
 * pcachectl_i.h -- private interface of the admin command pcachectl (the files of admin/).
 *
 * Depends only on include/pcache/ (cache_dev.h, format.h, util.h) and libc.
 *
 * pcachectl is a client of the engine's public API only: it is not a FUSE program (the mounted
 * commands read and write the control tree's files).
 *
 * ADDING A SUBCOMMAND: write admin/<name>.c defining
 *     const struct pcachectl_cmd pcachectl_cmd_<name> = { "<name>", <fn>, "<usage>", "<help>" };
 * declare it below and add `&pcachectl_cmd_<name>` to the table in admin/main.c.
 *
 * EXIT STATUS (every command): PCACHECTL_OK 0; PCACHECTL_REPAIRABLE 1 (check: damaged slots,
 * repaired with --repair; format: refused to overwrite without --force); PCACHECTL_CORRUPT 2
 * (not a valid pcachefs cache: corrupt, foreign, blank, newer version); PCACHECTL_ERROR 3
 * (usage, I/O error, device locked).
 */
#ifndef PCACHECTL_I_H
#define PCACHECTL_I_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "pcache/cache_dev.h"

enum { PCACHECTL_OK = 0, PCACHECTL_REPAIRABLE = 1, PCACHECTL_CORRUPT = 2, PCACHECTL_ERROR = 3 };

struct pcachectl_cmd {
	const char *name;
	/* argv[0] is the command name; returns an exit status above */
	int (*run)(int argc, char **argv);
	const char *usage;   /* "format [OPTIONS] DEVICE" */
	const char *help;    /* description and options, printed by --help */
};

/* Print the command's usage and help to f. */
void pcachectl_print_help(FILE *f, const struct pcachectl_cmd *cmd);
/* Usage error: print "pcachectl <cmd>: <msg>" and a hint to stderr; returns PCACHECTL_ERROR. */
int pcachectl_usage_error(const struct pcachectl_cmd *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Sizes and mode names: pcache_parse_size(), pcache_fmt_size(), pcache_mode_name() (util.h). */
/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (37 bytes with the NUL). */
const char *pcachectl_fmt_uuid(const uint8_t uuid[16], char *buf, size_t len);
const char *pcachectl_state_name(uint32_t state);

/*
 * Open a device for inspection (read-only, shared lock unless no_lock) or for repair
 * (read-write, exclusive lock). On failure prints "pcachectl: DEVICE: <error>" and returns the
 * exit status (PCACHECTL_CORRUPT or PCACHECTL_ERROR); 0 and *cd on success.
 */
int pcachectl_open(const char *path, bool read_write, bool no_lock, struct pcache_cache_dev **cd);
/* The exit status an open error maps to. */
int pcachectl_open_status(int rc);

/* JSON output helpers: a string with escapes. */
void pcachectl_json_str(FILE *f, const char *s);

/* ---- JSON input (json.c): status.json of a live mount ----------------------------- */

enum pcachectl_json_type {
	PCACHECTL_JSON_NULL, PCACHECTL_JSON_BOOL, PCACHECTL_JSON_NUMBER, PCACHECTL_JSON_STRING,
	PCACHECTL_JSON_ARRAY, PCACHECTL_JSON_OBJECT,
};

struct pcachectl_json {
	enum pcachectl_json_type type;
	char *key;                      /* member name inside an object, else NULL */
	char *str;                      /* STRING */
	double num;                     /* NUMBER */
	uint64_t u64;                   /* NUMBER, exact when is_u64 (a non-negative integer) */
	bool is_u64, b;                 /* b: BOOL */
	struct pcachectl_json *child;   /* ARRAY elements or OBJECT members, n of them */
	size_t n, cap;
};

/* Parse a NUL-terminated text. 0 and *out (free with pcachectl_json_free), or -EINVAL/-ENOMEM. */
int pcachectl_json_parse(const char *text, struct pcachectl_json **out);
void pcachectl_json_free(struct pcachectl_json *v);
/* Member key of an object (NULL if obj is not an object or has no such member). */
const struct pcachectl_json *pcachectl_json_get(const struct pcachectl_json *obj, const char *key);
/* Member key as an exact unsigned integer / a string; dflt when missing or of another type. */
uint64_t pcachectl_json_u64(const struct pcachectl_json *obj, const char *key, uint64_t dflt);
const char *pcachectl_json_s(const struct pcachectl_json *obj, const char *key, const char *dflt);

/* ---- progress line (progress.c): one for every long command ---------------------- */

/*
 * A progress line on stderr. On a terminal: one line redrawn in place (a bar, percent, bytes
 * left, rate and ETA), at most 5 times a second. Off a terminal: nothing, or with log set a
 * plain line every 2 s (a log file then shows that the command is alive). quiet: nothing at all.
 */
struct pcachectl_progress {
	const char *label;     /* "flush", "writeback" */
	bool tty, log, drawn;
	uint64_t start_ns, last_ns;
};

void pcachectl_progress_start(struct pcachectl_progress *p, const char *label, bool quiet, bool log);
/* done of total bytes so far; extra (may be NULL) is appended ("3/8 ksets"). final: draw now. */
void pcachectl_progress_update(struct pcachectl_progress *p, uint64_t done, uint64_t total,
			       const char *extra, bool final);
/* End the line (a newline on a terminal if anything was drawn). */
void pcachectl_progress_end(struct pcachectl_progress *p);
/* The line itself, without label: "[####....]  42%  1.2 MiB left, 3 MiB/s, ETA 0:04". */
void pcachectl_progress_format(char *buf, size_t len, uint64_t done, uint64_t total,
			       uint64_t elapsed_ns, bool bar);

/* ---- live mounts (live.c) -------------------------------------------------------- */

/*
 * Exit status of the commands that work on a mounted file system (status, flush): 0 success,
 * PCACHECTL_FAILED (1) refused or failed (one line on stderr), PCACHECTL_ERROR (3) usage.
 */
enum { PCACHECTL_FAILED = 1 };

/* The commands. */
extern const struct pcachectl_cmd pcachectl_cmd_format;
extern const struct pcachectl_cmd pcachectl_cmd_info;
extern const struct pcachectl_cmd pcachectl_cmd_check;
extern const struct pcachectl_cmd pcachectl_cmd_dump;
extern const struct pcachectl_cmd pcachectl_cmd_status;
extern const struct pcachectl_cmd pcachectl_cmd_flush;
extern const struct pcachectl_cmd pcachectl_cmd_give_up;
extern const struct pcachectl_cmd pcachectl_cmd_writeback;

#endif
