/*
 * main.c -- pcachefs, the FUSE daemon: serves disk images through a persistent cache
 * (include/pcache/cache.h). One regular file per image under the mount point, plus the .pcache/
 * control tree. See contrib/pcachefs.8 for the user's view.
 *
 *   pcachefs -o cache=/dev/pmem0 -o image=vm1:/var/lib/images/vm1.raw /mnt/pcache
 *
 * Caveats: images do not shrink, block devices do not grow; shared mmap of an image needs
 * -o kernel_cache (direct I/O files cannot be mmapped with libfuse 3.14).
 * Build: cc ... $(pkg-config --cflags --libs fuse3 liburing libpmem2) (see the Makefile).
 *
 * Start-up order and why (main()):
 *   parse + validate options      (nothing touched on disk; errors: one line, exit 1)
 *   create the FUSE session       (libfuse validates its own options; still nothing on disk)
 *   fork unless -f                (before any thread exists; the parent waits for the child's
 *                                  verdict on a pipe and exits 0 or 1 accordingly)
 *   open $NOTIFY_SOCKET           (if set: systemd's notify protocol, notify.c; STATUS=)
 *   start the engine              (opens/locks/formats the cache device, replays the log)
 *   attach images                 (named ones, then every image the device knows)
 *   mount, report ok              (READY=1 to the service manager, then the parent exits 0)
 *   session loop                  (until unmount, SIGTERM, SIGINT or SIGHUP)
 *   STOPPING=1, unmount, release images, pcache_cache_stop() (persists staging ksets;
 *                                  -o drain_on_exit writes back everything first), destroy
 *                                  the session
 *
 * Invariants:
 *  1. Any failure before the mount is live unwinds what was done: images this run added to the
 *     cache device's table are removed again, and the engine is stopped (its stop persists only
 *     what is already valid), so a failed start leaves the device as it was.
 *  2. SIGTERM, SIGINT and SIGHUP are blocked in every thread (the mask is set before the first
 *     thread exists and inherited by all: engine, backing, FUSE workers) except the signal
 *     thread, which sigwait()s for them, ends the session and, once the main thread is in the
 *     session loop, interrupts it with SIGUSR2 (no-op handler, no SA_RESTART): the loop sees
 *     the session exited and returns. A signal that arrives during start-up makes the start
 *     stop before mounting.
 *  3. Stopping never waits for cache space or a drain: libfuse joins its workers before the
 *     loop returns, so once the session has ended (a signal, or the kernel ending the
 *     connection: umount -f, an abort) the signal thread, which also polls for that end, calls
 *     pcache_cache_abort_waits() -- writers waiting for space get EIO (they were never
 *     acknowledged), .pcache/flush drains end -- and the workers can return. stop_lock keeps
 *     the engine alive while it does (the main thread takes it to leave the loop state).
 */
#include "daemon_i.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static pthread_t main_thread;
static atomic_int in_loop;          /* main thread is (about to be) in the session loop */
static atomic_int stop_requested;   /* a termination signal arrived */
/* guards in_loop's 1 -> 0 transition against the signal thread's use of the engine */
static pthread_mutex_t stop_lock = PTHREAD_MUTEX_INITIALIZER;
static int ready_fd = -1;   /* write end of the daemonize pipe (child), -1 in the foreground */
/* A hand-over was asked for: HANDOVER_KEEPER (a new daemon asked the keeper), HANDOVER_EXEC
 * (SIGUSR1: hand over to a fresh start of this program, e.g. after an upgrade). */
enum { HANDOVER_NONE = 0, HANDOVER_KEEPER, HANDOVER_EXEC };
static atomic_int handover;
static char self_exe[4096];  /* this program's path at start (an upgrade replaces the file there) */
static char start_cwd[4096]; /* the working directory at start (relative arguments) */

/*
 * Fork: the parent waits for one status byte from the child (0 = mounted) and exits with it;
 * the child continues in a new session. 0 in the child, exits in the parent.
 */
static int daemonize_start(void)
{
	int fds[2];
	pid_t pid;
	char st;
	ssize_t n;

	if (pipe(fds) != 0) {
		fprintf(stderr, "pcachefs: pipe: %s\n", strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "pcachefs: fork: %s\n", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	if (pid > 0) {
		close(fds[1]);
		do {
			n = read(fds[0], &st, 1);
		} while (n < 0 && errno == EINTR);
		_exit(n == 1 && st == 0 ? 0 : 1);
	}
	close(fds[0]);
	ready_fd = fds[1];
	if (setsid() < 0) {
		fprintf(stderr, "pcachefs: setsid: %s\n", strerror(errno));
		return -1;
	}
	return 0;
}

/* Tell the waiting parent the verdict; on success detach from the terminal. */
static void daemonize_done(int ok)
{
	char st = ok ? 0 : 1;
	int nullfd;

	if (ready_fd < 0)
		return;
	if (ok) {
		if (chdir("/") != 0)
			pfs_log(LOG_WARNING, "chdir /: %s", strerror(errno));
		nullfd = open("/dev/null", O_RDWR);
		if (nullfd >= 0) {
			dup2(nullfd, 0);
			dup2(nullfd, 1);
			dup2(nullfd, 2);
			if (nullfd > 2)
				close(nullfd);
		}
		pfs_log_to_syslog(pfs.opts->mountpoint);
	}
	if (write(ready_fd, &st, 1) != 1)
		pfs_log(LOG_WARNING, "cannot report start-up status");
	close(ready_fd);
	ready_fd = -1;
}

static void term_sigset(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
	sigaddset(set, SIGUSR1);
}

static void wake_handler(int sig)
{
	(void)sig;   /* only interrupts the main thread's blocking call */
}

/* Once the session ended while serving: fail the engine's waits so the workers return (inv. 3). */
static void abort_waits_once(bool *done)
{
	if (*done)
		return;
	pthread_mutex_lock(&stop_lock);
	/* a hand-over lets waiting writers finish: the next daemon does not redo them */
	if (atomic_load(&in_loop) && fuse_session_exited(pfs.se) && !atomic_load(&handover)) {
		pcache_cache_abort_waits(pfs.cache);
		*done = true;
	}
	pthread_mutex_unlock(&stop_lock);
}

/*
 * The signal thread: waits for a termination signal, ends the session, wakes the main thread;
 * every 200 ms it also looks whether the session ended (signal or kernel) to abort the waits.
 */
static void *signal_main(void *arg)
{
	const struct timespec tick = { 0, 200 * 1000 * 1000 };
	bool aborted = false;
	sigset_t set;
	int sig;

	(void)arg;
	term_sigset(&set);
	for (;;) {
		sig = sigtimedwait(&set, NULL, &tick);
		if (sig < 0) {
			abort_waits_once(&aborted);
			continue;
		}
		if (sig == SIGUSR1) {
			if (!atomic_load(&in_loop) || (!pfs_keeper_connected() && !pfs_fdstore_on())) {
				pfs_log(LOG_WARNING, "SIGUSR1: no keeper or fd store holds the connection "
					"(keep_timeout=0, or not serving yet): not handing over");
				continue;
			}
			pfs_log(LOG_INFO, "SIGUSR1: handing over to a new start of %s", self_exe);
			atomic_store(&handover, HANDOVER_EXEC);
			fuse_session_exit(pfs.se);
			pthread_kill(main_thread, SIGUSR2);
			continue;
		}
		pfs_log(LOG_INFO, "signal %d: stopping", sig);
		atomic_store(&stop_requested, 1);
		fuse_session_exit(pfs.se);
		if (atomic_load(&in_loop))
			pthread_kill(main_thread, SIGUSR2);
		abort_waits_once(&aborted);
	}
	return NULL;
}

/* Block the termination signals in this (the only) thread, so every later thread inherits it. */
static int signals_block(void)
{
	struct sigaction sa;
	sigset_t set;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	if (sigaction(SIGPIPE, &sa, NULL) != 0)
		return -errno;
	sa.sa_handler = wake_handler;   /* no SA_RESTART: the interrupted call returns EINTR */
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR2, &sa, NULL) != 0)
		return -errno;
	term_sigset(&set);
	return -pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static int add_fuse_args(struct fuse_args *fa, const struct pfs_opts *o)
{
	char *opt = NULL, *fsname;
	int ret = -1;

	if (fuse_opt_add_arg(fa, "-odefault_permissions") || fuse_opt_add_arg(fa, "-osubtype=pcachefs"))
		return -1;
	fsname = malloc(strlen(o->cache_path) + 8);
	if (!fsname)
		return -1;
	sprintf(fsname, "fsname=%s", o->cache_path);
	if (fuse_opt_add_opt_escaped(&opt, fsname) == 0 && fuse_opt_add_arg(fa, "-o") == 0 &&
	    fuse_opt_add_arg(fa, opt) == 0)
		ret = 0;
	free(opt);
	free(fsname);
	if (!ret && pcache_fuse_session_add_args(fa) != 0)
		ret = -1;
	return ret;
}

/*
 * The engine's staging memory when a keeper holds the connection: a memfd the keeper holds too,
 * so keys staged (writes acknowledged, not yet flushed) outlive a crash of this daemon and the
 * next one logs them. Uses *fd if a take-over brought one, else creates it. NULL: private
 * memory (a warning; the daemon still serves).
 */
static void *stage_shm_map(int *fd)
{
	size_t len = pcache_stage_shm_size();
	struct stat st;
	void *p;

	if (*fd >= 0 && (fstat(*fd, &st) != 0 || (size_t)st.st_size != len)) {
		close(*fd);
		*fd = -1;
	}
	if (*fd < 0) {
		*fd = memfd_create("pcachefs-stage", MFD_CLOEXEC);
		if (*fd < 0 || ftruncate(*fd, (off_t)len) != 0) {
			pfs_log(LOG_WARNING, "staging memory: %s (acknowledged writes not yet flushed are "
				"lost if the daemon dies)", strerror(errno));
			if (*fd >= 0)
				close(*fd);
			*fd = -1;
			return NULL;
		}
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
	if (p == MAP_FAILED) {
		pfs_log(LOG_WARNING, "staging memory: mmap: %s", strerror(errno));
		return NULL;
	}
	return p;
}

static void *stage_shm;   /* the engine's staging memory (stage_shm_map), NULL = private */

static int start_engine(const struct pfs_opts *o)
{
	struct pcache_cache_opts co;
	char err[512] = "";
	int ret;

	memset(&co, 0, sizeof(co));
	co.path = o->cache_path;
	co.create_size = o->cache_size;
	co.format_if_blank = true;
	co.format.seg_size = o->segment_size;
	co.format.max_images = o->max_images;
	co.format.data_crc = o->data_crc;
	if (o->gc_percent >= 0) {
		co.format.gc_percent = (uint32_t)o->gc_percent;
		co.format.set_gc_percent = true;
	}
	co.defer_background = true; /* until every image is attached: a refused start writes nothing */
	co.gc_percent = o->gc_percent;
	co.space_timeout_s = o->space_timeout;
	co.data_crc = o->data_crc;
	co.prefault = true;
	co.stage_shm = stage_shm;

	ret = pcache_cache_start(&co, &pfs.cache, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "pcachefs: cache device %s: %s\n", o->cache_path, err[0] ? err : strerror(-ret));
		pfs.cache = NULL;
	}
	return ret;
}

/*
 * Attach the known images not named with -o image, then the named ones; on failure forget the
 * images this run added. Known images first, so that a named backing reaching the same data as
 * a known image is refused before anything is written to the image table.
 */
static int attach_images(const struct pfs_opts *o)
{
	bool added[PFS_MAX_IMAGE_OPTS] = { false };
	const char *named[PFS_MAX_IMAGE_OPTS], *paths[PFS_MAX_IMAGE_OPTS];
	struct pcache_image_ent *ent = malloc(sizeof(*ent));
	char err[1024];
	int ret = 0, i;

	if (!ent)
		return -ENOMEM;
	for (i = 0; i < o->n_images; i++) {
		named[i] = o->images[i].name;
		paths[i] = o->images[i].path;
	}
	err[0] = '\0';
	ret = pcache_backings_distinct(named, paths, o->n_images, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "pcachefs: %s\n", err);
		free(ent);
		return ret;
	}
	/* images removed while open died with the daemon that held them */
	(void)pfs_dir_purge_hidden();
	ret = pfs_images_attach_known(named, o->n_images, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "pcachefs: attaching the images known to the cache device: %s\n",
			err[0] ? err : strerror(-ret));
		free(ent);
		return ret;
	}
	for (i = 0; i < o->n_images; i++) {
		const struct pfs_image_opt *io = &o->images[i];

		added[i] = pcache_cache_known_image(pfs.cache, io->name, ent) != 0;
		err[0] = '\0';
		ret = pfs_image_attach(io->name, io->path, o->cache_mode, io->rekey, err, sizeof(err));
		if (ret) {
			fprintf(stderr, "pcachefs: image %s (%s): %s\n", io->name, io->path, err[0] ? err : strerror(-ret));
			added[i] = false;
			goto undo;
		}
		if (o->seq_cutoff >= 0 || o->max_share >= 0) {
			struct pcache_image *img = pcache_image_get(pfs.cache, io->name);
			const char *what = "sequential_cutoff";

			ret = img ? 0 : -ENOENT;
			if (!ret && o->seq_cutoff >= 0)
				ret = pcache_image_set_seq_cutoff(img, (uint64_t)o->seq_cutoff);
			if (!ret && o->max_share >= 0) {
				what = "max_share";
				ret = pcache_image_set_max_share(img, (uint32_t)o->max_share);
			}
			if (img)
				pcache_image_put(img);
			if (ret) {
				fprintf(stderr, "pcachefs: image %s: %s: %s\n", io->name, what, strerror(-ret));
				goto undo;
			}
		}
	}
	if (o->image_dir) {
		/* after the named images: a file of the directory with a taken name stays out */
		ret = pfs_dir_open(err, sizeof(err));
		if (ret) {
			fprintf(stderr, "pcachefs: %s\n", err);
			i = o->n_images;
			goto undo;
		}
		pfs_dir_scan();
	}
	free(ent);
	return 0;
undo:
	while (--i >= 0) {
		if (added[i] && pfs_image_detach(o->images[i].name, err, sizeof(err)) != 0)
			fprintf(stderr, "pcachefs: undo: %s\n", err);
	}
	free(ent);
	return ret;
}

/*
 * The session loop ended for a hand-over: stop without unmounting. The keeper keeps the
 * connection; it gives it to the next daemon once this one has closed its end, which is after
 * the engine stopped (the cache device and the backings are free for the next daemon).
 * HANDOVER_EXEC then starts this program again, with the same arguments, in this process.
 * Returns the exit status (when it does not exec).
 */
static int hand_over(const struct pfs_opts *o, char **argv, int shm_fd)
{
	struct pfs_hstate *st = malloc(sizeof(*st));
	struct timespec t0, t1;
	int ret = 0, sret;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	pfs_notify_stopping();
	if (st)
		pfs_hstate_build(st);   /* before the slots are released */
	pfs_images_release();
	sret = pcache_cache_stop(pfs.cache, false);
	pfs.cache = NULL;
	if (sret) {
		pfs_log(LOG_ERR, "stopping the cache: %s", strerror(-sret));
		ret = 1;
	}
	if (st && pfs_fdstore_on())
		pfs_fdstore_put_state(st);
	else if (st && pfs_keeper_send(PFS_KMSG_STATE, -1, st, sizeof(*st)) != 0)
		pfs_log(LOG_WARNING, "cannot send the last state to the keeper");
	free(st);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	pfs_log(LOG_INFO, "handed %s over after %.3f s of stopping", o->mountpoint,
		(double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	if (atomic_load(&handover) != HANDOVER_EXEC)
		return ret;
	pfs_keeper_detach();
	if (pfs_fdstore_on()) {
		/* the next start finds the connection where the manager would put it (fdstore.c) */
		int fd = fcntl(fuse_session_fd(pfs.se), F_DUPFD_CLOEXEC, 64);
		int eret = fd < 0 ? -errno : 0;

		fuse_session_destroy(pfs.se);
		pfs.se = NULL;
		if (!eret)
			eret = pfs_fdstore_exec_fds(fd, shm_fd);
		if (fd >= 0)
			close(fd);
		if (eret) {
			pfs_log(LOG_ERR, "hand-over: cannot pass the connection on: %s (the fd store "
				"keeps it for the next start)", strerror(-eret));
			return 1;
		}
	} else {
		fuse_session_destroy(pfs.se);   /* closes this daemon's fd; the keeper holds the connection */
		pfs.se = NULL;
	}
	if (start_cwd[0] && chdir(start_cwd) != 0)
		pfs_log(LOG_WARNING, "chdir %s: %s", start_cwd, strerror(errno));
	{
		sigset_t none;

		sigemptyset(&none);
		pthread_sigmask(SIG_SETMASK, &none, NULL);
	}
	execv(self_exe, argv);
	pfs_log(LOG_ERR, "exec %s: %s (the keeper holds the mount for keep_timeout seconds)", self_exe,
		strerror(errno));
	return 1;
}

/* Waits for the keeper to ask for a hand-over (a new daemon was started with -o takeover). */
static void *keeper_thread_main(void *arg)
{
	(void)arg;
	if (pfs_keeper_wait_handover()) {
		pfs_log(LOG_INFO, "a new daemon takes %s over: handing over", pfs.opts->mountpoint);
		atomic_store(&handover, HANDOVER_KEEPER);
		fuse_session_exit(pfs.se);
		if (atomic_load(&in_loop))
			pthread_kill(main_thread, SIGUSR2);
	} else if (!atomic_load(&handover) && !atomic_load(&stop_requested) && atomic_load(&in_loop)) {
		pfs_log(LOG_WARNING, "the keeper is gone: a crash of this daemon now ends the mount");
	}
	return NULL;
}

/*
 * Ask for a kept connection of the mount point: the service manager's fd store with
 * -o fdstore (fdstore.c), else a keeper (keeper.c). 1: taken (*fd, slots reserved), 0: mount
 * anew, -1: refused (message printed).
 */
static int take_over(const struct pfs_opts *o, int *fd, int *shm_fd)
{
	const char *from = o->fdstore ? "the fd store" : "the keeper";
	struct pfs_hstate *st;
	char err[1200] = "";
	uint64_t dev;
	int ret;

	if (o->keep_timeout == 0 && !o->takeover && !o->fdstore)
		return 0;
	st = malloc(sizeof(*st));
	if (!st) {
		fprintf(stderr, "pcachefs: out of memory\n");
		return -1;
	}
	if (o->fdstore)
		ret = pfs_fdstore_take(fd, shm_fd, st, err, sizeof(err));
	else
		ret = pfs_keeper_take(o->mountpoint, o->cache_path, o->takeover, fd, shm_fd, st, err, sizeof(err));
	if (ret <= 0) {
		if (ret < 0)
			fprintf(stderr, "pcachefs: %s: %s\n", o->mountpoint, err);
		free(st);
		return ret < 0 ? -1 : 0;
	}
	dev = pfs_mount_dev(o->mountpoint);
	/* another cache device would give the kernel's inodes to other images: never take that
	 * (the keeper compares the cache path itself) */
	if (dev == 0 || dev != st->mnt_dev || strcmp(st->cache_path, o->cache_path) != 0) {
		pfs_log(LOG_WARNING, "the connection %s held is not the mount of %s on %s any more: "
			"mounting anew", from, o->cache_path, o->mountpoint);
		if (o->fdstore)
			pfs_fdstore_drop();
		else
			pfs_keeper_drop();
		close(*fd);
		*fd = -1;
		if (*shm_fd >= 0)
			close(*shm_fd);
		*shm_fd = -1;
		free(st);
		return 0;
	}
	pfs_hstate_reserve_slots(st);
	atomic_store(&pfs.mnt_dev, dev);
	pfs.taken_over = true;
	pfs_log(LOG_INFO, "taking %s over from pid %u (%s)", o->mountpoint, st->owner_pid, from);
	free(st);
	return 1;
}

/* Unmount a mount this daemon took over (libfuse did not mount it, so it does not unmount it). */
static void unmount_adopted(const char *mountpoint)
{
	pid_t pid;
	int st;

	if (geteuid() == 0 && umount2(mountpoint, MNT_DETACH) == 0)
		return;
	pid = fork();
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", "-u", "-q", "-z", "--", mountpoint, (char *)NULL);
		_exit(127);
	}
	if (pid > 0)
		waitpid(pid, &st, 0);
}

int main(int argc, char **argv)
{
	static struct pfs_opts opts;
	struct fuse_args fargs;
	pthread_t sig_thread, keeper_thread;
	bool keeper_thread_started = false;
	int ret = 1, pr, stop_ret, taken = 0, kept_fd = -1, shm_fd = -1;
	bool cache_existed;

	main_thread = pthread_self();
	if (argc >= 2 && !strcmp(argv[1], "--keeper"))
		return pfs_keeper_main(argc, argv);
	{
		ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);

		self_exe[n > 0 ? n : 0] = '\0';
		if (!getcwd(start_cwd, sizeof(start_cwd)))
			start_cwd[0] = '\0';
	}
	if (signals_block() != 0) {
		fprintf(stderr, "pcachefs: cannot set up signal handling\n");
		return 1;
	}
	pr = pfs_opts_parse(argc, argv, &opts, &fargs);
	if (pr == PFS_PARSE_EXIT_OK) {
		ret = 0;
		goto out_args;
	}
	if (pr != PFS_PARSE_OK)
		goto out_args;
	pfs.opts = &opts;
	pfs_log_init(opts.debug);   /* before any thread: the engine's lines go where the daemon's go */
	pfs.start_time = time(NULL);
	pfs.uid = getuid();
	pfs.gid = getgid();
	pcache_fuse_session_cfg_default(&pfs.scfg);
	pfs.scfg.single_thread = opts.single_thread;
	pfs.scfg.max_threads = opts.max_threads;
	pfs.scfg.parallel_writes = !opts.no_pdw;
	if (opts.keep_timeout > 0 || opts.takeover || opts.fdstore)
		pfs_handover_hooks(&pfs.scfg);
	if (pthread_mutex_init(&pfs.lock, NULL) != 0)
		goto out_args;
	for (int i = 0; i < PFS_MAX_SLOTS; i++) {
		if (pfs_rangelock_init(&pfs.slots[i].rl) != 0)
			goto out_args;
	}
	if (add_fuse_args(&fargs, &opts) != 0) {
		fprintf(stderr, "pcachefs: out of memory\n");
		goto out_args;
	}

	pfs.se = fuse_session_new(&fargs, &pfs_ops, sizeof(pfs_ops), NULL);
	if (!pfs.se)
		goto out_args;   /* libfuse printed why (e.g. an unknown option) */
	if (!opts.foreground && daemonize_start() != 0)
		goto out_session;
	/* after the fork: threads do not survive it */
	if (pthread_create(&sig_thread, NULL, signal_main, NULL) != 0) {
		fprintf(stderr, "pcachefs: cannot start the signal thread\n");
		goto out_report;
	}
	pfs_notify_init();   /* a daemon that cannot notify still serves */
	pfs_notify("STATUS=starting: opening %s, replaying its log", opts.cache_path);
	taken = take_over(&opts, &kept_fd, &shm_fd);
	if (taken < 0)
		goto out_notify;
	if (opts.keep_timeout > 0 || opts.fdstore || taken)
		stage_shm = stage_shm_map(&shm_fd);
	cache_existed = access(opts.cache_path, F_OK) == 0;
	if (start_engine(&opts) != 0)
		goto out_notify;
	if (attach_images(&opts) != 0) {
		/* a refused first start leaves no cache file behind (unlinked while still locked) */
		if (!cache_existed)
			unlink(opts.cache_path);
		goto out_engine;
	}
	{
		char err[256];

		if (pcache_cache_start_background(pfs.cache, err, sizeof(err)) != 0) {
			fprintf(stderr, "pcachefs: %s\n", err);
			goto out_images;
		}
	}
	if (atomic_load(&stop_requested)) {
		fprintf(stderr, "pcachefs: stopped by a signal during start-up\n");
		goto out_images;
	}
	if (taken) {
		size_t init_len;
		const void *init = pfs_handover_init(&init_len);

		pr = pcache_fuse_session_adopt(pfs.se, kept_fd, init, init_len, &pfs.scfg);
		if (fuse_session_fd(pfs.se) == kept_fd)
			kept_fd = -1;   /* the session owns it now */
		if (pr != 0) {
			fprintf(stderr, "pcachefs: cannot serve the kept connection of %s: %s\n",
				opts.mountpoint, strerror(-pr));
			goto out_images;
		}
		/* requests the old daemon read and never answered come again */
		pr = pfs_handover_resend(fuse_session_fd(pfs.se));
		if (pr != 0)
			pfs_log(LOG_WARNING, "resend of unanswered requests failed: %s (their callers get "
				"no answer; kernel 6.9 or later is needed)", strerror(-pr));
		pfs_keeper_resent();
		pfs_fdstore_resent();
		pr = 0;
	} else {
		if (pcache_fuse_session_mount(pfs.se, opts.mountpoint, &pfs.scfg) != 0) {
			fprintf(stderr, "pcachefs: cannot mount on %s\n", opts.mountpoint);
			goto out_images;
		}
		/* from now on a backing on our own mount is refused by device number too */
		atomic_store(&pfs.mnt_dev, pfs_mount_dev(opts.mountpoint));
		if (opts.fdstore) {
			char err[512] = "";

			if (pfs_fdstore_hold(fuse_session_fd(pfs.se), shm_fd, err, sizeof(err)) != 0)
				pfs_log(LOG_WARNING, "fd store: %s: a crash of this daemon ends the mount", err);
		} else if (opts.keep_timeout > 0) {
			char err[512] = "";

			if (pfs_keeper_start(opts.mountpoint, fuse_session_fd(pfs.se), opts.keep_timeout,
					     !opts.foreground, err, sizeof(err)) != 0)
				pfs_log(LOG_WARNING, "no keeper (%s): a crash of this daemon ends the mount", err);
			else if (shm_fd >= 0 && pfs_keeper_send(PFS_KMSG_SHM, shm_fd, NULL, 0) != 0)
				pfs_log(LOG_WARNING, "cannot hand the staging memory to the keeper");
		}
	}
	if (pfs_keeper_connected() && pthread_create(&keeper_thread, NULL, keeper_thread_main, NULL) == 0)
		keeper_thread_started = true;
	pfs_notify_ready(!opts.foreground);
	daemonize_done(1);
	pfs_log(LOG_INFO, "mounted %s on %s (%s threads)", opts.cache_path, opts.mountpoint,
		opts.single_thread ? "single" : "multiple");

	atomic_store(&in_loop, 1);
	/* a signal between the exit check above and here already ended the session: the loop returns */
	pr = pcache_fuse_session_loop(pfs.se, &pfs.scfg);
	pthread_mutex_lock(&stop_lock);
	atomic_store(&in_loop, 0);
	pthread_mutex_unlock(&stop_lock);
	/* the single-threaded loop reports the interruption that ended it as -EINTR */
	ret = pr < 0 && !(pr == -EINTR && atomic_load(&stop_requested)) ? 1 : 0;
	if (ret)
		pfs_log(LOG_ERR, "session loop: %s", strerror(-pr));
	if (atomic_load(&handover)) {
		ret = hand_over(&opts, argv, shm_fd);
		goto out_notify;
	}
	pfs_log(LOG_INFO, "unmounting %s", opts.mountpoint);
	pfs_notify_stopping();

	pfs_keeper_release();
	pfs_fdstore_release();
	if (taken)
		unmount_adopted(opts.mountpoint);
	else
		fuse_session_unmount(pfs.se);
out_images:
	pfs_images_release();
	pfs_dir_close();
out_engine:
	stop_ret = pcache_cache_stop(pfs.cache, opts.drain_on_exit);
	if (stop_ret) {
		pfs_log(LOG_ERR, "stopping the cache: %s", strerror(-stop_ret));
		ret = 1;
	}
out_notify:
	pfs_keeper_detach();
	if (keeper_thread_started)
		pthread_join(keeper_thread, NULL);
	pfs_notify_exit();
	pthread_cancel(sig_thread);
	pthread_join(sig_thread, NULL);
out_report:
	daemonize_done(0);   /* no-op once reported */
out_session:
	if (pfs.se)
		fuse_session_destroy(pfs.se);
	if (kept_fd >= 0)
		close(kept_fd);
	if (shm_fd >= 0)
		close(shm_fd);
out_args:
	fuse_opt_free_args(&fargs);
	pfs_opts_free(&opts);
	return ret;
}
