/*
 * daemon_i.h -- private interface between the files of the pcachefs daemon (fuse/main.c,
 * opts.c, ops.c, nodes.c, images.c, ctl.c, knobs.c, log.c, notify.c, rangelock.c). Nothing
 * outside fuse/ (and the daemon's unit tests) includes it.
 *
 * Lock order (outermost first): pfs.lock (image slots, attach/detach) -> a range lock of one
 * image (rangelock.c) -> engine locks (inside core/). Never hold pfs.lock across engine I/O;
 * detach holds it across pcache_image_detach only (it takes no FUSE locks); attach does not
 * hold it while the engine opens the backing (the path may lead into this very mount).
 * No lock is held across fuse_reply_*().
 */
#ifndef PCACHE_FUSE_DAEMON_I_H
#define PCACHE_FUSE_DAEMON_I_H

#include "common_session.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <syslog.h>
#include <time.h>

#include "pcache/cache.h"
#include "pcache/util.h"

#define PFS_VERSION "0.1"
#define PFS_MAX_IMAGE_OPTS ((int)PCACHE_MAX_IMAGES)
#define PFS_KEEP_TIMEOUT_DEFAULT 60u

/* ---- tunables as text (knobs.c) ----------------------------------------------------------- */

/* The knob called name (its control file's name), or -EINVAL. */
int pfs_knob_by_name(const char *name);
const char *pfs_knob_name(enum pcache_knob k);
/* One decimal number (blanks around it, one trailing newline) at most max: 0 or -EINVAL. */
int pfs_knob_parse(const char *s, uint64_t max, uint64_t *v);
/* Set / read a cache knob by name as text ("N\n"); -EINVAL: bad name or value, nothing set. */
int pfs_knob_set(struct pcache_cache *c, const char *name, const char *text);
int pfs_knob_get(struct pcache_cache *c, const char *name, char *buf, size_t len);
/* Set an image's cache mode by name (writeback, writethrough, writearound). */
int pfs_mode_set(struct pcache_image *img, const char *text);
/* Set an image's sequential cutoff from a size ("4M", "0" = none; one trailing newline). */
int pfs_seq_cutoff_set(struct pcache_image *img, const char *text);
/* "1"/"0": the image grows past its end or not (-EINVAL: not 0/1, or a block device). */
int pfs_growable_set(struct pcache_image *img, const char *text);
/* .pcache/images/NAME/max_share: a percent 0..100 (0 = no cap). */
int pfs_max_share_set(struct pcache_image *img, const char *text);

/* ---- options (opts.c) --------------------------------------------------------------------- */

struct pfs_image_opt {
	char *name;
	char *path;     /* absolute after validation, symlinks kept (stored as the user named it) */
	bool rekey;     /* -o rekey=NAME */
};

struct pfs_opts {
	char *cache_path;          /* absolute after validation */
	char *image_dir;           /* -o image_dir=DIR: absolute and resolved after validation */
	uint32_t max_images;       /* -o max_images=N: format time (0 = one per MiB, 64..512) */
	uint64_t cache_size;       /* -o cache_size: create a missing cache file (0 = no) */
	uint64_t segment_size;     /* -o segment_size: format time */
	int gc_percent;            /* -1 = keep persisted */
	int space_timeout;         /* -o space_timeout=SECONDS; -1 = the engine's default */
	int cache_mode;            /* -1 = keep (new images: writeback) */
	int64_t seq_cutoff;        /* -o sequential_cutoff=SIZE for the named images; -1 = keep */
	int max_share;             /* -o max_share=PERCENT for the named images; -1 = keep */
	bool data_crc;
	bool allow_other;
	bool kernel_cache;
	bool drain_on_exit;
	bool foreground;
	bool debug;
	bool single_thread;
	bool no_pdw;               /* -o no_parallel_writes (benchmark switch) */
	unsigned int keep_timeout; /* -o keep_timeout=SECONDS (0 = no keeper) */
	bool takeover;             /* -o takeover: ask the serving daemon to hand over */
	bool fdstore;              /* the service manager's fd store keeps the connection (fdstore.c) */
	unsigned int max_threads;
	char *mountpoint;
	int n_images;
	struct pfs_image_opt images[PFS_MAX_IMAGE_OPTS];
};

enum pfs_parse_result { PFS_PARSE_OK = 0, PFS_PARSE_EXIT_OK = 1, PFS_PARSE_ERROR = -1 };

/*
 * Parse argv into o and the leftover libfuse arguments into fargs (mount options such as
 * allow_other, fsname). Prints a one-line error and returns PFS_PARSE_ERROR on bad input;
 * PFS_PARSE_EXIT_OK after --help/--version. Validates everything that can be checked without
 * touching the cache device (names, paths, sizes, duplicates).
 */
int pfs_opts_parse(int argc, char **argv, struct pfs_opts *o, struct fuse_args *fargs);
void pfs_opts_free(struct pfs_opts *o);
/* path made absolute against the working directory, not resolved; malloc'ed, NULL on ENOMEM. */
char *pfs_path_absolute(const char *path);
/* true if path (absolute) names dir or something below it, compared lexically. */
bool pfs_path_under(const char *path, const char *dir);

/* ---- logging (log.c) ---------------------------------------------------------------------- */

/* Make the daemon the engine's log sink: stderr for now; DEBUG lines only with debug. Call
 * once, before the first thread that logs. */
void pfs_log_init(bool debug);
/* From now on to syslog (ident pcachefs, facility daemon, the mount point in each line), on
 * /dev/log or $PCACHEFS_SYSLOG_SOCKET (tests). Called once daemonized. */
void pfs_log_to_syslog(const char *mountpoint);
/* One line at a syslog priority (LOG_ERR ... LOG_DEBUG), rate limited like the engine's. */
void pfs_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- service manager notifications (notify.c) ---------------------------------------------- */

/*
 * Open $NOTIFY_SOCKET if it is set; call once, after the fork. 0 (also without the variable),
 * or -errno after a log line: the daemon then runs without notifying, never fails for it.
 */
int pfs_notify_init(void);
/* Send one message of newline-separated VAR=VALUE fields; a no-op without the socket. */
void pfs_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The mount is live: READY=1 (with MAINPID= when daemonized) and STATUS=, then start the thread
 * that refreshes STATUS= and pings the watchdog. Call before the daemonizing parent is released. */
void pfs_notify_ready(bool daemonized);
/* STOPPING=1; from now the thread only pings the watchdog. */
void pfs_notify_stopping(void);
/* Stop the thread and close the socket (after the engine stopped). */
void pfs_notify_exit(void);

/* ---- range locks (rangelock.c) ------------------------------------------------------------ */

/*
 * Per-image lock table of byte ranges. Shared holders (aligned writes) coexist with each other;
 * an exclusive holder (a read-modify-write of edge sectors) excludes every overlapping holder.
 * Waiters are woken through one condition variable.
 */
struct pfs_range {
	uint64_t start, end;       /* [start, end) */
	bool excl;
	struct pfs_range *next;
};

struct pfs_rangelock {
	pthread_mutex_t mu;        /* guards held */
	pthread_cond_t cv;
	struct pfs_range *held;
	unsigned int waiters;
};

int pfs_rangelock_init(struct pfs_rangelock *rl);
void pfs_rangelock_destroy(struct pfs_rangelock *rl);
/* Take [start, end) shared or exclusive; r is caller storage, held until unlock. */
void pfs_rangelock_lock(struct pfs_rangelock *rl, struct pfs_range *r, uint64_t start, uint64_t end, bool excl);
void pfs_rangelock_unlock(struct pfs_rangelock *rl, struct pfs_range *r);

/* ---- images (images.c) and nodes (nodes.c) ------------------------------------------------ */

enum pfs_slot_state { PFS_SLOT_FREE = 0, PFS_SLOT_ATTACHED, PFS_SLOT_DETACHING };

/*
 * One attached image as the mount shows it. Slots live in pfs.slots[] for the life of the
 * daemon; a slot is reused after detach with gen + 1, so stale inode numbers never match.
 *   state, gen, img, name, open_count: written under pfs.lock.
 *   The I/O paths read img, size and lbs without the lock, between pfs_io_enter() and
 *   pfs_io_exit() (images.c): pfs_io_enter counts the request in inflight, then checks state
 *   and gen (both atomic);
 *   detach first sets DETACHING, then waits for inflight to drop to 0, so it never pulls the
 *   image from under a request (sequentially consistent atomics on both sides).
 *   Detach also refuses while files are open (open_count), the usual case.
 */
struct pfs_slot {
	_Atomic enum pfs_slot_state state;
	_Atomic uint32_t gen;
	atomic_uint inflight;
	unsigned int open_count;
	struct pcache_image *img;  /* the daemon's reference */
	char name[PCACHE_NAME_MAX + 1];
	_Atomic uint64_t size;     /* bytes; only grows while attached (pfs_image_grow()) */
	/* times shown on the mount (ns since the epoch): the backing's at attach, then changed by
	 * writes and size changes (mtime, pfs_slot_touch), chmod/chown and utimensat through the
	 * mount; the ctime shown is the later of ctime_ns and mtime_ns (a write moves both) */
	_Atomic int64_t atime_ns, mtime_ns, ctime_ns;
	uint32_t lbs;
	struct pfs_rangelock rl;
	/* after a take-over: the image this slot must get back, and its open count (handover.c) */
	char reserved[PCACHE_NAME_MAX + 1];
	unsigned int restore_open;
};

/* Inode numbers: fixed ones for the root and .pcache/, encoded ones for image nodes. */
enum pfs_fixed_ino {
	PFS_INO_ROOT = 1,
	PFS_INO_CTL_DIR,
	PFS_INO_STATUS,
	PFS_INO_STATUS_JSON,
	PFS_INO_GC_PERCENT,
	PFS_INO_WB_RATE,
	PFS_INO_DIRTY_HIGH,
	PFS_INO_DIRTY_LOW,
	PFS_INO_FLUSH,
	PFS_INO_ATTACH,
	PFS_INO_DETACH,
	PFS_INO_IMAGES_DIR,
	PFS_INO_METRICS,
	PFS_INO_REKEY,
	PFS_INO_SPACE_TIMEOUT,
	PFS_INO_GIVE_UP,
	PFS_INO_FIXED_END
};

/* Kinds of per-image nodes. */
enum pfs_img_kind {
	PFS_IK_FILE = 0,   /* /<name> */
	PFS_IK_DIR,        /* .pcache/images/<name>/ */
	PFS_IK_STATS,
	PFS_IK_MODE,
	PFS_IK_FLUSH,
	PFS_IK_SEQ,        /* .pcache/images/<name>/sequential_cutoff */
	PFS_IK_SHARE,      /* .pcache/images/<name>/max_share */
	PFS_IK_GROW,       /* .pcache/images/<name>/growable */
	PFS_IK_COUNT
};

/*
 * An image node's inode number: PFS_INO_IMG_FLAG | generation of the slot | slot | kind.
 * Bits 0-2 the kind, 3-11 the slot, 12-39 the slot's generation (modulo 2^28), bit 40 set.
 */
#define PFS_INO_KIND_MASK 0x7ull
#define PFS_INO_SLOT_SHIFT 3
#define PFS_INO_SLOT_MASK 0x1ffull
#define PFS_INO_GEN_SHIFT 12
#define PFS_INO_GEN_MASK 0xfffffffull
#define PFS_INO_IMG_FLAG (1ull << 40)
#define PFS_MAX_SLOTS 512   /* PCACHE_MAX_IMAGES: every entry of the largest table */

_Static_assert(PFS_IK_COUNT <= PFS_INO_KIND_MASK + 1, "image node kinds fit their bits");
_Static_assert(PFS_MAX_SLOTS <= PFS_INO_SLOT_MASK + 1, "slots fit their bits");
_Static_assert(PFS_MAX_SLOTS >= PCACHE_MAX_IMAGES, "every image of a full table has a slot");
_Static_assert(PFS_INO_FIXED_END < PFS_INO_IMG_FLAG, "fixed inodes stay below image nodes");

static inline uint64_t pfs_img_ino(uint32_t slot, uint32_t gen, enum pfs_img_kind k)
{
	return PFS_INO_IMG_FLAG | (((uint64_t)gen & PFS_INO_GEN_MASK) << PFS_INO_GEN_SHIFT) |
	       ((uint64_t)slot << PFS_INO_SLOT_SHIFT) | (uint64_t)k;
}

struct pfs {
	struct pfs_opts *opts;
	struct pcache_cache *cache;
	struct fuse_session *se;
	struct pcache_fuse_session_cfg scfg;
	time_t start_time;
	uid_t uid;
	gid_t gid;

	_Atomic uint64_t mnt_dev;  /* st_dev of our own mount once mounted (backings there refused) */
	bool taken_over;           /* serving a connection an earlier daemon mounted (keeper.c) */

	pthread_mutex_t lock;      /* guards slots[] state/gen/img/name/open_count */
	struct pfs_slot slots[PFS_MAX_SLOTS];
};

extern struct pfs pfs;
extern const struct fuse_lowlevel_ops pfs_ops;

/*
 * Attach an image at run time or at start (name, absolute path; rekey: accept a different
 * backing for a clean image): 0 or -errno + message. Holds no daemon lock while the engine
 * opens the backing (the path may lead into this very mount).
 */
int pfs_image_attach(const char *name, const char *path, int cache_mode, bool rekey, char *err,
		     size_t errlen);
/* Device number of the FUSE mount on mountpoint, from /proc/self/mountinfo; 0 if not found. */
uint64_t pfs_mount_dev(const char *mountpoint);
/* Attach every image the cache device knows but those in skip; 0 or -errno + message. */
int pfs_images_attach_known(const char *const *skip, int n_skip, char *err, size_t errlen);
/* Write back and detach by name: 0, -ENOENT, -EBUSY (open), or an engine error. */
int pfs_image_detach(const char *name, char *err, size_t errlen);
/*
 * Give up an image's dirty data and forget it (attached or missing): 0, -ENOENT, -EBUSY (open),
 * or an engine error, with a message; *lost = dirty bytes dropped.
 */
int pfs_image_give_up(const char *name, uint64_t *lost, char *err, size_t errlen);
/* The image from was renamed to to in the engine: the slot follows (inode numbers stay). */
void pfs_images_renamed(const char *from, const char *to);
/* ---- the image directory (imagedir.c, -o image_dir) ----------------------------------------- */
struct statvfs;
/* Open the directory (start): 0 (also without image_dir), or -errno + message. */
int pfs_dir_open(char *err, size_t errlen);
void pfs_dir_close(void);
bool pfs_dir_active(void);
/*
 * Bring the images up to date with the directory (start, listings of the root): images whose
 * file was renamed, removed or moved out behind the daemon's back follow it, then every file
 * not attached yet is attached.
 */
void pfs_dir_scan(void);
/* Before a lookup of name in the root: pfs_dir_scan() if name's file is no longer its image's. */
void pfs_dir_revalidate(const char *name);
/* Is name one the mount keeps for an image removed while open (never served in the root)? */
bool pfs_dir_hidden(const char *name);
/* The last file of image name was closed: drop it if it was removed while open. */
void pfs_dir_closed(const char *name);
/*
 * Tell the kernel to forget the root names pfs_dir_scan() changed (the image behind them
 * went, or took another name). Only after the reply of the request that scanned: the kernel
 * may hold the root's lock until then.
 */
void pfs_dir_send_inval(void);
/* At start: drop the records of images removed while open before a crash. 0 or -ENOMEM. */
int pfs_dir_purge_hidden(void);
/* A lookup found no image name: attach the directory's file of that name. 0 or -ENOENT. */
int pfs_dir_adopt(const char *name);
/* Is the known image name one of the directory's (backing path DIR/name)? */
bool pfs_dir_owns(const char *name);
/* Create DIR/name (O_EXCL, mode, owner) and attach it: 0 or -errno. */
int pfs_dir_create(const char *name, mode_t mode, uid_t uid, gid_t gid);
/*
 * Remove DIR/name and drop its image (kept under a hidden name until the last close if open):
 * 0, -ENOENT, -EPERM (not the directory's).
 */
int pfs_dir_unlink(const char *name);
/* Rename DIR/from to DIR/to and the image with it (flags: RENAME_NOREPLACE). 0 or -errno. */
int pfs_dir_rename(const char *from, const char *to, unsigned int flags);
/*
 * chmod/chown of image name (FUSE_SET_ATTR_MODE/UID/GID of to_set) applied to its file if it is
 * an image of the directory: 0 (also when it is not), or -errno of fchmodat/fchownat.
 */
int pfs_dir_set_attr(const char *name, const struct stat *attr, int to_set);
/* The directory's file system figures (statfs of the mount): 0 or -errno. */
int pfs_dir_statfs(struct statvfs *sv);
/* Release the daemon's references of every slot (at exit, before pcache_cache_stop). */
void pfs_images_release(void);

/* ---- nodes (nodes.c): the inode layout, stat, lookup, directory listings ------------------- */

#define PFS_ENTRY_TIMEOUT 60.0
/* image names of an image directory: files change behind the daemon's back, re-asked soon */
#define PFS_DIR_ENTRY_TIMEOUT 1.0
#define PFS_CTL_ATTR_TIMEOUT 1.0

/* A decoded inode number. */
struct pfs_node {
	uint64_t fixed;            /* fixed inode, or 0 for an image node */
	uint32_t slot;
	enum pfs_img_kind kind;
};

/* One directory entry of a listing. */
struct pfs_dent {
	char name[PCACHE_NAME_MAX + 1];
	fuse_ino_t ino;
	mode_t type;
};
#define PFS_MAX_DENTS (PFS_MAX_SLOTS + 16)

int pfs_dir_list(fuse_ino_t ino, struct pfs_dent *v);
int pfs_node_decode(fuse_ino_t ino, struct pfs_node *n);
int pfs_node_lookup(fuse_ino_t parent, const char *name, fuse_ino_t *ino);
int pfs_node_stat(fuse_ino_t ino, struct stat *st, double *timeout);

/* ---- image slots and I/O buffers (images.c) ------------------------------------------------ */

/* The buffer of a read or a read-modify-write: max_read plus the alignment envelope. */
#define PFS_IO_BUF_SIZE (PCACHE_FUSE_MAX_IO + 2 * 65536)

char *pfs_buf_get(void);
void pfs_buf_put(char *p);
int pfs_io_enter(struct pfs_slot *s, fuse_ino_t ino, enum pfs_img_kind k);
void pfs_io_exit(struct pfs_slot *s);
struct pfs_slot *pfs_slot_by_name(const char *name);
/* Now in ns since the epoch (CLOCK_REALTIME). */
int64_t pfs_now_ns(void);
static inline int64_t pfs_ts_ns(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}
/* The image's data changed (write, discard, size): mtime becomes now (ctime shown follows it). */
static inline void pfs_slot_touch(struct pfs_slot *s)
{
	atomic_store_explicit(&s->mtime_ns, pfs_now_ns(), memory_order_relaxed);
}
struct pfs_slot *pfs_slot_of(fuse_ino_t ino, const struct pfs_node *n);

/* ---- keeping the connection across daemon restarts (handover.c, keeper.c) ---------------- */

/*
 * What a new daemon needs to carry on with a FUSE connection an old one served: the INIT request
 * the kernel sent (replayed into the new libfuse session, never answered again), the image
 * slots with their generations and open counts (inode numbers and file handles are values
 * derived from them), and what the connection belongs to. Fixed layout, sent as bytes between
 * processes of the same machine; magic, version and size are checked on receipt.
 */
#define PFS_HSTATE_MAGIC 0x31444e4853464350ull   /* "PCFSHND1" */
#define PFS_HSTATE_VERSION 2u   /* 2: 512 slots */
#define PFS_HSTATE_INIT_MAX 256u
#define PFS_HSTATE_PATH_MAX 1024u

struct pfs_hslot {
	uint32_t gen;
	uint32_t open_count;
	uint32_t attached;         /* 1: name is the image this slot served */
	char name[PCACHE_NAME_MAX + 1];
};

struct pfs_hstate {
	uint64_t magic;
	uint32_t version, size;
	uint64_t mnt_dev;          /* st_dev of the mount the connection serves */
	uint32_t owner_pid;
	uint32_t init_len;         /* 0: the INIT request was not answered yet (it is resent) */
	uint8_t init[PFS_HSTATE_INIT_MAX];
	char cache_path[PFS_HSTATE_PATH_MAX];
	char mountpoint[PFS_HSTATE_PATH_MAX];
	struct pfs_hslot slots[PFS_MAX_SLOTS];
};

/* 0 if st (len bytes as received) is a state this daemon can use, else -EPROTO. */
int pfs_hstate_check(const struct pfs_hstate *st, size_t len);
/* The running daemon's state now (slots read under pfs.lock). */
void pfs_hstate_build(struct pfs_hstate *st);
/*
 * Before attaching anything: give each slot the generation and image name st had, so that the
 * images come back in the same slots with the same inode numbers (images.c's slot_fill honours
 * the reservation), and remember the open counts to restore once they are attached.
 */
void pfs_hstate_reserve_slots(const struct pfs_hstate *st);
/* The INIT request as the session saw it (common_session.c hook); NULL if none yet. */
const void *pfs_handover_init(size_t *len);
/* Install the session hooks (INIT capture, worker fds to the keeper). Before the loop starts. */
void pfs_handover_hooks(struct pcache_fuse_session_cfg *cfg);
/*
 * Something in the state changed (attach, detach, open, release): send it to the keeper.
 * A no-op without one. Never fails the caller (a lost update is logged).
 */
void pfs_handover_changed(void);
/* FUSE_NOTIFY_RESEND on fd: requests an old daemon read but never answered come again. */
int pfs_handover_resend(int fuse_fd);

/* Socket of the keeper of a mount point: $PCACHEFS_RUN_DIR (default /run/pcachefs)/keep-HASH. */
int pfs_keeper_sock_path(const char *mountpoint, char *buf, size_t len);
/*
 * Ask a keeper of mountpoint for its connection. 0: no keeper (mount anew); 1: *fuse_fd and
 * *st received (and *shm_fd, the engine's staging memory, or -1), this daemon is now the owner; -errno with a message in err: refused (another
 * daemon serves it and handover is false, a different cache, the keeper did not answer).
 */
int pfs_keeper_take(const char *mountpoint, const char *cache_path, bool handover, int *fuse_fd,
		    int *shm_fd, struct pfs_hstate *st, char *err, size_t errlen);
/* The mount the keeper kept is gone: tell the keeper (it exits) and forget it. */
void pfs_keeper_drop(void);
/*
 * Start a keeper for the live mount (fork + exec of this binary with --keeper) and hand it the
 * connection: 0, or -errno with a message (the daemon then serves without one).
 */
int pfs_keeper_start(const char *mountpoint, int fuse_fd, unsigned int timeout_s, bool to_syslog,
		     char *err, size_t errlen);
/* Requests that were read but never answered have been resent: the old workers' fds can go. */
void pfs_keeper_resent(void);
/* Send one message with optional fd and payload to the keeper; 0 or -errno (no keeper: -ENOTCONN). */
int pfs_keeper_send(uint32_t type, int fd, const void *payload, size_t len);
/* Is this daemon connected to a keeper? */
bool pfs_keeper_connected(void);
/* Clean unmount: the keeper closes everything and exits. */
void pfs_keeper_release(void);
/* Final state sent, stop talking to the keeper (hand-over: it keeps the connection). */
void pfs_keeper_detach(void);
/* PID of the keeper (0 = none). */
pid_t pfs_keeper_pid(void);
/*
 * Block until the keeper asks this daemon to hand over (returns 1) or the keeper is gone
 * (returns 0). For the daemon's keeper thread.
 */
int pfs_keeper_wait_handover(void);
/* The keeper process: main() calls it for `pcachefs --keeper ...`. Returns the exit status. */
int pfs_keeper_main(int argc, char **argv);

/*
 * The service manager's file descriptor store (fdstore.c): systemd's FDSTORE=1 and LISTEN_FDS,
 * used instead of a keeper when the daemon runs as a service with FileDescriptorStoreMax=.
 */
/* -o fdstore (asked) or the manager's say-so ($FDSTORE, a connection given back), with $NOTIFY_SOCKET. */
bool pfs_fdstore_wanted(bool asked);
/* Did the manager (or an exec'ing predecessor) pass this process a kept connection? */
bool pfs_fdstore_kept(void);
/* Is this daemon's connection in the store? */
bool pfs_fdstore_on(void);
/*
 * Take the stored connection (LISTEN_FDS): 1 with *fuse_fd, *shm_fd (or -1) and *st; 0 if none
 * (mount anew; an unusable store is emptied); -errno with a message in err.
 */
int pfs_fdstore_take(int *fuse_fd, int *shm_fd, struct pfs_hstate *st, char *err, size_t errlen);
/* Put the live connection, the staging memory (-1: none) and a state memfd in the store. */
int pfs_fdstore_hold(int fuse_fd, int shm_fd, char *err, size_t errlen);
/* Write st into the stored state memory (a no-op when not on). */
void pfs_fdstore_put_state(const struct pfs_hstate *st);
/* Store one more fd of the connection (a worker's clone). */
int pfs_fdstore_add_clone(int fd);
/* The resend is done: the clones of earlier daemons leave the store. */
void pfs_fdstore_resent(void);
/* Remove every entry this daemon knows of from the store (the mount it kept is gone). */
void pfs_fdstore_drop_stored(void);
/* ... and forget them here too. */
void pfs_fdstore_drop(void);
/* Clean unmount: empty the store. */
void pfs_fdstore_release(void);
/*
 * Before an exec that hands over: the connection (fuse_fd), the staging memory and the state
 * at fds 3.. with LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES set, as the manager would pass them.
 */
int pfs_fdstore_exec_fds(int fuse_fd, int shm_fd);

enum pfs_kmsg_type {
	PFS_KMSG_HOLD = 1,         /* owner -> keeper: fd = the connection, payload = state */
	PFS_KMSG_FD,               /* owner -> keeper: fd = one more fd of it (a worker's clone) */
	PFS_KMSG_STATE,            /* owner -> keeper: payload = state */
	PFS_KMSG_RELEASE,          /* owner -> keeper: clean unmount, close everything and exit */
	PFS_KMSG_TAKE,             /* new daemon -> keeper: payload = cache path, arg 1 = hand over */
	PFS_KMSG_GIVE,             /* keeper -> new daemon: fd = the connection, payload = state */
	PFS_KMSG_REFUSE,           /* keeper -> new daemon: payload = reason */
	PFS_KMSG_HANDOVER,         /* keeper -> owner: stop serving and hand over */
	PFS_KMSG_RESENT,           /* owner -> keeper: resend done, older fds can be closed */
	PFS_KMSG_DROP,             /* new daemon -> keeper: the kept mount is gone, exit */
	PFS_KMSG_SHM,              /* both ways: fd = the staging memory (memfd; after GIVE: maybe none) */
};

/* ---- control tree (ctl.c) ----------------------------------------------------------------- */

/* A generated text buffer. */
struct pfs_text {
	char *buf;
	size_t len, cap;
};
void pfs_text_printf(struct pfs_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void pfs_text_free(struct pfs_text *t);

/* Content of a readable control node (fixed ino, or image kind with its slot). 0 or -errno. */
int pfs_ctl_read(uint64_t fixed_ino, struct pfs_slot *s, enum pfs_img_kind k, struct pfs_text *out);
/* Apply a write to a control node (value already stripped of trailing whitespace). 0 or -errno. */
int pfs_ctl_write(uint64_t fixed_ino, struct pfs_slot *s, enum pfs_img_kind k, const char *value);
/* Is the control node writable (for the mode bits shown)? */
bool pfs_ctl_writable(uint64_t fixed_ino, enum pfs_img_kind k);

#endif
