/*
 * svc_fdstore.c -- stand in for systemd as the service manager of one Type=notify service with
 * a file descriptor store (FileDescriptorStoreMax=), so that tests run pcachefs's fd store path
 * where systemd is not PID 1. It speaks the same protocol as systemd 252:
 *   - the service gets $NOTIFY_SOCKET; datagrams from other processes than the main one are
 *     ignored (NotifyAccess=main; the sender is known from the kernel's credentials);
 *   - FDSTORE=1 (with FDNAME=, default "stored") keeps the fds a datagram carries, up to MAX;
 *     an fd that refers to an open file already stored is not stored twice (kcmp);
 *   - FDSTOREREMOVE=1 with FDNAME= closes every stored fd of that name;
 *   - a stored fd that reports POLLHUP or POLLERR is dropped (systemd does so unless FDPOLL=0);
 *   - when the service exits and the restart policy says so (on-failure: a non-zero status or a
 *     signal; always), it is started again after 100 ms with the stored fds at 3.. and
 *     LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set; otherwise the store is emptied and this
 *     program exits 0.
 *
 *   svc_fdstore SOCKET LOG MAX on-failure|always HOLDFILE -- PROGRAM ARGS...
 *
 * While HOLDFILE exists, a restart waits (tests use it to change the world in between).
 * SIGTERM stops the service (SIGTERM to it) and then this program; SIGUSR2 writes the store's
 * names to LOG. LOG gets one line per event:
 *   START pid N fds    READY pid    STORE name    DUP name    FULL name    REMOVE name N
 *   HUP name           IGNORED pid  EXIT pid code|signal    STORE-NAMES a b ...    END N
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/kcmp.h>

#define STORE_CAP 1024
#define MSG_MAX 4096

static struct {
	int fd;
	char name[256];
} store[STORE_CAP];
static int n_store, max_store;
static FILE *log_file;

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfprintf(log_file, fmt, ap);
	va_end(ap);
	fputc('\n', log_file);
	fflush(log_file);
}

/* systemd's rule: printable ASCII, no ':', 1-255 characters. */
static bool name_valid(const char *n)
{
	size_t len = strlen(n);

	if (len == 0 || len > 255)
		return false;
	for (const char *p = n; *p; p++) {
		if (*p < ' ' || *p > '~' || *p == ':')
			return false;
	}
	return true;
}

static void store_drop(int i)
{
	close(store[i].fd);
	store[i] = store[--n_store];
}

static void store_add(int fd, const char *name)
{
	pid_t me = getpid();

	for (int i = 0; i < n_store; i++) {
		if (syscall(SYS_kcmp, me, me, KCMP_FILE, fd, store[i].fd) == 0) {
			log_line("DUP %s", name);
			close(fd);
			return;
		}
	}
	if (n_store >= max_store) {
		log_line("FULL %s", name);
		close(fd);
		return;
	}
	store[n_store].fd = fd;
	snprintf(store[n_store].name, sizeof(store[n_store].name), "%s", name);
	n_store++;
	log_line("STORE %s", name);
}

static void store_remove(const char *name)
{
	int n = 0;

	for (int i = n_store - 1; i >= 0; i--) {
		if (!strcmp(store[i].name, name)) {
			store_drop(i);
			n++;
		}
	}
	log_line("REMOVE %s %d", name, n);
}

static void log_names(void)
{
	char line[8192] = "STORE-NAMES";
	size_t len = strlen(line);

	for (int i = 0; i < n_store && len < sizeof(line) - 300; i++)
		len += (size_t)snprintf(line + len, sizeof(line) - len, " %s", store[i].name);
	log_line("%s", line);
}

/* One datagram from the service. */
static void on_datagram(int sock, pid_t main_pid)
{
	char buf[MSG_MAX + 1], name[256] = "stored";
	union {
		char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * 253)];
		struct cmsghdr align;
	} cm;
	struct iovec iov = { buf, MSG_MAX };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof(cm.buf) };
	int fds[253], n_fds = 0;
	struct ucred cred = { 0 };
	bool have_cred = false, fdstore = false, fdremove = false;
	ssize_t n = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

	if (n < 0)
		return;
	buf[n] = '\0';
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));

			memcpy(fds + n_fds, CMSG_DATA(c), sizeof(int) * (size_t)k);
			n_fds += k;
		} else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
			memcpy(&cred, CMSG_DATA(c), sizeof(cred));
			have_cred = true;
		}
	}
	if (!have_cred || cred.pid != main_pid) {
		log_line("IGNORED %d", (int)cred.pid);
		for (int i = 0; i < n_fds; i++)
			close(fds[i]);
		return;
	}
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		if (!strcmp(line, "READY=1"))
			log_line("READY %d", (int)cred.pid);
		else if (!strcmp(line, "FDSTORE=1"))
			fdstore = true;
		else if (!strcmp(line, "FDSTOREREMOVE=1"))
			fdremove = true;
		else if (!strncmp(line, "FDNAME=", 7))
			snprintf(name, sizeof(name), "%s", line + 7);
	}
	if (!name_valid(name)) {
		log_line("BADNAME %s", name);
		fdstore = fdremove = false;
	}
	if (fdremove)
		store_remove(name);
	for (int i = 0; i < n_fds; i++) {
		if (fdstore)
			store_add(fds[i], name);
		else
			close(fds[i]);
	}
}

/* fork + exec the service with the store at 3.. (LISTEN_*). Returns its pid. */
static pid_t start(const char *sock, char **argv)
{
	pid_t pid = fork();

	if (pid != 0)
		return pid;
	{
		char names[STORE_CAP * 257] = "", buf[32];
		int tmp[STORE_CAP];
		sigset_t none;

		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		for (int i = 0; i < n_store; i++) {
			tmp[i] = fcntl(store[i].fd, F_DUPFD_CLOEXEC, 3 + n_store);
			if (tmp[i] < 0)
				_exit(126);
			if (i)
				strcat(names, ":");
			strcat(names, store[i].name);
		}
		for (int i = 0; i < n_store; i++) {
			if (dup2(tmp[i], 3 + i) < 0)
				_exit(126);
		}
		setenv("NOTIFY_SOCKET", sock, 1);
		if (n_store) {
			snprintf(buf, sizeof(buf), "%d", (int)getpid());
			setenv("LISTEN_PID", buf, 1);
			snprintf(buf, sizeof(buf), "%d", n_store);
			setenv("LISTEN_FDS", buf, 1);
			setenv("LISTEN_FDNAMES", names, 1);
		} else {
			unsetenv("LISTEN_PID");
			unsetenv("LISTEN_FDS");
			unsetenv("LISTEN_FDNAMES");
		}
		execvp(argv[0], argv);
		_exit(127);
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct pollfd pfd[2 + STORE_CAP];
	const char *sockpath, *hold;
	bool always, stopping = false;
	int sock, sfd, one = 1;
	pid_t main_pid;
	sigset_t set;

	if (argc < 8 || strcmp(argv[6], "--")) {
		fprintf(stderr, "usage: svc_fdstore SOCKET LOG MAX on-failure|always HOLDFILE -- PROGRAM ARGS...\n");
		return 2;
	}
	sockpath = argv[1];
	max_store = atoi(argv[3]);
	if (max_store < 0 || max_store > STORE_CAP)
		max_store = STORE_CAP;
	always = !strcmp(argv[4], "always");
	hold = argv[5];
	log_file = fopen(argv[2], "ae");
	if (!log_file || strlen(sockpath) >= sizeof(a.sun_path))
		return 2;
	memcpy(a.sun_path, sockpath, strlen(sockpath));
	unlink(sockpath);
	sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0 || setsockopt(sock, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) != 0 ||
	    bind(sock, (struct sockaddr *)&a, sizeof(a)) != 0) {
		perror("svc_fdstore: socket");
		return 2;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGUSR2);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sfd = signalfd(-1, &set, SFD_CLOEXEC);
	if (sfd < 0)
		return 2;
	main_pid = start(sockpath, argv + 7);
	log_line("START %d %d fds", (int)main_pid, n_store);
	for (;;) {
		int np = 2;

		pfd[0] = (struct pollfd){ .fd = sock, .events = POLLIN };
		pfd[1] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		for (int i = 0; i < n_store; i++)
			pfd[np++] = (struct pollfd){ .fd = store[i].fd, .events = 0 };
		if (poll(pfd, (nfds_t)np, -1) < 0) {
			if (errno == EINTR)
				continue;
			return 2;
		}
		for (int i = n_store - 1; i >= 0; i--) {
			if (pfd[2 + i].revents & (POLLHUP | POLLERR)) {
				log_line("HUP %s", store[i].name);
				store_drop(i);
			}
		}
		if (pfd[0].revents & POLLIN)
			on_datagram(sock, main_pid);
		if (pfd[1].revents & POLLIN) {
			struct signalfd_siginfo si;

			if (read(sfd, &si, sizeof(si)) != sizeof(si))
				continue;
			if (si.ssi_signo == SIGUSR2) {
				log_names();
			} else if (si.ssi_signo == SIGTERM) {
				stopping = true;
				kill(main_pid, SIGTERM);
			} else {
				int st;
				pid_t p;

				while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
					bool failed;

					if (p != main_pid)
						continue;
					/* the last datagrams of the service come before its end */
					while (1) {
						struct pollfd q = { .fd = sock, .events = POLLIN };

						if (poll(&q, 1, 0) != 1)
							break;
						on_datagram(sock, main_pid);
					}
					if (WIFSIGNALED(st))
						log_line("EXIT %d signal %d", (int)p, WTERMSIG(st));
					else
						log_line("EXIT %d code %d", (int)p, WEXITSTATUS(st));
					failed = WIFSIGNALED(st) || WEXITSTATUS(st) != 0;
					if (stopping || !(always || failed)) {
						log_line("END %d", n_store);
						while (n_store)
							store_drop(n_store - 1);
						unlink(sockpath);
						return 0;
					}
					while (access(hold, F_OK) == 0)
						usleep(20000);
					usleep(100000);
					main_pid = start(sockpath, argv + 7);
					log_line("START %d %d fds", (int)main_pid, n_store);
				}
			}
		}
	}
}
