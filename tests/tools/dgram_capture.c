/*
 * dgram_capture.c -- stand in for systemd's notify socket or a syslog socket: receive the
 * datagrams a daemon sends there and log each of their lines with the sender and whether a mount
 * point was mounted when the datagram arrived. Behaviour tests use it to check when READY=1
 * comes and what pcachefs logs once daemonized.
 *
 *   dgram_capture SOCKET LOGFILE MOUNTPOINT
 *
 * SOCKET is a path (replaced if it exists) or an abstract name written "@name". Once bound it
 * appends "0 0 0 BOUND" to LOGFILE, then one line per line of each datagram:
 *   SEQ PID MOUNTED LINE      (SEQ counts datagrams from 1, PID is the sender's from its
 *                              credentials, MOUNTED is 1 if MOUNTPOINT is a FUSE mount then)
 * Runs until killed. Exit status 1 if the socket cannot be set up.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Is mnt (absolute, as the kernel shows it) a FUSE mount right now? Reads mountinfo. */
static int fuse_mounted(const char *mnt)
{
	FILE *f = fopen("/proc/self/mountinfo", "r");
	char line[4096];
	int found = 0;

	if (!f)
		return 0;
	while (!found && fgets(line, sizeof(line), f)) {
		char *sep = strstr(line, " - "), *p = line;
		int field;

		/* fields: id parent dev root MOUNTPOINT ...; " - " FSTYPE ... */
		for (field = 0; field < 4 && p; field++) {
			p = strchr(p, ' ');
			if (p)
				p++;
		}
		if (!p || !sep)
			continue;
		if (strncmp(p, mnt, strlen(mnt)) == 0 && p[strlen(mnt)] == ' ' && strncmp(sep + 3, "fuse", 4) == 0)
			found = 1;
	}
	fclose(f);
	return found;
}

int main(int argc, char **argv)
{
	struct sockaddr_un addr;
	socklen_t alen;
	size_t len;
	int fd, on = 1;
	FILE *log;
	unsigned long seq = 0;

	if (argc != 4) {
		fprintf(stderr, "usage: dgram_capture SOCKET LOGFILE MOUNTPOINT\n");
		return 2;
	}
	len = strlen(argv[1]);
	if (len == 0 || len >= sizeof(addr.sun_path)) {
		fprintf(stderr, "dgram_capture: bad socket name\n");
		return 1;
	}
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, argv[1], len);
	if (argv[1][0] == '@')
		addr.sun_path[0] = '\0';
	else
		unlink(argv[1]);
	alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, alen) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) != 0) {
		fprintf(stderr, "dgram_capture: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	log = fopen(argv[2], "a");
	if (!log) {
		fprintf(stderr, "dgram_capture: %s: %s\n", argv[2], strerror(errno));
		return 1;
	}
	fprintf(log, "0 0 0 BOUND\n");
	fflush(log);
	for (;;) {
		char buf[4096 + 1];
		union {
			struct cmsghdr h;
			char space[CMSG_SPACE(sizeof(struct ucred))];
		} ctl;
		struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) - 1 };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &ctl,
				     .msg_controllen = sizeof(ctl) };
		struct cmsghdr *c;
		long pid = 0;
		ssize_t n = recvmsg(fd, &mh, 0);
		char *field, *save = NULL;
		int mounted;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "dgram_capture: recvmsg: %s\n", strerror(errno));
			return 1;
		}
		mounted = fuse_mounted(argv[3]);
		buf[n] = '\0';
		for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
				struct ucred uc;

				memcpy(&uc, CMSG_DATA(c), sizeof(uc));
				pid = (long)uc.pid;
			}
		}
		seq++;
		for (field = strtok_r(buf, "\n", &save); field; field = strtok_r(NULL, "\n", &save))
			fprintf(log, "%lu %ld %d %s\n", seq, pid, mounted, field);
		fflush(log);
	}
}
