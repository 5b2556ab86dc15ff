/*
 * progress.c -- the progress line shared by the long pcachectl commands (writeback
 * of a device, flush of a live mount): on a terminal one line on stderr redrawn in place,
 *
 *   flush [########............]  40%  12.0 MiB left, 3.1 MiB/s, ETA 0:04
 *
 * off a terminal nothing (or, for commands that ask for it, a plain line every 2 s).
 *
 * Invariants:
 *  1. Only stderr is written, so stdout stays the command's result (a summary, JSON).
 *  2. Off a terminal no control characters are written: a log file gets whole lines or nothing.
 *  3. The rate is the average since pcachectl_progress_start(); no rate and no ETA are shown
 *     before half a second has passed or while nothing is done (they would be noise). The
 *     last line (all done) shows the rate and the time taken instead of an ETA.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "pcache/util.h"
#include "pcachectl_i.h"

#define PROGRESS_BAR_WIDTH 20
#define PROGRESS_TTY_NS 200000000ull    /* at most 5 redraws a second */
#define PROGRESS_LOG_NS 2000000000ull   /* a log line every 2 s */

void pcachectl_progress_start(struct pcachectl_progress *p, const char *label, bool quiet, bool log)
{
	memset(p, 0, sizeof(*p));
	p->label = label;
	p->tty = !quiet && isatty(STDERR_FILENO);
	p->log = !quiet && !p->tty && log;
	p->start_ns = pcache_now_ns();
}

static void fmt_eta(char *buf, size_t len, uint64_t s)
{
	if (s >= 3600)
		snprintf(buf, len, "%" PRIu64 ":%02u:%02u", s / 3600, (unsigned int)(s / 60 % 60),
			 (unsigned int)(s % 60));
	else
		snprintf(buf, len, "%u:%02u", (unsigned int)(s / 60), (unsigned int)(s % 60));
}

void pcachectl_progress_format(char *buf, size_t len, uint64_t done, uint64_t total,
			       uint64_t elapsed_ns, bool bar)
{
	char left[32], rate[32], eta[32], bars[PROGRESS_BAR_WIDTH + 3];
	unsigned int pct, fill, i;
	double secs = (double)elapsed_ns / 1e9;
	size_t n = 0;

	done = PCACHE_MIN(done, total);
	pct = total ? (unsigned int)((double)done * 100 / (double)total) : 100;
	fill = total ? (unsigned int)((double)done * PROGRESS_BAR_WIDTH / (double)total) : PROGRESS_BAR_WIDTH;
	bars[0] = '\0';
	if (bar) {
		bars[n++] = '[';
		for (i = 0; i < PROGRESS_BAR_WIDTH; i++)
			bars[n++] = i < fill ? '#' : '.';
		bars[n++] = ']';
		bars[n] = '\0';
	}
	pcache_fmt_size(total - done, left, sizeof(left));
	if (secs < 0.5 || done == 0) {
		snprintf(buf, len, "%s%s%3u%%  %s left", bars, bar ? " " : "", pct, left);
		return;
	}
	pcache_fmt_size((uint64_t)((double)done / secs), rate, sizeof(rate));
	if (done == total) {
		fmt_eta(eta, sizeof(eta), (uint64_t)(secs + 0.5));
		snprintf(buf, len, "%s%s%3u%%  %s/s, done in %s", bars, bar ? " " : "", pct, rate, eta);
		return;
	}
	fmt_eta(eta, sizeof(eta), (uint64_t)((double)(total - done) * secs / (double)done + 0.5));
	snprintf(buf, len, "%s%s%3u%%  %s left, %s/s, ETA %s", bars, bar ? " " : "", pct, left, rate, eta);
}

void pcachectl_progress_update(struct pcachectl_progress *p, uint64_t done, uint64_t total,
			       const char *extra, bool final)
{
	uint64_t now = pcache_now_ns();
	char line[160];

	if (!p->tty && !p->log)
		return;
	if (!final && p->drawn && now - p->last_ns < (p->tty ? PROGRESS_TTY_NS : PROGRESS_LOG_NS))
		return;
	p->last_ns = now;
	pcachectl_progress_format(line, sizeof(line), done, total, now - p->start_ns, p->tty);
	/* invariant 2: "\r" and the erase-to-end-of-line sequence only on a terminal */
	if (p->tty)
		fprintf(stderr, "\r%s %s%s%s\033[K", p->label, line, extra ? ", " : "", extra ? extra : "");
	else
		fprintf(stderr, "%s: %s%s%s\n", p->label, line, extra ? ", " : "", extra ? extra : "");
	fflush(stderr);
	p->drawn = true;
}

void pcachectl_progress_end(struct pcachectl_progress *p)
{
	if (p->tty && p->drawn)
		fputc('\n', stderr);
	p->drawn = false;
}
