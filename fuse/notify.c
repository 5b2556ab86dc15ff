/*
 * notify.c -- readiness, status and watchdog notifications to the service manager (systemd's
 * Type=notify protocol): READY=1 once the mount is live, STATUS= lines with the dirty level and
 * the images, STOPPING=1 when the daemon starts to stop, WATCHDOG=1 every WATCHDOG_USEC/2.
 *
 * libsystemd's sd_notify() sends each message (one datagram of newline-separated VAR=VALUE
 * fields to the unix socket named by $NOTIFY_SOCKET); systemd tells the sender by the
 * credentials the kernel attaches, so no reply is read and a failed send only costs one log
 * line. Without $NOTIFY_SOCKET every call is a no-op. fdstore.c uses the same socket to keep
 * the FUSE connection in the manager's fd store.
 *
 * Invariants:
 *  1. READY=1 is sent only after the mount is live, which is after the engine replayed its log
 *     and every image is attached (main.c calls pfs_notify_ready() after the mount), and before
 *     the daemonizing parent exits, so a manager never sees the parent go before the child that
 *     replaces it announced itself (MAINPID=).
 *  2. The watchdog is fed by the status thread after it read the engine's status: an engine
 *     wedged on its locks stops the pings and the manager restarts the service. Once stopping
 *     (a drain may take minutes) the thread pings without asking the engine.
 *  3. WATCHDOG_PID, when set, must be this process: a watchdog meant for another process (the
 *     parent before a fork) is not fed (sd_watchdog_enabled() checks it).
 *
 * State: off -> pfs_notify_init(): on -> pfs_notify_ready(): thread running ->
 * pfs_notify_stopping(): thread pings only -> pfs_notify_exit(): thread joined, off.
 */
#include "daemon_i.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#define NOTIFY_STATUS_PERIOD_NS (10ull * 1000000000u)  /* STATUS= refresh (a status read walks the index) */

static struct {
	bool on;
	uint64_t watchdog_ns;      /* 0 = no watchdog */
	bool send_failed;          /* logged once */
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t mu;        /* guards stop, stopping */
	pthread_cond_t cv;
	bool stop, stopping;
	char last_status[256];     /* thread only */
} nt = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void notify_send(const char *msg)
{
	int ret;

	if (!nt.on)
		return;
	ret = sd_notify(0, msg);
	if (ret < 0 && !nt.send_failed) {
		nt.send_failed = true;
		pfs_log(LOG_WARNING, "NOTIFY_SOCKET: send: %s", strerror(-ret));
	}
}

void pfs_notify(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	if (!nt.on)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	notify_send(buf);
}

int pfs_notify_init(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	uint64_t us = 0;

	if (!path || !*path)
		return 0;
	if ((path[0] != '/' && path[0] != '@') || strlen(path) >= 108) {
		pfs_log(LOG_WARNING, "NOTIFY_SOCKET '%s' is not a socket path or @name: not notifying", path);
		return -EINVAL;
	}
	if (pthread_cond_init(&nt.cv, NULL) != 0)
		return -ENOMEM;
	nt.on = true;
	/* > 0 only when WATCHDOG_USEC is set and WATCHDOG_PID, if set, names this process */
	if (sd_watchdog_enabled(0, &us) > 0)
		nt.watchdog_ns = us * 1000u;
	return 0;
}

/* "STATUS=..." from the engine's state. */
static void status_line(char *buf, size_t len)
{
	struct pcache_cache_status cs;

	memset(&cs, 0, sizeof(cs));
	pcache_cache_get_status(pfs.cache, &cs);
	snprintf(buf, len, "STATUS=serving %u image%s on %s, cache %u%% dirty (%" PRIu64 " MiB)", cs.images,
		 cs.images == 1 ? "" : "s", pfs.opts->mountpoint, cs.dirty_percent, cs.dirty_bytes >> 20);
}

/* The status thread: refreshes STATUS= and feeds the watchdog until pfs_notify_exit(). */
static void *notify_main(void *arg)
{
	uint64_t period = NOTIFY_STATUS_PERIOD_NS, next;
	char status[256], msg[300];

	(void)arg;
	if (nt.watchdog_ns && nt.watchdog_ns / 2 < period)
		period = nt.watchdog_ns / 2;
	pthread_mutex_lock(&nt.mu);
	next = pcache_now_ns() + period;
	while (!nt.stop) {
		bool stopping;

		if (pcache_cond_wait_until(&nt.cv, &nt.mu, next) != ETIMEDOUT)
			continue;   /* woken (stop, stopping) or spurious: re-check, same deadline */
		next += period;
		stopping = nt.stopping;
		pthread_mutex_unlock(&nt.mu);
		status[0] = '\0';
		if (!stopping)
			status_line(status, sizeof(status));
		if (status[0] && strcmp(status, nt.last_status) != 0) {
			snprintf(msg, sizeof(msg), "%s%s", nt.watchdog_ns ? "WATCHDOG=1\n" : "", status);
			snprintf(nt.last_status, sizeof(nt.last_status), "%s", status);
			notify_send(msg);
		} else if (nt.watchdog_ns) {
			notify_send("WATCHDOG=1");
		}
		pthread_mutex_lock(&nt.mu);
	}
	pthread_mutex_unlock(&nt.mu);
	return NULL;
}

void pfs_notify_ready(bool daemonized)
{
	char status[256];

	if (!nt.on)
		return;
	status_line(status, sizeof(status));
	snprintf(nt.last_status, sizeof(nt.last_status), "%s", status);
	if (daemonized)
		pfs_notify("READY=1\nMAINPID=%ld\n%s", (long)getpid(), status);
	else
		pfs_notify("READY=1\n%s", status);
	if (pthread_create(&nt.thread, NULL, notify_main, NULL) == 0)
		nt.thread_started = true;
	else
		pfs_log(LOG_WARNING, "cannot start the status thread: no STATUS= updates, no watchdog");
}

void pfs_notify_stopping(void)
{
	if (!nt.on)
		return;
	pthread_mutex_lock(&nt.mu);
	nt.stopping = true;
	pthread_mutex_unlock(&nt.mu);
	pfs_notify("STOPPING=1\nSTATUS=stopping %s: unmounting, persisting the cache%s", pfs.opts->mountpoint,
		   pfs.opts->drain_on_exit ? ", writing back all dirty data" : "");
}

void pfs_notify_exit(void)
{
	if (!nt.on)
		return;
	if (nt.thread_started) {
		pthread_mutex_lock(&nt.mu);
		nt.stop = true;
		pthread_cond_signal(&nt.cv);
		pthread_mutex_unlock(&nt.mu);
		pthread_join(nt.thread, NULL);
		nt.thread_started = false;
	}
	pthread_cond_destroy(&nt.cv);
	nt.on = false;
}
