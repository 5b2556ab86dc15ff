/*
 * util.c -- CRC32C, the clock and timed waits, and the log (see include/pcache/util.h).
 *
 * CRC32C: the CPU's instruction when the build has a fast path for the architecture
 * (core/crc32c_<arch>.c: SSE4.2 on x86-64) and the CPU running it has the instruction, asked
 * once at run time; otherwise a portable byte-wise table, here (slicing is not worth it: every
 * x86-64 server we run on has SSE4.2). Both compute the raw reflected CRC with no pre/post
 * inversion, so results match dm-pcache's crc32c(seed, ...) for the same seed. Measured in
 * make bench (engine rows). A test hook (pcache_crc32c_set_impl) forces either path.
 *
 * Log: one hook for the whole process. The rate limit keeps, per format string (its address:
 * every call site passes a literal), the start of its current interval and the lines taken and
 * dropped in it, in a small table; when the table is full the entry idle longest is reused
 * (its count of dropped lines is then lost). The lock covers the table only: formatting and
 * the hook run outside it.
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "crc32c_i.h"
#include "pcache/format.h"
#include "pcache/util.h"

static uint32_t crc_table[256];
static pcache_crc32c_fn crc_hw;                /* written once, in crc_init */
static _Atomic(pcache_crc32c_fn) crc_fn;       /* what pcache_crc32c() calls */
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
	uint32_t i, j, r;

	for (i = 0; i < 256; i++) {
		r = i;
		for (j = 0; j < 8; j++)
			r = (r >> 1) ^ (0x82F63B78u & (0u - (r & 1)));
		crc_table[i] = r;
	}
	crc_hw = pcache_crc32c_hw_probe();
	atomic_store_explicit(&crc_fn, crc_hw ? crc_hw : pcache_crc32c_sw, memory_order_relaxed);
}

uint32_t pcache_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	pthread_once(&crc_once, crc_init);
	while (len--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return crc;
}

uint32_t pcache_crc32c(uint32_t crc, const void *buf, size_t len)
{
	pthread_once(&crc_once, crc_init);
	/* relaxed: pthread_once orders crc_init before this load; the test hook only swaps
	 * between two functions that are both ready */
	return atomic_load_explicit(&crc_fn, memory_order_relaxed)(crc, buf, len);
}

int pcache_crc32c_set_impl(enum pcache_crc_impl impl)
{
	pcache_crc32c_fn fn;

	pthread_once(&crc_once, crc_init);
	switch (impl) {
	case PCACHE_CRC_IMPL_AUTO:
		fn = crc_hw ? crc_hw : pcache_crc32c_sw;
		break;
	case PCACHE_CRC_IMPL_SW:
		fn = pcache_crc32c_sw;
		break;
	case PCACHE_CRC_IMPL_HW:
		if (!crc_hw)
			return -ENOTSUP;
		fn = crc_hw;
		break;
	default:
		return -EINVAL;
	}
	atomic_store_explicit(&crc_fn, fn, memory_order_relaxed);
	return 0;
}

bool pcache_crc32c_has_hw(void)
{
	pthread_once(&crc_once, crc_init);
	return crc_hw != NULL;
}

uint64_t pcache_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct timespec ts_of_ns(uint64_t ns)
{
	struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u) };

	return ts;
}

int pcache_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t deadline_ns)
{
	struct timespec ts = ts_of_ns(deadline_ns);

	return pthread_cond_clockwait(cv, mu, CLOCK_MONOTONIC, &ts) == ETIMEDOUT ? ETIMEDOUT : 0;
}

int pcache_cond_wait_ns(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t ns)
{
	return pcache_cond_wait_until(cv, mu, pcache_now_ns() + ns);
}

/*
 * Polls pthread_tryjoin_np() with a sleep that grows from 1 ms to 20 ms: only stops wait here,
 * so the delay does not matter, and unlike pthread_clockjoin_np() (which the thread sanitizer
 * of GCC 12 does not intercept: it then reports every thread joined so as leaked) a successful
 * tryjoin is seen by every tool as the join it is.
 */
int pcache_join_until(pthread_t t, uint64_t deadline_ns)
{
	uint64_t step = 1000000u;

	for (;;) {
		uint64_t now;
		struct timespec ts;

		if (pthread_tryjoin_np(t, NULL) == 0)
			return 0;
		now = pcache_now_ns();
		if (now >= deadline_ns)
			return ETIMEDOUT;
		ts = ts_of_ns(deadline_ns - now < step ? deadline_ns - now : step);
		nanosleep(&ts, NULL);
		if (step < 20000000u)
			step *= 2;
	}
}

/* ---- log ---------------------------------------------------------------------------------- */

#define LOG_SLOTS 32

struct log_slot {
	const char *fmt;         /* NULL = free */
	uint64_t start;          /* of its current interval */
	uint64_t last;           /* last use, for reuse of the idlest slot */
	unsigned int taken, dropped;
};

static _Atomic(pcache_log_hook_fn *) log_hook;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;   /* guards the three below */
static unsigned int log_burst = PCACHE_LOG_BURST;
static uint64_t log_interval = PCACHE_LOG_INTERVAL_NS;
static struct log_slot log_slots[LOG_SLOTS];

void pcache_set_log_hook(pcache_log_hook_fn *hook)
{
	atomic_store(&log_hook, hook);
}

void pcache_set_log_ratelimit(unsigned int burst, uint64_t interval_ns)
{
	pthread_mutex_lock(&log_lock);
	log_burst = burst;
	log_interval = interval_ns;
	memset(log_slots, 0, sizeof(log_slots));
	pthread_mutex_unlock(&log_lock);
}

static void log_deliver(int level, const char *line)
{
	pcache_log_hook_fn *hook = atomic_load(&log_hook);

	if (hook)
		hook(level, line);
	else
		fprintf(stderr, "pcache: %s\n", line);
}

/* The slot of fmt, taken (reset) if fmt has none yet (log_lock held). */
static struct log_slot *log_slot_of(const char *fmt, uint64_t now)
{
	struct log_slot *idle = &log_slots[0];

	for (int i = 0; i < LOG_SLOTS; i++) {
		struct log_slot *s = &log_slots[i];

		if (s->fmt == fmt)
			return s;
		if (!s->fmt || (idle->fmt && s->last < idle->last))
			idle = s;
	}
	idle->fmt = fmt;
	idle->start = now;
	idle->taken = idle->dropped = 0;
	return idle;
}

/* Count the line against its format's budget: true to print it; *dropped = lines to report. */
static bool log_admit(const char *fmt, unsigned int *dropped)
{
	uint64_t now = pcache_now_ns();
	struct log_slot *s;
	bool ok = true;

	*dropped = 0;
	pthread_mutex_lock(&log_lock);
	if (log_burst) {
		s = log_slot_of(fmt, now);
		s->last = now;
		if (now - s->start >= log_interval) {
			*dropped = s->dropped;
			s->start = now;
			s->taken = s->dropped = 0;
		}
		if (s->taken < log_burst) {
			s->taken++;
		} else {
			s->dropped++;
			ok = false;
		}
	}
	pthread_mutex_unlock(&log_lock);
	return ok;
}

void pcache_vlog(int level, const char *fmt, va_list ap)
{
	char line[1024];
	unsigned int dropped;
	size_t n;

	if (!log_admit(fmt, &dropped))
		return;
	if (dropped) {
		snprintf(line, sizeof(line), "%u similar messages suppressed: %s", dropped, fmt);
		log_deliver(level, line);
	}
	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	if (n && line[n - 1] == '\n')
		line[n - 1] = '\0';
	log_deliver(level, line);
}

void pcache_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	pcache_vlog(level, fmt, ap);
	va_end(ap);
}

uint64_t pcache_default_seg_size(uint64_t dev_size)
{
	uint64_t s = PCACHE_DEFAULT_SEG_SIZE;

	while (s > (4u << 20) && s * 256 > dev_size)
		s /= 2;
	return s;
}

uint32_t pcache_default_max_images(uint64_t dev_size)
{
	uint64_t n = dev_size >> 20;   /* one entry per MiB: the table takes at most 1/512 */

	n -= n % PCACHE_IMAGES_STEP;
	if (n < PCACHE_MAX_IMAGES_V1)
		return PCACHE_MAX_IMAGES_V1;
	return n > PCACHE_MAX_IMAGES ? PCACHE_MAX_IMAGES : (uint32_t)n;
}

bool pcache_max_images_valid(uint32_t n)
{
	return n >= PCACHE_MAX_IMAGES_V1 && n <= PCACHE_MAX_IMAGES && n % PCACHE_IMAGES_STEP == 0;
}

bool pcache_gc_percent_valid(uint32_t v)
{
	return v <= PCACHE_MAX_GC_PERCENT || v == PCACHE_GC_PERCENT_AUTO;
}

int pcache_parse_gc_percent(const char *s, uint32_t *out)
{
	unsigned long v;
	char *end;

	if (!strcmp(s, "auto")) {
		*out = PCACHE_GC_PERCENT_AUTO;
		return 0;
	}
	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v > PCACHE_MAX_GC_PERCENT)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

int pcache_parse_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	unsigned int shift = 0;
	char *end;

	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	switch (toupper((unsigned char)*end)) {
	case 'K': shift = 10; break;
	case 'M': shift = 20; break;
	case 'G': shift = 30; break;
	case 'T': shift = 40; break;
	default: break;
	}
	if (shift) {
		end++;
		if (*end == 'i' || *end == 'I')
			end++;
	}
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end)
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

const char *pcache_fmt_size(uint64_t v, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	unsigned int u = 0;
	double d = (double)v;

	while (d >= 1024 && u + 1 < PCACHE_ARRAY_SIZE(units)) {
		d /= 1024;
		u++;
	}
	if (u == 0 || d == (double)(uint64_t)d)
		snprintf(buf, len, "%.0f %s", d, units[u]);
	else
		snprintf(buf, len, "%.1f %s", d, units[u]);
	return buf;
}

void pcache_json_string(const char *s, void (*put)(void *arg, const char *p, size_t n), void *arg)
{
	const char *run = s;
	char esc[8];

	put(arg, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c != '"' && c != '\\' && c >= 0x20 && c != 0x7f)
			continue;
		if (s > run)
			put(arg, run, (size_t)(s - run));
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			put(arg, esc, 2);
		} else {
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			put(arg, esc, 6);
		}
		run = s + 1;
	}
	if (s > run)
		put(arg, run, (size_t)(s - run));
	put(arg, "\"", 1);
}

const char *pcache_mode_name(uint32_t mode)
{
	switch (mode) {
	case PCACHE_MODE_WRITEBACK: return "writeback";
	case PCACHE_MODE_WRITETHROUGH: return "writethrough";
	case PCACHE_MODE_WRITEAROUND: return "writearound";
	default: return "unknown";
	}
}

int pcache_mode_parse(const char *s)
{
	size_t n = strlen(s);
	uint32_t m;

	while (n && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	for (m = PCACHE_MODE_WRITEBACK; m <= PCACHE_MODE_WRITEAROUND; m++) {
		const char *name = pcache_mode_name(m);

		if (strlen(name) == n && !strncmp(s, name, n))
			return (int)m;
	}
	return -EINVAL;
}
