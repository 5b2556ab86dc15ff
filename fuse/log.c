/*
 * log.c -- where the daemon's and the engine's messages go. Both reach one sink: pfs_log()
 * passes its lines through pcache_vlog() (so they share the engine's rate limit of repeated
 * lines), and the sink is the engine's log hook (include/pcache/util.h).
 *
 *   in the foreground (-f), and while starting: stderr, "pcachefs: MESSAGE" (prefixed with
 *     "<LEVEL>" when stderr is systemd's journal stream, $JOURNAL_STREAM, which reads it as
 *     the line's priority)
 *   once daemonized: syslog, ident pcachefs[PID], facility daemon, "MOUNTPOINT: MESSAGE"
 *
 * DEBUG lines are dropped unless -d. The syslog client is written here rather than taken from
 * syslog(3) so that the socket can be chosen: /dev/log, or $PCACHEFS_SYSLOG_SOCKET (for tests,
 * which must not bind the system's /dev/log). It sends RFC 3164 lines, as syslog(3) does, over
 * a datagram socket (a stream socket if the datagram connect is refused: NUL-terminated
 * frames), never waits for the log daemon (MSG_DONTWAIT: a line it has no room for is
 * dropped), reconnects once when a send fails (the log daemon restarted), and otherwise drops
 * the line: engine threads log while holding their locks, so logging must never block them.
 *
 * Invariants:
 *  1. The sink is chosen before any thread that logs exists (pfs_log_init() first in main),
 *     and switches to syslog once, from the main thread, when the daemon detaches.
 *  2. The socket is used under sl.lock only, so lines of concurrent threads never interleave.
 */
#include "daemon_i.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <paths.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static struct {
	bool debug;
	bool journal;              /* stderr is the journal's stream */
	_Atomic bool to_syslog;
	pthread_mutex_t lock;      /* guards fd, type */
	int fd, type;
	struct sockaddr_un addr;
	char mnt[PATH_MAX];
} sl = { .lock = PTHREAD_MUTEX_INITIALIZER, .fd = -1 };

/* Connect to the log socket, datagram first (sl.lock held). */
static void syslog_connect(void)
{
	static const int types[] = { SOCK_DGRAM, SOCK_STREAM };

	for (size_t i = 0; i < PCACHE_ARRAY_SIZE(types) && sl.fd < 0; i++) {
		sl.fd = socket(AF_UNIX, types[i] | SOCK_CLOEXEC, 0);
		if (sl.fd < 0)
			return;
		if (connect(sl.fd, (struct sockaddr *)&sl.addr, sizeof(sl.addr)) == 0) {
			sl.type = types[i];
			return;
		}
		close(sl.fd);
		sl.fd = -1;
	}
}

static void syslog_line(int prio, const char *msg)
{
	char buf[1400], ts[32];
	struct tm tm;
	time_t now = time(NULL);
	ssize_t sent;
	size_t len;
	int n;

	localtime_r(&now, &tm);
	strftime(ts, sizeof(ts), "%b %e %H:%M:%S", &tm);
	n = snprintf(buf, sizeof(buf), "<%d>%s pcachefs[%ld]: %s: %s", LOG_DAEMON | prio, ts, (long)getpid(),
		     sl.mnt, msg);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	pthread_mutex_lock(&sl.lock);
	for (int attempt = 0; attempt < 2; attempt++) {
		if (sl.fd < 0)
			syslog_connect();
		if (sl.fd < 0)
			break;
		len = (size_t)n + (sl.type == SOCK_STREAM);   /* a stream frame ends with its NUL */
		sent = send(sl.fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (sent == (ssize_t)len)
			break;
		if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && sl.type == SOCK_DGRAM)
			break;   /* the log daemon is behind: drop the line rather than wait */
		close(sl.fd);      /* gone, or a stream left mid-frame: start over */
		sl.fd = -1;
	}
	pthread_mutex_unlock(&sl.lock);
}

/* The engine's log hook: every line of the process ends here. */
static void log_sink(int level, const char *line)
{
	if (level >= PCACHE_LOG_DEBUG && !sl.debug)
		return;
	if (atomic_load(&sl.to_syslog))
		syslog_line(level, line);
	else if (sl.journal)
		fprintf(stderr, "<%d>pcachefs: %s\n", level, line);
	else
		fprintf(stderr, "pcachefs: %s\n", line);
}

/* Is stderr the stream $JOURNAL_STREAM ("DEV:INODE") names? */
static bool stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	return js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(2, &st) == 0 &&
	       (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void pfs_log_init(bool debug)
{
	sl.debug = debug;
	sl.journal = stderr_is_journal();
	pcache_set_log_hook(log_sink);
}

void pfs_log_to_syslog(const char *mountpoint)
{
	const char *path = getenv("PCACHEFS_SYSLOG_SOCKET");

	if (!path || !*path || strlen(path) >= sizeof(sl.addr.sun_path))
		path = _PATH_LOG;
	memset(&sl.addr, 0, sizeof(sl.addr));
	sl.addr.sun_family = AF_UNIX;
	snprintf(sl.addr.sun_path, sizeof(sl.addr.sun_path), "%s", path);
	snprintf(sl.mnt, sizeof(sl.mnt), "%s", mountpoint);
	pthread_mutex_lock(&sl.lock);
	syslog_connect();   /* may fail: retried with each line */
	pthread_mutex_unlock(&sl.lock);
	atomic_store(&sl.to_syslog, true);
}

void pfs_log(int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	pcache_vlog(prio, fmt, ap);
	va_end(ap);
}
