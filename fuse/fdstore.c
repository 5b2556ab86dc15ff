/*
 * fdstore.c -- keeping the FUSE connection in the service manager's file descriptor store
 * (systemd's FDSTORE=1 / LISTEN_FDS protocol), the alternative to the keeper process
 * (keeper.c) for a daemon run as a service with FileDescriptorStoreMax=.
 *
 * What is stored, by name (FDNAME=):
 *   fuse           the mount's /dev/fuse fd
 *   fuse-clone.PID every worker's cloned fd of daemon PID: a request a worker read sits on the
 *                  list of the fd it was read from, and would end with ECONNABORTED if only
 *                  the dead daemon held that fd (the keeper holds them for the same reason)
 *   stage          the engine's staging memory (a memfd): keys acknowledged but not yet logged
 *   state          a memfd with the hand-over state (struct pfs_hstate), written in place
 * The manager gives them back to the next start of the service (LISTEN_FDS, LISTEN_FDNAMES,
 * LISTEN_PID); that start takes the connection over exactly as from a keeper. The same
 * variables carry them across the exec of an upgrade (SIGUSR1): the daemon sets them itself.
 *
 * Invariants:
 *  1. The state memfd holds two copies and a sequence number: a copy is written whole into the
 *     slot the sequence does not point at, then the sequence moves (release order). A daemon
 *     killed in the middle of a write leaves the previous copy valid.
 *  2. Like the keeper: the state reaches the store before a change it records is visible to
 *     the kernel (handover.c), and a worker's fd is stored before that worker's first read.
 *  3. Clones of an earlier daemon are removed from the store (and closed) only after the
 *     resend: until then they carry the requests it read and never answered.
 *  4. A clean unmount removes every entry (FDSTOREREMOVE=1): the next start mounts anew.
 */
#include "daemon_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#define FDS_STATE_MAGIC 0x5453534446534650ull   /* "PFSFDSST" */
#define FDS_MAX_OLD 128                          /* clones of earlier daemons kept until the resend */

struct fds_state_mem {
	uint64_t magic;
	_Atomic uint64_t seq;      /* the valid copy is copy[seq & 1] (0: none yet) */
	struct pfs_hstate copy[2];
};

static struct {
	bool on;                   /* this daemon keeps its connection in the store */
	int state_fd;
	struct fds_state_mem *mem;
	pthread_mutex_t mu;        /* guards the state writes */
	char clone_name[32];       /* "fuse-clone.PID" */
	int old_fds[FDS_MAX_OLD];  /* clones of earlier daemons, closed after the resend */
	char *old_names[FDS_MAX_OLD];
	int n_old;
} fs = { .state_fd = -1, .mu = PTHREAD_MUTEX_INITIALIZER };

static int store(int fd, const char *name)
{
	char msg[128];

	snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
	return sd_pid_notify_with_fds(0, 0, msg, &fd, 1);
}

static void store_remove(const char *name)
{
	char msg[128];
	int ret;

	snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
	ret = sd_pid_notify(0, 0, msg);
	if (ret < 0)
		pfs_log(LOG_WARNING, "fd store: cannot remove %s: %s", name, strerror(-ret));
}

/* Does the colon-separated list names hold name? */
static bool names_have(const char *names, const char *name)
{
	size_t len = strlen(name);

	for (const char *p = names; p && *p; p = strchr(p, ':') ? strchr(p, ':') + 1 : NULL) {
		if (!strncmp(p, name, len) && (p[len] == ':' || p[len] == '\0'))
			return true;
	}
	return false;
}

bool pfs_fdstore_kept(void)
{
	const char *pid = getenv("LISTEN_PID"), *names = getenv("LISTEN_FDNAMES");

	return pid && strtol(pid, NULL, 10) == (long)getpid() && names && names_have(names, "fuse");
}

bool pfs_fdstore_wanted(bool asked)
{
	const char *ns = getenv("NOTIFY_SOCKET"), *n = getenv("FDSTORE");

	if (!ns || !*ns)
		return false;
	/* asked for (-o fdstore), or the manager says the unit has a store (systemd 254+ sets
	 * $FDSTORE), or it gave this process a stored connection back */
	return asked || (n && strtol(n, NULL, 10) > 0) || pfs_fdstore_kept();
}

bool pfs_fdstore_on(void)
{
	return fs.on;
}

static void *map_state(int fd, bool create)
{
	struct stat st;
	void *p;

	if (create && ftruncate(fd, sizeof(struct fds_state_mem)) != 0)
		return NULL;
	if (fstat(fd, &st) != 0 || (size_t)st.st_size != sizeof(struct fds_state_mem))
		return NULL;
	p = mmap(NULL, sizeof(struct fds_state_mem), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	return p == MAP_FAILED ? NULL : p;
}

static void forget_old(void)
{
	for (int i = 0; i < fs.n_old; i++) {
		close(fs.old_fds[i]);
		free(fs.old_names[i]);
	}
	fs.n_old = 0;
}

/* Close what a take did not use (every fd of names, -1 entries skipped). */
static void close_listed(int n, int *fds)
{
	for (int i = 0; i < n; i++) {
		if (fds[i] >= 0)
			close(fds[i]);
	}
}

int pfs_fdstore_take(int *fuse_fd, int *shm_fd, struct pfs_hstate *st, char *err, size_t errlen)
{
	char **names = NULL;
	int n, fd_fuse = -1, fd_stage = -1, fd_state = -1, ret = 0;
	int *fds;
	struct fds_state_mem *mem = NULL;

	*fuse_fd = *shm_fd = -1;
	snprintf(fs.clone_name, sizeof(fs.clone_name), "fuse-clone.%ld", (long)getpid());
	n = sd_listen_fds_with_names(1, &names);
	if (n <= 0) {
		if (n < 0)
			pfs_log(LOG_WARNING, "fd store: LISTEN_FDS: %s (mounting anew)", strerror(-n));
		return 0;
	}
	fds = calloc((size_t)n, sizeof(*fds));
	if (!fds) {
		snprintf(err, errlen, "out of memory");
		ret = -ENOMEM;
		goto out;
	}
	for (int i = 0; i < n; i++) {
		const char *name = names ? names[i] : "";
		int fd = SD_LISTEN_FDS_START + i;

		fds[i] = -1;
		if (!strcmp(name, "fuse") && fd_fuse < 0)
			fd_fuse = fd;
		else if (!strcmp(name, "stage") && fd_stage < 0)
			fd_stage = fd;
		else if (!strcmp(name, "state") && fd_state < 0)
			fd_state = fd;
		else if (!strncmp(name, "fuse-clone.", 11) && fs.n_old < FDS_MAX_OLD &&
			 (fs.old_names[fs.n_old] = strdup(name)) != NULL)
			fs.old_fds[fs.n_old++] = fd;
		else
			fds[i] = fd;   /* not ours, or one too many: closed below */
	}
	if (fd_fuse < 0) {
		/* a store without a connection: nothing to take over; drop what is there */
		if (fd_stage >= 0)
			store_remove("stage");
		if (fd_state >= 0)
			store_remove("state");
		goto none;
	}
	if (fd_state >= 0)
		mem = map_state(fd_state, false);
	if (!mem || mem->magic != FDS_STATE_MAGIC || atomic_load(&mem->seq) == 0) {
		pfs_log(LOG_WARNING, "fd store: the connection came without a usable state: mounting anew");
		goto drop;
	}
	memcpy(st, &mem->copy[atomic_load(&mem->seq) & 1], sizeof(*st));
	if (pfs_hstate_check(st, sizeof(*st)) != 0) {
		pfs_log(LOG_WARNING, "fd store: the stored state is not one this daemon can use: mounting anew");
		goto drop;
	}
	fs.on = true;
	fs.state_fd = fd_state;
	fs.mem = mem;
	*fuse_fd = fd_fuse;
	*shm_fd = fd_stage;
	ret = 1;
	goto out;
drop:
	pfs_fdstore_drop_stored();
	if (mem)
		munmap(mem, sizeof(*mem));
	close(fd_fuse);
	if (fd_state >= 0)
		close(fd_state);
	fd_state = -1;
none:
	if (fd_stage >= 0)
		close(fd_stage);
	if (fd_state >= 0)
		close(fd_state);
	forget_old();
out:
	if (fds)
		close_listed(n, fds);
	free(fds);
	if (names) {
		for (int i = 0; i < n; i++)
			free(names[i]);
		free(names);
	}
	return ret;
}

void pfs_fdstore_drop_stored(void)
{
	store_remove("fuse");
	store_remove("stage");
	store_remove("state");
	for (int i = 0; i < fs.n_old; i++)
		store_remove(fs.old_names[i]);
	if (fs.clone_name[0])
		store_remove(fs.clone_name);
}

void pfs_fdstore_drop(void)
{
	pfs_fdstore_drop_stored();
	forget_old();
	if (fs.mem)
		munmap(fs.mem, sizeof(*fs.mem));
	fs.mem = NULL;
	if (fs.state_fd >= 0)
		close(fs.state_fd);
	fs.state_fd = -1;
	fs.on = false;
}

int pfs_fdstore_hold(int fuse_fd, int shm_fd, char *err, size_t errlen)
{
	struct pfs_hstate *st;
	int ret;

	snprintf(fs.clone_name, sizeof(fs.clone_name), "fuse-clone.%ld", (long)getpid());
	fs.state_fd = memfd_create("pcachefs-state", MFD_CLOEXEC);
	if (fs.state_fd < 0 || !(fs.mem = map_state(fs.state_fd, true))) {
		snprintf(err, errlen, "state memory: %s", strerror(errno));
		goto fail;
	}
	fs.mem->magic = FDS_STATE_MAGIC;
	atomic_store(&fs.mem->seq, 0);
	fs.on = true;
	st = malloc(sizeof(*st));
	if (!st) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	pfs_hstate_build(st);
	pfs_fdstore_put_state(st);
	free(st);
	/* the state first: a connection in the store always comes with one */
	ret = store(fs.state_fd, "state");
	if (ret >= 0 && shm_fd >= 0)
		ret = store(shm_fd, "stage");
	if (ret >= 0)
		ret = store(fuse_fd, "fuse");
	if (ret < 0) {
		snprintf(err, errlen, "FDSTORE=1 on $NOTIFY_SOCKET: %s", strerror(-ret));
		goto fail;
	}
	if (ret == 0) {
		snprintf(err, errlen, "$NOTIFY_SOCKET is not set");
		goto fail;
	}
	return 0;
fail:
	pfs_fdstore_drop();
	return -1;
}

void pfs_fdstore_put_state(const struct pfs_hstate *st)
{
	uint64_t seq;

	if (!fs.mem)
		return;
	pthread_mutex_lock(&fs.mu);
	seq = atomic_load_explicit(&fs.mem->seq, memory_order_relaxed);
	memcpy(&fs.mem->copy[(seq + 1) & 1], st, sizeof(*st));
	atomic_store_explicit(&fs.mem->seq, seq + 1, memory_order_release);
	pthread_mutex_unlock(&fs.mu);
}

int pfs_fdstore_add_clone(int fd)
{
	int ret;

	if (!fs.on)
		return 0;
	ret = store(fd, fs.clone_name);
	return ret < 0 ? ret : 0;
}

void pfs_fdstore_resent(void)
{
	for (int i = 0; i < fs.n_old; i++) {
		/* several fds share a name: one removal takes them all */
		bool seen = false;

		for (int j = 0; j < i && !seen; j++)
			seen = !strcmp(fs.old_names[j], fs.old_names[i]);
		if (!seen)
			store_remove(fs.old_names[i]);
	}
	forget_old();
}

void pfs_fdstore_release(void)
{
	if (!fs.on)
		return;
	pfs_fdstore_drop();
}

int pfs_fdstore_exec_fds(int fuse_fd, int shm_fd)
{
	int src[3] = { fuse_fd, shm_fd, fs.state_fd }, tmp[3] = { -1, -1, -1 }, n = 0;
	const char *all[3] = { "fuse", "stage", "state" };
	char names[64] = "", buf[32];

	if (!fs.on || fuse_fd < 0 || fs.state_fd < 0)
		return -EINVAL;
	/* this daemon answered every request it read: its clones are not needed any more */
	store_remove(fs.clone_name);
	/* out of the way of 3..5 first, then in place (dup2 clears close-on-exec) */
	for (int i = 0; i < 3; i++) {
		if (src[i] < 0)
			continue;
		tmp[n] = fcntl(src[i], F_DUPFD_CLOEXEC, 64);
		if (tmp[n] < 0)
			return -errno;
		if (names[0])
			strcat(names, ":");
		strcat(names, all[i]);
		n++;
	}
	for (int i = 0; i < n; i++) {
		if (dup2(tmp[i], SD_LISTEN_FDS_START + i) < 0)
			return -errno;
		close(tmp[i]);
	}
	snprintf(buf, sizeof(buf), "%ld", (long)getpid());
	setenv("LISTEN_PID", buf, 1);
	snprintf(buf, sizeof(buf), "%d", n);
	setenv("LISTEN_FDS", buf, 1);
	setenv("LISTEN_FDNAMES", names, 1);
	return 0;
}
