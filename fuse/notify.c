/*
 * notify.c -- readiness, status and watchdog notifications to the service manager (systemd's
 * Type=notify protocol): READY=1 once the mount is live, STATUS= lines with the dirty level and
 * the images, STOPPING=1 when the daemon starts to stop, WATCHDOG=1 every WATCHDOG_USEC/2.
 *
 * The protocol is small, so it is spoken here directly instead of linking libsystemd: each
 * message is one datagram of newline-separated VAR=VALUE fields sent to the unix socket named
 * by $NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'). systemd tells
 * the sender by the credentials the kernel attaches, so no reply is read and a failed send only
 * costs one log line. Without $NOTIFY_SOCKET every call is a no-op.
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
 *     parent before a fork) is not fed.
 *
 * State: fd < 0 (off) -> pfs_notify_init(): fd open -> pfs_notify_ready(): thread running ->
 * pfs_notify_stopping(): thread pings only -> pfs_notify_exit(): thread joined, fd closed.
 */
#include "daemon_i.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define NOTIFY_STATUS_PERIOD_NS (10ull * 1000000000u)  /* STATUS= refresh (a status read walks the index) */

static struct {
	int fd;
	struct sockaddr_un addr;
	socklen_t addrlen;
	uint64_t watchdog_ns;      /* 0 = no watchdog */
	bool send_failed;          /* logged once */
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t mu;        /* guards stop, stopping */
	pthread_cond_t cv;
	bool stop, stopping;
	char last_status[256];     /* thread only */
} nt = { .fd = -1, .mu = PTHREAD_MUTEX_INITIALIZER };

static void notify_send(const char *msg)
{
	if (nt.fd < 0)
		return;
	if (sendto(nt.fd, msg, strlen(msg), MSG_NOSIGNAL | MSG_DONTWAIT, (const struct sockaddr *)&nt.addr, nt.addrlen) < 0 &&
	    !nt.send_failed) {
		nt.send_failed = true;
		pfs_log(LOG_WARNING, "NOTIFY_SOCKET: send: %s", strerror(errno));
	}
}

void pfs_notify(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	if (nt.fd < 0)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	notify_send(buf);
}

int pfs_notify_init(void)
{
	const char *path = getenv("NOTIFY_SOCKET"), *wd = getenv("WATCHDOG_USEC"), *wpid = getenv("WATCHDOG_PID");
	size_t len;

	if (!path || !*path)
		return 0;
	len = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || len >= sizeof(nt.addr.sun_path)) {
		pfs_log(LOG_WARNING, "NOTIFY_SOCKET '%s' is not a socket path or @name: not notifying", path);
		return -EINVAL;
	}
	if (pthread_cond_init(&nt.cv, NULL) != 0)
		return -ENOMEM;
	memset(&nt.addr, 0, sizeof(nt.addr));
	nt.addr.sun_family = AF_UNIX;
	memcpy(nt.addr.sun_path, path, len);
	if (path[0] == '@')
		nt.addr.sun_path[0] = '\0';   /* abstract: the name is the bytes after the NUL, no terminator */
	nt.addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	nt.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (nt.fd < 0) {
		int ret = -errno;

		pfs_log(LOG_WARNING, "NOTIFY_SOCKET: socket: %s", strerror(-ret));
		pthread_cond_destroy(&nt.cv);
		return ret;
	}
	if (wd && *wd && (!wpid || !*wpid || strtol(wpid, NULL, 10) == (long)getpid())) {
		char *end;
		unsigned long long us = strtoull(wd, &end, 10);

		if (*end == '\0' && us > 0)
			nt.watchdog_ns = (uint64_t)us * 1000u;
	}
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

	if (nt.fd < 0)
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
	if (nt.fd < 0)
		return;
	pthread_mutex_lock(&nt.mu);
	nt.stopping = true;
	pthread_mutex_unlock(&nt.mu);
	pfs_notify("STOPPING=1\nSTATUS=stopping %s: unmounting, persisting the cache%s", pfs.opts->mountpoint,
		   pfs.opts->drain_on_exit ? ", writing back all dirty data" : "");
}

void pfs_notify_exit(void)
{
	if (nt.fd < 0)
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
	close(nt.fd);
	nt.fd = -1;
}
