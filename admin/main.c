/*
 * main.c -- pcachectl, the pcachefs admin command: dispatch, help, and helpers shared by the
 * subcommands (admin/<cmd>.c).
 *
 *   pcachectl format|info|check|dump|writeback [OPTIONS] DEVICE   (see contrib/pcachectl.8)
 *   pcachectl status|flush [OPTIONS] MOUNTPOINT                    (a mounted pcachefs)
 *
 * Invariants:
 *  1. Every subcommand is one entry of cmds[] (struct pcachectl_cmd); help, dispatch and the
 *     command list all come from that table.
 *  2. Exit status is one of PCACHECTL_OK/REPAIRABLE/CORRUPT/ERROR (pcachectl_i.h) for every
 *     command, so scripts can tell "fix it" from "broken" from "you called it wrong".
 *  3. Inspection opens read-only with a shared lock: it never runs against a mounted (locked)
 *     device unless --no-lock is given where allowed (dump, info).
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pcache/util.h"
#include "pcachectl_i.h"

#define PCACHECTL_VERSION "pcachectl (pcachefs) 1.0, on-media format v1"

static const struct pcachectl_cmd *const *cmds_table(void)
{
	static const struct pcachectl_cmd *cmds[10];
	size_t n = 0;

	if (!cmds[0]) {
		cmds[n++] = &pcachectl_cmd_format;
		cmds[n++] = &pcachectl_cmd_info;
		cmds[n++] = &pcachectl_cmd_check;
		cmds[n++] = &pcachectl_cmd_dump;
		cmds[n++] = &pcachectl_cmd_writeback;
		cmds[n++] = &pcachectl_cmd_status;
		cmds[n++] = &pcachectl_cmd_flush;
		cmds[n++] = &pcachectl_cmd_give_up;
		cmds[n] = NULL;
	}
	return cmds;
}

static const struct pcachectl_cmd *find_cmd(const char *name)
{
	const struct pcachectl_cmd *const *c;

	for (c = cmds_table(); *c; c++)
		if (!strcmp((*c)->name, name))
			return *c;
	return NULL;
}

static void main_usage(FILE *f)
{
	const struct pcachectl_cmd *const *c;

	fprintf(f, "usage: pcachectl COMMAND [OPTIONS] DEVICE|MOUNTPOINT\n"
		   "       pcachectl COMMAND --help | pcachectl --help | pcachectl --version\n\n"
		   "Administer a pcachefs cache device (a DAX device, or a file used as one) offline,\n"
		   "or a mounted pcachefs (status, flush) through its .pcache/ control tree.\n\n"
		   "commands:\n");
	for (c = cmds_table(); *c; c++)
		fprintf(f, "  %s\n", (*c)->usage);
	fprintf(f, "\nexit status: 0 ok, 1 repairable (check), refused without --force (format), or\n"
		   "refused or failed (status, flush), 2 not a valid pcachefs cache, 3 usage or I/O\n"
		   "error or device locked.\n");
}

void pcachectl_print_help(FILE *f, const struct pcachectl_cmd *cmd)
{
	fprintf(f, "usage: pcachectl %s\n\n%s", cmd->usage, cmd->help);
}

int pcachectl_usage_error(const struct pcachectl_cmd *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "pcachectl %s: ", cmd->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nusage: pcachectl %s\n(see 'pcachectl %s --help')\n", cmd->usage, cmd->name);
	return PCACHECTL_ERROR;
}

const char *pcachectl_fmt_uuid(const uint8_t u[16], char *buf, size_t len)
{
	snprintf(buf, len, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
		 u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
		 u[15]);
	return buf;
}

const char *pcachectl_state_name(uint32_t state)
{
	switch (state) {
	case PCACHE_IMAGE_FREE:
		return "free";
	case PCACHE_IMAGE_ATTACHED:
		return "attached";
	case PCACHE_IMAGE_DETACHED:
		return "detached";
	}
	return "?";
}


int pcachectl_open_status(int rc)
{
	switch (rc) {
	case 0:
		return PCACHECTL_OK;
	case -EUCLEAN:
	case -EMEDIUMTYPE:
	case -ENODATA:
	case -EPROTONOSUPPORT:
		return PCACHECTL_CORRUPT;
	default:
		return PCACHECTL_ERROR;
	}
}

int pcachectl_open(const char *path, bool read_write, bool no_lock, struct pcache_cache_dev **cd)
{
	struct pcache_cache_dev_opts o = {
		.path = path,
		.read_only = !read_write,
		.no_lock = no_lock && !read_write,
	};
	char err[512];
	int rc;

	rc = pcache_cache_dev_open(&o, cd, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "pcachectl: %s: %s\n", path, err);
		return pcachectl_open_status(rc);
	}
	return PCACHECTL_OK;
}

static void file_put(void *arg, const char *p, size_t n)
{
	fwrite(p, 1, n, arg);
}

void pcachectl_json_str(FILE *f, const char *s)
{
	pcache_json_string(s, file_put, f);
}

int main(int argc, char **argv)
{
	const struct pcachectl_cmd *cmd;
	int i;

	if (argc < 2) {
		main_usage(stderr);
		return PCACHECTL_ERROR;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		main_usage(stdout);
		return PCACHECTL_OK;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
		printf("%s\n", PCACHECTL_VERSION);
		return PCACHECTL_OK;
	}
	if (!strcmp(argv[1], "help")) {
		if (argc < 3) {
			main_usage(stdout);
			return PCACHECTL_OK;
		}
		cmd = find_cmd(argv[2]);
		if (!cmd) {
			fprintf(stderr, "pcachectl: unknown command '%s'\n", argv[2]);
			return PCACHECTL_ERROR;
		}
		pcachectl_print_help(stdout, cmd);
		return PCACHECTL_OK;
	}
	cmd = find_cmd(argv[1]);
	if (!cmd) {
		fprintf(stderr, "pcachectl: unknown command '%s'\n\n", argv[1]);
		main_usage(stderr);
		return PCACHECTL_ERROR;
	}
	for (i = 2; i < argc && strcmp(argv[i], "--"); i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			pcachectl_print_help(stdout, cmd);
			return PCACHECTL_OK;
		}
	return cmd->run(argc - 1, argv + 1);
}
