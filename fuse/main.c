/*
 * main.c -- pcachefs, the FUSE daemon: serves disk images through a persistent cache
 * (include/pcache/cache.h). One regular file per image under the mount point, plus the .pcache/
 * control tree. See contrib/pcachefs.8 for the user's view.
 *
 *   pcachefs -o cache=/dev/pmem0 -o image=vm1:/var/lib/images/vm1.raw /mnt/pcache
 *
 * Caveats: images never change size through the mount; shared mmap of an image needs
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
#include <sys/stat.h>
#include <unistd.h>

static pthread_t main_thread;
static atomic_int in_loop;          /* main thread is (about to be) in the session loop */
static atomic_int stop_requested;   /* a termination signal arrived */
/* guards in_loop's 1 -> 0 transition against the signal thread's use of the engine */
static pthread_mutex_t stop_lock = PTHREAD_MUTEX_INITIALIZER;
static int ready_fd = -1;   /* write end of the daemonize pipe (child), -1 in the foreground */

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
	if (atomic_load(&in_loop) && fuse_session_exited(pfs.se)) {
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

int main(int argc, char **argv)
{
	static struct pfs_opts opts;
	struct fuse_args fargs;
	pthread_t sig_thread;
	int ret = 1, pr, stop_ret;
	bool cache_existed;

	main_thread = pthread_self();
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
	if (pcache_fuse_session_mount(pfs.se, opts.mountpoint, &pfs.scfg) != 0) {
		fprintf(stderr, "pcachefs: cannot mount on %s\n", opts.mountpoint);
		goto out_images;
	}
	/* from now on a backing on our own mount is refused by device number too */
	atomic_store(&pfs.mnt_dev, pfs_mount_dev(opts.mountpoint));
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
	pfs_log(LOG_INFO, "unmounting %s", opts.mountpoint);
	pfs_notify_stopping();

	fuse_session_unmount(pfs.se);
out_images:
	pfs_images_release();
out_engine:
	stop_ret = pcache_cache_stop(pfs.cache, opts.drain_on_exit);
	if (stop_ret) {
		pfs_log(LOG_ERR, "stopping the cache: %s", strerror(-stop_ret));
		ret = 1;
	}
out_notify:
	pfs_notify_exit();
	pthread_cancel(sig_thread);
	pthread_join(sig_thread, NULL);
out_report:
	daemonize_done(0);   /* no-op once reported */
out_session:
	fuse_session_destroy(pfs.se);
out_args:
	fuse_opt_free_args(&fargs);
	pfs_opts_free(&opts);
	return ret;
}
