/*
 * show.c -- `pcachectl info` (summary) and `pcachectl dump` (every record and both of
 * its slots, human-readable or --json).
 *
 * Invariants:
 *  1. Read-only: the device is opened with read_only (and a shared lock, so a mounted device is
 *     refused unless --no-lock); nothing is written.
 *  2. Values shown are the ones the loader validated; the per-slot view of dump re-reads the raw
 *     slots with pcache_cache_dev_pread() and only reports their state and sequence number.
 *  3. Every string from media is escaped in JSON output.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pcache/util.h"
#include "pcachectl_i.h"

static int info_run(int argc, char **argv);
static int dump_run(int argc, char **argv);

const struct pcachectl_cmd pcachectl_cmd_info = {
	.name = "info",
	.run = info_run,
	.usage = "info [--no-lock] DEVICE",
	.help = "Show the superblock, cache settings, log tails, store granularity and images of a\n"
		"cache device. Opens it read-only; a device in use by pcachefs is refused unless\n"
		"--no-lock is given (values may then be changing).\n\n"
		"options:\n"
		"  --no-lock   do not take the device lock\n\n"
		"exit status: 0 shown, 2 not a valid pcachefs cache, 3 error or locked.\n",
};

const struct pcachectl_cmd pcachectl_cmd_dump = {
	.name = "dump",
	.run = dump_run,
	.usage = "dump [--json] [--no-lock] DEVICE",
	.help = "Print every metadata record of a cache device with the state and sequence number of\n"
		"both of its slots, and every segment generation. Opens it read-only.\n\n"
		"options:\n"
		"  --json      machine-readable output (one JSON object)\n"
		"  --no-lock   do not take the device lock (the device may be changing)\n\n"
		"exit status: 0 dumped, 2 not a valid pcachefs cache, 3 error or locked.\n",
};

/* ---- info --------------------------------------------------------------------------------- */

static void print_info(struct pcache_cache_dev *cd, FILE *f)
{
	const struct pcache_sb_om *sb = pcache_cache_dev_sb(cd);
	struct pcache_image_ent *ents = calloc(PCACHE_MAX_IMAGES, sizeof(*ents));
	struct pcache_cache_info ci;
	struct pcache_pos kt, dt;
	char b1[32], b2[32], uuid[40];
	int n, i;

	pcache_cache_dev_get_info(cd, &ci);
	pcache_cache_dev_get_key_tail(cd, &kt);
	pcache_cache_dev_get_dirty_tail(cd, &dt);
	fprintf(f, "device:        %s\n", pcache_cache_dev_path(cd));
	fprintf(f, "size:          %s (%" PRIu64 " bytes)\n",
		pcache_fmt_size(pcache_cache_dev_size(cd), b1, sizeof(b1)), pcache_cache_dev_size(cd));
	fprintf(f, "granularity:   %s\n", pcache_cache_dev_granularity(cd));
	fprintf(f, "format:        pcachefs v%u (incompat 0x%x, compat 0x%x)\n", sb->version, sb->incompat,
		sb->compat);
	fprintf(f, "uuid:          %s\n", pcachectl_fmt_uuid(sb->uuid, uuid, sizeof(uuid)));
	fprintf(f, "segments:      %u x %s = %s, from offset %s\n", sb->seg_count,
		pcache_fmt_size(sb->seg_size, b1, sizeof(b1)),
		pcache_fmt_size((uint64_t)sb->seg_count * sb->seg_size, b2, sizeof(b2)),
		pcache_fmt_size(sb->seg_base, uuid, sizeof(uuid)));
	fprintf(f, "data crc:      %s\n", ci.flags & PCACHE_INFO_DATA_CRC ? "on" : "off");
	if (ci.gc_percent == PCACHE_GC_PERCENT_AUTO)
		fprintf(f, "gc_percent:    auto\n");
	else
		fprintf(f, "gc_percent:    %u\n", ci.gc_percent);
	fprintf(f, "dirty:         high %u%%, low %u%%\n", ci.dirty_high, ci.dirty_low);
	if (ci.wb_rate)
		fprintf(f, "wb_rate:       %s/s\n", pcache_fmt_size(ci.wb_rate, b1, sizeof(b1)));
	else
		fprintf(f, "wb_rate:       unlimited\n");
	fprintf(f, "next image id: %u\n", ci.next_image_id);
	fprintf(f, "key_tail:      segment %u offset %u lsn %" PRIu64 "\n", kt.seg, kt.off, kt.lsn);
	fprintf(f, "dirty_tail:    segment %u offset %u lsn %" PRIu64 "\n", dt.seg, dt.off, dt.lsn);
	fprintf(f, "damaged slots: %u%s\n", pcache_cache_dev_damaged(cd),
		pcache_cache_dev_damaged(cd) ? " (run 'pcachectl check')" : "");
	n = ents ? pcache_cache_dev_images(cd, ents, PCACHE_MAX_IMAGES) : 0;
	fprintf(f, "images:        %d of %u\n", n, pcache_cache_dev_max_images(cd));
	if (n)
		fprintf(f, "  %-4s %-4s %-20s %-9s %-12s %-10s %-6s %s\n", "SLOT", "ID", "NAME", "STATE",
			"MODE", "SIZE", "LBS", "PATH");
	for (i = 0; i < n; i++)
		fprintf(f, "  %-4u %-4u %-20s %-9s %-12s %-10s %-6u %s\n", ents[i].slot, ents[i].id,
			ents[i].name, pcachectl_state_name(ents[i].state),
			pcache_mode_name(ents[i].cache_mode),
			pcache_fmt_size(ents[i].size, b1, sizeof(b1)), ents[i].lbs, ents[i].path);
	free(ents);
}

/* Shared option parsing of info and dump: --json (dump only), --no-lock. */
static int show_opts(const struct pcachectl_cmd *cmd, int argc, char **argv, bool allow_json,
		     bool *json, bool *no_lock, const char **path)
{
	static const struct option lopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "no-lock", no_argument, NULL, 'n' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		if (c == 'j' && allow_json)
			*json = true;
		else if (c == 'n')
			*no_lock = true;
		else
			return pcachectl_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
	}
	if (optind != argc - 1)
		return pcachectl_usage_error(cmd, optind == argc ? "no DEVICE given" : "more than one DEVICE given");
	*path = argv[optind];
	return PCACHECTL_OK;
}

static int info_run(int argc, char **argv)
{
	struct pcache_cache_dev *cd;
	bool json = false, no_lock = false;
	const char *path;
	int rc;

	rc = show_opts(&pcachectl_cmd_info, argc, argv, false, &json, &no_lock, &path);
	if (rc)
		return rc;
	rc = pcachectl_open(path, false, no_lock, &cd);
	if (rc)
		return rc;
	print_info(cd, stdout);
	pcache_cache_dev_close(cd);
	return PCACHECTL_OK;
}

/* ---- dump --------------------------------------------------------------------------------- */

struct slot_view {
	const char *state; /* "valid", "blank", "bad CRC", "wrong type", "bad length", "unreadable" */
	uint64_t seq;
};

static void slot_view(struct pcache_cache_dev *cd, uint64_t off, uint16_t type, uint16_t len,
		      struct slot_view *v)
{
	uint8_t buf[PCACHE_SB_SLOT_SIZE];
	const struct pcache_rec_hdr_om *h = (const void *)buf;
	uint16_t i;

	v->seq = 0;
	if (pcache_cache_dev_pread(cd, buf, len, off)) {
		v->state = "unreadable";
		return;
	}
	for (i = 0; i < len && !buf[i]; i++)
		;
	if (i == len) {
		v->state = "blank";
		return;
	}
	v->seq = pcache_le64(&h->seq);
	if (pcache_le16(&h->type) != type)
		v->state = "wrong type";
	else if (pcache_le16(&h->len) != len)
		v->state = "bad length";
	else if (pcache_le32(&h->crc) != pcache_crc32c(PCACHE_CRC_SEED, buf + 4, len - 4u))
		v->state = "bad CRC";
	else
		v->state = "valid";
}

static void slot_pair(struct pcache_cache_dev *cd, uint64_t off0, uint64_t off1, uint16_t type,
		      uint16_t len, struct slot_view v[2])
{
	slot_view(cd, off0, type, len, &v[0]);
	slot_view(cd, off1, type, len, &v[1]);
}

static void text_slots(FILE *f, const char *name, const struct slot_view v[2])
{
	int i;

	fprintf(f, "  %-22s", name);
	for (i = 0; i < 2; i++) {
		char s[48];

		if (!strcmp(v[i].state, "blank"))
			snprintf(s, sizeof(s), "blank");
		else
			snprintf(s, sizeof(s), "%s seq %" PRIu64, v[i].state, v[i].seq);
		fprintf(f, i ? "  slot %d: %s\n" : "  slot %d: %-22s", i, s);
	}
}

static void json_slots(FILE *f, const struct slot_view v[2])
{
	fprintf(f, "\"slots\": [{\"state\": \"%s\", \"seq\": %" PRIu64 "}, {\"state\": \"%s\", \"seq\": %" PRIu64 "}]",
		v[0].state, v[0].seq, v[1].state, v[1].seq);
}

static void json_report(void *arg, const char *line)
{
	int *first = arg;

	fputs(*first ? "\n    " : ",\n    ", stdout);
	*first = 0;
	pcachectl_json_str(stdout, line);
}

static void text_report(void *arg, const char *line)
{
	(void)arg;
	printf("  %s\n", line);
}

static void dump_json(struct pcache_cache_dev *cd)
{
	const struct pcache_sb_om *sb = pcache_cache_dev_sb(cd);
	struct pcache_image_ent *ents = calloc(PCACHE_MAX_IMAGES, sizeof(*ents));
	struct pcache_cache_info ci;
	struct pcache_pos kt, dt;
	struct slot_view v[2];
	char uuid[40], b1[16];
	uint32_t i, count = pcache_cache_dev_seg_count(cd), maxi = pcache_cache_dev_max_images(cd);
	int n, j, first = 1;
	FILE *f = stdout;

	pcache_cache_dev_get_info(cd, &ci);
	pcache_cache_dev_get_key_tail(cd, &kt);
	pcache_cache_dev_get_dirty_tail(cd, &dt);
	fprintf(f, "{\n  \"device\": ");
	pcachectl_json_str(f, pcache_cache_dev_path(cd));
	fprintf(f, ",\n  \"size\": %" PRIu64 ",\n  \"granularity\": \"%s\",\n", pcache_cache_dev_size(cd),
		pcache_cache_dev_granularity(cd));
	slot_pair(cd, PCACHE_SB_OFF, PCACHE_SB_OFF + PCACHE_SB_SLOT_SIZE, PCACHE_REC_SB,
		  sizeof(struct pcache_sb_om), v);
	fprintf(f, "  \"superblock\": {\"version\": %u, \"incompat\": %u, \"compat\": %u, \"uuid\": \"%s\", "
		   "\"seg_count\": %u, \"seg_size\": %" PRIu64 ", \"seg_base\": %" PRIu64 ", "
		   "\"dev_size\": %" PRIu64 ", \"max_images\": %u, \"copies\": [\"%s\", \"%s\"]},\n",
		sb->version, sb->incompat, sb->compat, pcachectl_fmt_uuid(sb->uuid, uuid, sizeof(uuid)),
		sb->seg_count, sb->seg_size, sb->seg_base, sb->dev_size, sb->max_images, v[0].state,
		v[1].state);
	slot_pair(cd, PCACHE_INFO_OFF, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, PCACHE_REC_INFO,
		  sizeof(struct pcache_cache_info_om), v);
	/* gc_percent: a number, or the string "auto" */
	if (ci.gc_percent == PCACHE_GC_PERCENT_AUTO)
		snprintf(b1, sizeof(b1), "\"auto\"");
	else
		snprintf(b1, sizeof(b1), "%u", ci.gc_percent);
	fprintf(f, "  \"cache_info\": {\"flags\": %u, \"data_crc\": %s, \"gc_percent\": %s, "
		   "\"dirty_high\": %u, \"dirty_low\": %u, \"wb_rate\": %" PRIu64 ", \"next_image_id\": %u, ",
		ci.flags, ci.flags & PCACHE_INFO_DATA_CRC ? "true" : "false", b1, ci.dirty_high,
		ci.dirty_low, ci.wb_rate, ci.next_image_id);
	json_slots(f, v);
	fprintf(f, "},\n");
	slot_pair(cd, PCACHE_KEY_TAIL_SLOT(0), PCACHE_KEY_TAIL_SLOT(1), PCACHE_REC_KEY_TAIL,
		  sizeof(struct pcache_tail_om), v);
	fprintf(f, "  \"key_tail\": {\"seg\": %u, \"off\": %u, \"lsn\": %" PRIu64 ", ", kt.seg, kt.off, kt.lsn);
	json_slots(f, v);
	fprintf(f, "},\n");
	slot_pair(cd, PCACHE_DIRTY_TAIL_SLOT(0), PCACHE_DIRTY_TAIL_SLOT(1), PCACHE_REC_DIRTY_TAIL,
		  sizeof(struct pcache_tail_om), v);
	fprintf(f, "  \"dirty_tail\": {\"seg\": %u, \"off\": %u, \"lsn\": %" PRIu64 ", ", dt.seg, dt.off, dt.lsn);
	json_slots(f, v);
	fprintf(f, "},\n  \"images\": [");
	n = ents ? pcache_cache_dev_images(cd, ents, PCACHE_MAX_IMAGES) : 0;
	for (j = 0; j < n; j++) {
		const struct pcache_image_ent *e = &ents[j];

		slot_pair(cd, PCACHE_IMAGE_SLOT(e->slot, 0), PCACHE_IMAGE_SLOT(e->slot, 1),
			  PCACHE_REC_IMAGE, sizeof(struct pcache_image_om), v);
		fprintf(f, "%s\n    {\"slot\": %u, \"id\": %u, \"name\": ", j ? "," : "", e->slot, e->id);
		pcachectl_json_str(f, e->name);
		fprintf(f, ", \"path\": ");
		pcachectl_json_str(f, e->path);
		fprintf(f, ", \"uuid\": \"%s\", \"state\": \"%s\", \"size\": %" PRIu64 ", \"lbs\": %u, "
			   "\"cache_mode\": \"%s\", \"file_mode\": \"0%o\", \"uid\": %u, \"gid\": %u, "
			   "\"wb_lsn\": %" PRIu64 ", \"wb_time\": %" PRIu64 ", ",
			pcachectl_fmt_uuid(e->uuid, uuid, sizeof(uuid)), pcachectl_state_name(e->state),
			e->size, e->lbs, pcache_mode_name(e->cache_mode), e->file_mode, e->uid, e->gid,
			e->wb_lsn, e->wb_time);
		json_slots(f, v);
		fputc('}', f);
	}
	fprintf(f, "%s],\n  \"segments\": [", n ? "\n  " : "");
	for (i = 0; i < count; i++) {
		slot_pair(cd, PCACHE_SEG_SLOT(maxi, i, 0), PCACHE_SEG_SLOT(maxi, i, 1), PCACHE_REC_SEG,
			  sizeof(struct pcache_seg_om), v);
		fprintf(f, "%s\n    {\"id\": %u, \"gen\": %" PRIu64 ", ", i ? "," : "", i,
			pcache_cache_dev_seg_gen(cd, i));
		json_slots(f, v);
		fputc('}', f);
	}
	fprintf(f, "\n  ],\n  \"damaged\": %u,\n  \"findings\": [", pcache_cache_dev_damaged(cd));
	pcache_cache_dev_check(cd, json_report, &first);
	fprintf(f, "%s]\n}\n", first ? "" : "\n  ");
	free(ents);
}

static void dump_text(struct pcache_cache_dev *cd)
{
	struct pcache_image_ent *ents = calloc(PCACHE_MAX_IMAGES, sizeof(*ents));
	struct slot_view v[2];
	char name[PCACHE_NAME_MAX + 64];
	uint32_t i, count = pcache_cache_dev_seg_count(cd), maxi = pcache_cache_dev_max_images(cd);
	int n, j;

	print_info(cd, stdout);
	printf("\nrecords (both slots; the newer valid seq is loaded):\n");
	slot_pair(cd, PCACHE_SB_OFF, PCACHE_SB_OFF + PCACHE_SB_SLOT_SIZE, PCACHE_REC_SB,
		  sizeof(struct pcache_sb_om), v);
	printf("  %-22s  copy 0: %-22s  copy 1: %s\n", "superblock", v[0].state, v[1].state);
	slot_pair(cd, PCACHE_INFO_OFF, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, PCACHE_REC_INFO,
		  sizeof(struct pcache_cache_info_om), v);
	text_slots(stdout, "cache_info", v);
	slot_pair(cd, PCACHE_KEY_TAIL_SLOT(0), PCACHE_KEY_TAIL_SLOT(1), PCACHE_REC_KEY_TAIL,
		  sizeof(struct pcache_tail_om), v);
	text_slots(stdout, "key_tail", v);
	slot_pair(cd, PCACHE_DIRTY_TAIL_SLOT(0), PCACHE_DIRTY_TAIL_SLOT(1), PCACHE_REC_DIRTY_TAIL,
		  sizeof(struct pcache_tail_om), v);
	text_slots(stdout, "dirty_tail", v);
	n = ents ? pcache_cache_dev_images(cd, ents, PCACHE_MAX_IMAGES) : 0;
	for (j = 0; j < n; j++) {
		slot_pair(cd, PCACHE_IMAGE_SLOT(ents[j].slot, 0), PCACHE_IMAGE_SLOT(ents[j].slot, 1),
			  PCACHE_REC_IMAGE, sizeof(struct pcache_image_om), v);
		snprintf(name, sizeof(name), "image %u (%s)", ents[j].slot, ents[j].name);
		text_slots(stdout, name, v);
	}
	printf("\nsegments (generation, slots):\n");
	for (i = 0; i < count; i++) {
		slot_pair(cd, PCACHE_SEG_SLOT(maxi, i, 0), PCACHE_SEG_SLOT(maxi, i, 1), PCACHE_REC_SEG,
			  sizeof(struct pcache_seg_om), v);
		snprintf(name, sizeof(name), "segment %u gen %" PRIu64, i, pcache_cache_dev_seg_gen(cd, i));
		text_slots(stdout, name, v);
	}
	if (pcache_cache_dev_damaged(cd)) {
		printf("\nfindings:\n");
		pcache_cache_dev_check(cd, text_report, NULL);
	}
	free(ents);
}

static int dump_run(int argc, char **argv)
{
	struct pcache_cache_dev *cd;
	bool json = false, no_lock = false;
	const char *path;
	int rc;

	rc = show_opts(&pcachectl_cmd_dump, argc, argv, true, &json, &no_lock, &path);
	if (rc)
		return rc;
	rc = pcachectl_open(path, false, no_lock, &cd);
	if (rc)
		return rc;
	if (json)
		dump_json(cd);
	else
		dump_text(cd);
	pcache_cache_dev_close(cd);
	return PCACHECTL_OK;
}
