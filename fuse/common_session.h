/*
 * common_session.h -- the FUSE session settings shared by pcachefs and the test/benchmark
 * filesystems (tests/tools/ceilingfs.c), so the measured FUSE ceiling uses exactly the settings
 * the daemon uses.
 *
 * Depends only on libfuse 3.14 (low-level API). Nothing here knows about the cache engine.
 *
 * What it sets up (the FUSE ceiling measured with exactly these settings is in BENCHMARKS.md):
 *   - max_write and max_read 1 MiB, max_background raised, no splice;
 *   - a session loop that is multi-threaded (one cloned /dev/fuse fd per worker, max_threads =
 *     number of CPUs) or single-threaded (-s);
 *   - FOPEN_PARALLEL_DIRECT_WRITES on every FUSE_OPEN reply that has FOPEN_DIRECT_IO: libfuse
 *     3.14.0 has no fuse_file_info field for it, so the flag is added to the reply on its way to
 *     the kernel by our own writev (fuse_session_custom_io).
 */
#ifndef PCACHE_FUSE_COMMON_SESSION_H
#define PCACHE_FUSE_COMMON_SESSION_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stdint.h>

#define PCACHE_FUSE_MAX_IO (1u << 20)   /* max_write and max_read */

struct pcache_fuse_session_cfg {
	bool single_thread;        /* -s: fuse_session_loop() instead of the multi-threaded loop */
	bool clone_fd;             /* one /dev/fuse fd per worker thread (default on) */
	unsigned int max_threads;  /* 0 = number of online CPUs */
	bool parallel_writes;      /* add FOPEN_PARALLEL_DIRECT_WRITES to direct-io opens (default on) */
	unsigned int max_background; /* 0 = 64 */
	/* Optional hooks (NULL = none). on_init: the FUSE_INIT request as read, before libfuse
	 * handles it. on_reader_fd: a thread reads requests from fd for the first time (a
	 * worker's cloned fd, or the session fd), called before that read. */
	void (*on_init)(const void *req, size_t len);
	void (*on_reader_fd)(int fd);
};

/* Defaults: multi-threaded, clone_fd, max_threads = CPUs, parallel direct writes. */
void pcache_fuse_session_cfg_default(struct pcache_fuse_session_cfg *cfg);

/*
 * Add the mount options every pcachefs-style session needs (max_read) to args before
 * fuse_session_new(). 0 or -ENOMEM.
 */
int pcache_fuse_session_add_args(struct fuse_args *args);

/*
 * Call from the filesystem's init() op: sets max_write, max_readahead, max_background and the
 * capability bits (no splice, async direct I/O).
 */
void pcache_fuse_session_init_conn(const struct pcache_fuse_session_cfg *cfg, struct fuse_conn_info *conn);

/*
 * Mount se on mountpoint and install the custom writev (parallel direct writes). 0 or -errno
 * (libfuse prints its own message on a mount failure).
 */
int pcache_fuse_session_mount(struct fuse_session *se, const char *mountpoint,
			      const struct pcache_fuse_session_cfg *cfg);

/*
 * Serve a connection an earlier daemon mounted and initialised: use fd (/dev/fuse, already
 * mounted) as the session's fd with the custom I/O installed, then feed the INIT request that
 * daemon answered (init, len bytes as the kernel sent it) through libfuse, so the session is in
 * the negotiated state; its reply is swallowed (the kernel got one already). 0 or -errno.
 */
int pcache_fuse_session_adopt(struct fuse_session *se, int fd, const void *init, size_t len,
			      const struct pcache_fuse_session_cfg *cfg);

/* Run the session loop (blocks until unmount or fuse_session_exit()). Returns its result. */
int pcache_fuse_session_loop(struct fuse_session *se, const struct pcache_fuse_session_cfg *cfg);

/* Requests the kernel sent again after FUSE_NOTIFY_RESEND (unique with bit 63 set). */
uint64_t pcache_fuse_session_resent_count(void);

/* Number of FUSE_OPEN replies that got FOPEN_PARALLEL_DIRECT_WRITES added (for tests/status). */
uint64_t pcache_fuse_session_pdw_count(void);

#endif
