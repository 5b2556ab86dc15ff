/*
 * keeper.c -- the keeper: a small process that holds a mount's /dev/fuse connection so that it
 * outlives the daemon serving it (a crash, kill -9, an upgrade), and hands it to the next
 * daemon started on the same mount point. Both sides are here: the keeper process
 * (pfs_keeper_main, `pcachefs --keeper`), and the daemon's client calls.
 *
 * Why it works: the kernel ends a FUSE connection when the last file of /dev/fuse that reaches
 * it is closed. The keeper holds a duplicate of the daemon's fd (and of every worker's cloned
 * fd, which carry the requests that worker read), so a dying daemon closes only its own copies:
 * the mount stays, callers wait in the kernel, and requests the old daemon read but never
 * answered stay on the clones' lists until the new daemon asks for them again
 * (FUSE_NOTIFY_RESEND, handover.c).
 *
 * Protocol: one SOCK_SEQPACKET unix socket per mount point under $PCACHEFS_RUN_DIR (default
 * /run/pcachefs), named after a hash of the mount point. Each message is a header (magic,
 * type, payload length, arg), a payload, and at most one fd (SCM_RIGHTS); types in daemon_i.h.
 *   daemon mounts:          bind the socket, spawn the keeper (it inherits the listening fd),
 *                           connect, HOLD(fd, state); then FD for every worker's fd, STATE on
 *                           every change. This connection is the owner's.
 *   clean unmount:          RELEASE: the keeper closes everything and exits.
 *   owner dies:             its connection ends; the keeper waits keep_timeout seconds for a
 *                           new daemon (the connection's callers wait too), then closes the fds
 *                           (callers get ENOTCONN, as without a keeper) and exits. It also exits
 *                           when the connection ends (umount, abort) meanwhile.
 *   new daemon starts:      TAKE(cache path, handover?). No owner: GIVE(fd, state) at once and
 *                           the taker becomes the owner. A live owner: REFUSE unless handover
 *                           was asked for; then HANDOVER to the owner, which stops serving,
 *                           sends its last STATE and exits, and then GIVE.
 *   after the resend:       RESENT: the fds of earlier owners are closed.
 *
 * Invariants:
 *  1. The keeper never reads or writes the FUSE connection; it polls it (for the end of the
 *     connection) only while no daemon owns it, so it costs nothing per request.
 *  2. At most one owner and one pending taker at a time; a second taker is refused.
 *  3. The keeper keeps no fd of the daemon but the ones sent to it: everything else is closed
 *     at its start (a cache device or backing lock inherited by accident would block the next
 *     daemon).
 */
#include "daemon_i.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KMSG_MAGIC 0x4b534650u          /* "PFSK" */
#define KMSG_MAX (sizeof(struct kmsg_hdr) + sizeof(struct pfs_hstate))
#define KEEPER_LISTEN_FD 3
#define KEEPER_MAX_FDS 64

struct kmsg_hdr {
	uint32_t magic;
	uint32_t type;
	uint32_t len;                   /* payload bytes after the header */
	uint32_t arg;
};

static pid_t peer_pid(int s);

/* ---- messages ---------------------------------------------------------------------------- */

static int kmsg_send(int sock, uint32_t type, uint32_t arg, int fd, const void *payload, size_t len)
{
	struct kmsg_hdr h = { .magic = KMSG_MAGIC, .type = type, .len = (uint32_t)len, .arg = arg };
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)payload, len } };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cm;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
	ssize_t n;

	if (fd >= 0) {
		struct cmsghdr *c;

		memset(&cm, 0, sizeof(cm));
		mh.msg_control = cm.buf;
		mh.msg_controllen = sizeof(cm.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	do {
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == sizeof(h) + len ? 0 : -EIO;
}

/*
 * Receive one message into buf (KMSG_MAX bytes): 1 with *h, the payload after it and *fd (-1 if
 * none; close-on-exec), 0 at the end of the connection, -errno on error or a malformed message.
 */
static int kmsg_recv(int sock, void *buf, struct kmsg_hdr *h, int *fd)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * 4)];
		struct cmsghdr align;
	} cm;
	struct iovec iov = { buf, KMSG_MAX };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
			     .msg_controllen = sizeof(cm.buf) };
	struct cmsghdr *c;
	ssize_t n;

	*fd = -1;
	do {
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (n == 0)
		return 0;
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int nfd = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));

			for (int i = 0; i < nfd; i++) {
				int f;

				memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
				if (*fd < 0)
					*fd = f;
				else
					close(f);   /* one fd per message */
			}
		}
	}
	if (n >= (ssize_t)sizeof(*h))
		memcpy(h, buf, sizeof(*h));
	if (n < (ssize_t)sizeof(*h) || h->magic != KMSG_MAGIC || (mh.msg_flags & MSG_TRUNC) ||
	    (size_t)n != sizeof(*h) + h->len) {
		if (*fd >= 0)
			close(*fd);
		*fd = -1;
		return -EPROTO;
	}
	return 1;
}

int pfs_keeper_sock_path(const char *mountpoint, char *buf, size_t len)
{
	const char *dir = getenv("PCACHEFS_RUN_DIR");
	uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a 64 of the mount point as given (absolute) */
	int n;

	if (!dir || !*dir)
		dir = "/run/pcachefs";
	/* "/a//b/" and "/a/b" are one mount point */
	for (const unsigned char *p = (const unsigned char *)mountpoint; *p; p++) {
		if (*p == '/' && (p[1] == '/' || p[1] == '\0'))
			continue;
		h = (h ^ *p) * 0x100000001b3ull;
	}
	n = snprintf(buf, len, "%s/keep-%016" PRIx64 ".sock", dir, h);
	if (n < 0 || (size_t)n >= len || (size_t)n >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return -ENAMETOOLONG;
	return 0;
}

static int sock_addr(const char *path, struct sockaddr_un *a)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(a->sun_path))
		return -ENAMETOOLONG;
	memcpy(a->sun_path, path, strlen(path));
	return 0;
}

/* ---- the daemon's side ------------------------------------------------------------------- */

static struct {
	pthread_mutex_t mu;        /* guards sock for sends */
	int sock;                  /* connection to the keeper, -1 = none */
	pid_t pid;                 /* the keeper, if this daemon started it */
} kc = { .mu = PTHREAD_MUTEX_INITIALIZER, .sock = -1 };

int pfs_keeper_send(uint32_t type, int fd, const void *payload, size_t len)
{
	int ret = -ENOTCONN;

	pthread_mutex_lock(&kc.mu);
	if (kc.sock >= 0)
		ret = kmsg_send(kc.sock, type, 0, fd, payload, len);
	pthread_mutex_unlock(&kc.mu);
	return ret;
}

bool pfs_keeper_connected(void)
{
	bool c;

	pthread_mutex_lock(&kc.mu);
	c = kc.sock >= 0;
	pthread_mutex_unlock(&kc.mu);
	return c;
}

static int keeper_connect(const char *path, int *out)
{
	struct sockaddr_un a;
	int s, ret;

	ret = sock_addr(path, &a);
	if (ret)
		return ret;
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	if (connect(s, (struct sockaddr *)&a, sizeof(a)) != 0) {
		ret = -errno;
		close(s);
		return ret;
	}
	*out = s;
	return 0;
}

int pfs_keeper_take(const char *mountpoint, const char *cache_path, bool handover, int *fuse_fd,
		    int *shm_fd, struct pfs_hstate *st, char *err, size_t errlen)
{
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct kmsg_hdr h;
	struct pollfd pfd;
	char *buf;
	int s, ret, fd;

	*fuse_fd = -1;
	*shm_fd = -1;
	if (pfs_keeper_sock_path(mountpoint, path, sizeof(path)) != 0)
		return 0;
	ret = keeper_connect(path, &s);
	if (ret) {
		if (ret == -ECONNREFUSED)
			unlink(path);   /* a keeper that died left its socket */
		return 0;           /* no keeper: mount anew */
	}
	buf = malloc(KMSG_MAX);
	if (!buf) {
		close(s);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	ret = kmsg_send(s, PFS_KMSG_TAKE, handover ? 1 : 0, -1, cache_path, strlen(cache_path) + 1);
	if (ret) {
		snprintf(err, errlen, "asking the keeper %s: %s", path, strerror(-ret));
		goto out;
	}
	/* a hand-over waits for the old daemon to stop (it persists its log): allow minutes */
	pfd.fd = s;
	pfd.events = POLLIN;
	do {
		ret = poll(&pfd, 1, 300 * 1000);
	} while (ret < 0 && errno == EINTR);
	if (ret <= 0) {
		ret = ret == 0 ? -ETIMEDOUT : -errno;
		snprintf(err, errlen, "the keeper %s did not answer: %s", path, strerror(-ret));
		goto out;
	}
	ret = kmsg_recv(s, buf, &h, &fd);
	if (ret <= 0) {
		ret = ret ? ret : -ECONNRESET;
		snprintf(err, errlen, "the keeper %s: %s", path, strerror(-ret));
		goto out;
	}
	if (h.type == PFS_KMSG_REFUSE) {
		snprintf(err, errlen, "%.*s", (int)h.len, buf + sizeof(h));
		if (fd >= 0)
			close(fd);
		ret = -EBUSY;
		goto out;
	}
	if (h.type != PFS_KMSG_GIVE || fd < 0 ||
	    pfs_hstate_check((const struct pfs_hstate *)(buf + sizeof(h)), h.len) != 0) {
		if (fd >= 0)
			close(fd);
		snprintf(err, errlen, "the keeper %s sent an unusable hand-over (type %u, %u bytes)", path,
			 h.type, h.len);
		ret = -EPROTO;
		goto out;
	}
	memcpy(st, buf + sizeof(h), sizeof(*st));
	*fuse_fd = fd;
	/* the staging memory follows at once */
	if (kmsg_recv(s, buf, &h, &fd) > 0 && h.type == PFS_KMSG_SHM)
		*shm_fd = fd;
	else if (fd >= 0)
		close(fd);
	pthread_mutex_lock(&kc.mu);
	kc.sock = s;
	kc.pid = peer_pid(s);
	pthread_mutex_unlock(&kc.mu);
	free(buf);
	return 1;
out:
	free(buf);
	close(s);
	return ret;
}

void pfs_keeper_drop(void)
{
	pfs_keeper_send(PFS_KMSG_DROP, -1, NULL, 0);
	pfs_keeper_detach();
}

int pfs_keeper_start(const char *mountpoint, int fuse_fd, unsigned int timeout_s, bool to_syslog,
		     char *err, size_t errlen)
{
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)], tmo[16], self[PATH_MAX];
	struct pfs_hstate *st;
	struct sockaddr_un a;
	const char *dir;
	char *slash;
	ssize_t n;
	pid_t pid;
	int l, s, ret;

	ret = pfs_keeper_sock_path(mountpoint, path, sizeof(path));
	if (ret) {
		snprintf(err, errlen, "keeper socket path too long");
		return ret;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0) {
		snprintf(err, errlen, "cannot find this program: %s", strerror(errno));
		return -ENOENT;
	}
	self[n] = '\0';
	dir = path;
	slash = strrchr(path, '/');
	*slash = '\0';
	if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
		ret = -errno;
		snprintf(err, errlen, "mkdir %s: %s", dir, strerror(errno));
		return ret;
	}
	*slash = '/';
	sock_addr(path, &a);
	l = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (l < 0) {
		ret = -errno;
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return ret;
	}
	unlink(path);   /* a stale socket: a live keeper of this mount point would have answered TAKE */
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(l, 4) != 0) {
		ret = -errno;
		snprintf(err, errlen, "bind %s: %s", path, strerror(errno));
		close(l);
		return ret;
	}
	snprintf(tmo, sizeof(tmo), "%u", timeout_s);
	pid = fork();
	if (pid < 0) {
		ret = -errno;
		snprintf(err, errlen, "fork: %s", strerror(errno));
		close(l);
		unlink(path);
		return ret;
	}
	if (pid == 0) {
		/* only async-signal-safe calls until exec */
		sigset_t none;

		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (dup2(l, KEEPER_LISTEN_FD) < 0)
			_exit(127);
		execl(self, "pcachefs", "--keeper", path, tmo, mountpoint, to_syslog ? "syslog" : "stderr",
		      (char *)NULL);
		_exit(127);
	}
	close(l);
	kc.pid = pid;
	ret = keeper_connect(path, &s);
	if (ret) {
		snprintf(err, errlen, "connect %s: %s", path, strerror(-ret));
		return ret;
	}
	st = malloc(sizeof(*st));
	if (!st) {
		close(s);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	pfs_hstate_build(st);
	ret = kmsg_send(s, PFS_KMSG_HOLD, 0, fuse_fd, st, sizeof(*st));
	free(st);
	if (ret) {
		close(s);
		snprintf(err, errlen, "handing the connection to the keeper: %s", strerror(-ret));
		return ret;
	}
	pthread_mutex_lock(&kc.mu);
	kc.sock = s;
	pthread_mutex_unlock(&kc.mu);
	return 0;
}

void pfs_keeper_resent(void)
{
	pfs_keeper_send(PFS_KMSG_RESENT, -1, NULL, 0);
}

void pfs_keeper_detach(void)
{
	pthread_mutex_lock(&kc.mu);
	if (kc.sock >= 0) {
		/* wake a thread blocked in pfs_keeper_wait_handover(), then close */
		shutdown(kc.sock, SHUT_RDWR);
		close(kc.sock);
		kc.sock = -1;
	}
	pthread_mutex_unlock(&kc.mu);
}

void pfs_keeper_release(void)
{
	if (pfs_keeper_send(PFS_KMSG_RELEASE, -1, NULL, 0) == 0)
		pfs_log(LOG_INFO, "keeper released the connection");
	pfs_keeper_detach();
}

pid_t pfs_keeper_pid(void)
{
	return kc.pid;
}

int pfs_keeper_wait_handover(void)
{
	struct kmsg_hdr h;
	char *buf = malloc(KMSG_MAX);
	int s, ret = 0, fd;

	if (!buf)
		return 0;
	for (;;) {
		pthread_mutex_lock(&kc.mu);
		s = kc.sock >= 0 ? dup(kc.sock) : -1;   /* detach may close kc.sock meanwhile */
		pthread_mutex_unlock(&kc.mu);
		if (s < 0)
			break;
		ret = kmsg_recv(s, buf, &h, &fd);
		close(s);
		if (fd >= 0)
			close(fd);
		if (ret <= 0) {
			ret = 0;
			break;
		}
		if (h.type == PFS_KMSG_HANDOVER) {
			ret = 1;
			break;
		}
	}
	free(buf);
	return ret;
}

/* ---- the keeper process ------------------------------------------------------------------ */

struct kfd {
	int fd;
	unsigned int epoch;        /* owner generation that sent it */
};

static struct {
	const char *mnt;
	int listen_fd;
	int owner;                 /* connection of the serving daemon, -1 = none */
	pid_t owner_pid;
	int taker;                 /* a daemon waiting for a hand-over, -1 = none */
	int conn;                  /* the main connection fd, -1 = none yet */
	int shm;                   /* the engine's staging memory, -1 = none */
	struct kfd fds[KEEPER_MAX_FDS];
	int nfds;
	unsigned int epoch;
	struct pfs_hstate *st;
	char *buf;
	unsigned int timeout_s;
	struct timespec orphan_since;
	char cache_path[PFS_HSTATE_PATH_MAX];
} kp = { .owner = -1, .taker = -1, .conn = -1, .shm = -1 };

static void klog(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void klog(int prio, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	pfs_log(prio, "keeper of %s: %s", kp.mnt, line);
}

static double since_s(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

static void keeper_add_fd(int fd)
{
	if (kp.nfds == KEEPER_MAX_FDS) {
		/* drop the oldest kept clone: it belongs to a worker long gone */
		close(kp.fds[0].fd);
		memmove(&kp.fds[0], &kp.fds[1], sizeof(kp.fds[0]) * (KEEPER_MAX_FDS - 1));
		kp.nfds--;
	}
	kp.fds[kp.nfds].fd = fd;
	kp.fds[kp.nfds].epoch = kp.epoch;
	kp.nfds++;
}

static void keeper_close_old(void)
{
	int j = 0;

	for (int i = 0; i < kp.nfds; i++) {
		if (kp.fds[i].epoch < kp.epoch)
			close(kp.fds[i].fd);
		else
			kp.fds[j++] = kp.fds[i];
	}
	kp.nfds = j;
}

static pid_t peer_pid(int s)
{
	struct ucred uc;
	socklen_t l = sizeof(uc);

	return getsockopt(s, SOL_SOCKET, SO_PEERCRED, &uc, &l) == 0 ? uc.pid : 0;
}

static void refuse(int s, const char *why)
{
	kmsg_send(s, PFS_KMSG_REFUSE, 0, -1, why, strlen(why));
	close(s);
}

/* Give the connection to the pending taker, who becomes the owner. */
static void keeper_give(void)
{
	int s = kp.taker;

	kp.taker = -1;
	if (kmsg_send(s, PFS_KMSG_GIVE, 0, kp.conn, kp.st, sizeof(*kp.st)) != 0) {
		klog(LOG_WARNING, "the new daemon went away before taking over");
		close(s);
		return;
	}
	kmsg_send(s, PFS_KMSG_SHM, 0, kp.shm, NULL, 0);
	kp.owner = s;
	kp.owner_pid = peer_pid(s);
	kp.epoch++;
	klog(LOG_INFO, "handed the connection to pid %d after %.3f s", (int)kp.owner_pid,
	     since_s(&kp.orphan_since));
}

/* Keep a received fd (if any) in *slot, closing what was there. */
static void keep_fd(int *slot, int *fd)
{
	if (*fd < 0)
		return;
	if (*slot >= 0)
		close(*slot);
	*slot = *fd;
	*fd = -1;
}

/* A message from the owner. Returns false when the keeper should exit (released). */
static bool owner_msg(const struct kmsg_hdr *h, int fd)
{
	const void *payload = kp.buf + sizeof(*h);

	switch (h->type) {
	case PFS_KMSG_HOLD:
	case PFS_KMSG_STATE:
		if (pfs_hstate_check(payload, h->len) == 0)
			memcpy(kp.st, payload, sizeof(*kp.st));
		else
			klog(LOG_WARNING, "ignored an unusable state (%u bytes)", h->len);
		if (h->type == PFS_KMSG_HOLD)
			keep_fd(&kp.conn, &fd);
		break;
	case PFS_KMSG_FD:
		if (fd >= 0) {
			keeper_add_fd(fd);
			fd = -1;
		}
		break;
	case PFS_KMSG_RESENT:
		keeper_close_old();
		break;
	case PFS_KMSG_SHM:
		keep_fd(&kp.shm, &fd);
		break;
	case PFS_KMSG_RELEASE:
	case PFS_KMSG_DROP:
		if (fd >= 0)
			close(fd);
		return false;
	default:
		break;
	}
	if (fd >= 0)
		close(fd);
	return true;
}

static void new_conn(int s)
{
	struct kmsg_hdr h;
	struct pollfd p = { .fd = s, .events = POLLIN };
	int fd, r;

	/* the first message comes right after connect: do not let a silent peer stall the keeper */
	if (poll(&p, 1, 5000) != 1 || (r = kmsg_recv(s, kp.buf, &h, &fd)) <= 0) {
		close(s);
		return;
	}
	if (h.type == PFS_KMSG_HOLD && kp.owner < 0 && kp.conn < 0) {
		kp.owner = s;
		kp.owner_pid = peer_pid(s);
		owner_msg(&h, fd);
		klog(LOG_INFO, "holding the connection of pid %d", (int)kp.owner_pid);
		return;
	}
	if (fd >= 0)
		close(fd);
	if (h.type != PFS_KMSG_TAKE) {
		close(s);
		return;
	}
	if (kp.conn < 0) {
		refuse(s, "the keeper holds no connection yet");
		return;
	}
	if (kp.taker >= 0) {
		refuse(s, "another daemon is taking this mount over");
		return;
	}
	kp.buf[sizeof(h) + (h.len ? h.len - 1 : 0)] = '\0';
	if (strcmp(kp.buf + sizeof(h), kp.st->cache_path) != 0) {
		char why[PFS_HSTATE_PATH_MAX + 64];

		snprintf(why, sizeof(why), "the mount is served from the cache device %s", kp.st->cache_path);
		refuse(s, why);
		return;
	}
	if (kp.owner >= 0 && !h.arg) {
		char why[128];

		snprintf(why, sizeof(why), "pid %d serves this mount (-o takeover hands it over)",
			 (int)kp.owner_pid);
		refuse(s, why);
		return;
	}
	kp.taker = s;
	if (kp.owner >= 0) {
		klog(LOG_INFO, "pid %d asks for the connection: asking pid %d to hand over",
		     (int)peer_pid(s), (int)kp.owner_pid);
		clock_gettime(CLOCK_MONOTONIC, &kp.orphan_since);
		kmsg_send(kp.owner, PFS_KMSG_HANDOVER, 0, -1, NULL, 0);
	} else {
		keeper_give();
	}
}

int pfs_keeper_main(int argc, char **argv)
{
	struct pollfd p[4];
	long t;

	if (argc != 6) {
		fprintf(stderr, "pcachefs: --keeper is started by pcachefs itself\n");
		return 2;
	}
	pfs_log_init(false);
	kp.mnt = argv[4];
	t = strtol(argv[3], NULL, 10);
	kp.timeout_s = t > 0 ? (unsigned int)t : 1;
	kp.listen_fd = KEEPER_LISTEN_FD;
	if (fcntl(kp.listen_fd, F_GETFD) < 0) {
		fprintf(stderr, "pcachefs: --keeper: no listening socket\n");
		return 2;
	}
	/* invariant 3: nothing but the listening socket and stdio */
	close_range(KEEPER_LISTEN_FD + 1, ~0u, 0);
	fcntl(kp.listen_fd, F_SETFD, FD_CLOEXEC);
	prctl(PR_SET_NAME, "pcachefs-keep", 0, 0, 0);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, SIG_IGN);    /* a terminal's ^C is for the daemon, which releases us */
	signal(SIGHUP, SIG_IGN);
	if (!strcmp(argv[5], "syslog")) {
		int nullfd = open("/dev/null", O_RDWR);

		if (nullfd >= 0) {
			dup2(nullfd, 0);
			dup2(nullfd, 1);
			dup2(nullfd, 2);
			close(nullfd);
		}
		pfs_log_to_syslog(kp.mnt);
	}
	kp.st = calloc(1, sizeof(*kp.st));
	kp.buf = malloc(KMSG_MAX + 1);
	if (!kp.st || !kp.buf)
		return 1;
	for (;;) {
		int n = 0, i_owner = -1, i_taker = -1, i_conn = -1, tmo = -1, r;

		p[n].fd = kp.listen_fd;
		p[n++].events = POLLIN;
		if (kp.owner >= 0) {
			i_owner = n;
			p[n].fd = kp.owner;
			p[n++].events = POLLIN;
		}
		if (kp.taker >= 0) {
			i_taker = n;
			p[n].fd = kp.taker;
			p[n++].events = POLLIN;
		}
		if (kp.owner < 0 && kp.conn >= 0) {
			/* invariant 1: only while nobody serves it */
			i_conn = n;
			p[n].fd = kp.conn;
			p[n++].events = 0;
			double left = kp.timeout_s - since_s(&kp.orphan_since);

			if (left <= 0) {
				klog(LOG_ERR, "no daemon took the connection over in %u s: ending it "
				     "(its callers get ENOTCONN)", kp.timeout_s);
				break;
			}
			tmo = (int)(left * 1000) + 1;
		} else if (kp.owner < 0 && kp.conn < 0) {
			tmo = 5000;   /* spawned, waiting for HOLD */
		}
		r = poll(p, (nfds_t)n, tmo);
		if (r < 0 && errno != EINTR)
			break;
		if (r == 0 && kp.conn < 0 && kp.owner < 0)
			break;   /* the daemon never handed anything over */
		if (i_conn >= 0 && (p[i_conn].revents & (POLLERR | POLLHUP | POLLNVAL))) {
			klog(LOG_INFO, "the connection ended (unmounted or aborted)");
			break;
		}
		if (i_owner >= 0 && p[i_owner].revents) {
			struct kmsg_hdr h;
			int fd;

			r = kmsg_recv(kp.owner, kp.buf, &h, &fd);
			if (r > 0 && !owner_msg(&h, fd)) {
				klog(LOG_INFO, "released by pid %d", (int)kp.owner_pid);
				break;
			}
			if (r <= 0) {
				close(kp.owner);
				kp.owner = -1;
				clock_gettime(CLOCK_MONOTONIC, &kp.orphan_since);
				if (kp.taker >= 0) {
					keeper_give();
				} else {
					klog(LOG_WARNING, "pid %d went away: keeping the connection for %u s "
					     "for a new daemon", (int)kp.owner_pid, kp.timeout_s);
				}
				continue;
			}
		}
		if (i_taker >= 0 && p[i_taker].revents) {
			/* a waiting taker sends nothing: data or hang-up means it gave up */
			struct kmsg_hdr h;
			int fd;

			r = kmsg_recv(kp.taker, kp.buf, &h, &fd);
			if (fd >= 0)
				close(fd);
			if (r <= 0 || h.type == PFS_KMSG_DROP) {
				close(kp.taker);
				kp.taker = -1;
			}
		}
		if (p[0].revents & POLLIN) {
			int s = accept4(kp.listen_fd, NULL, NULL, SOCK_CLOEXEC);

			if (s >= 0)
				new_conn(s);
		}
	}
	/* closing every fd of the connection ends it unless a daemon still holds one */
	return 0;
}
