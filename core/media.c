/*
 * media.c -- SIGBUS on the cache mapping turned into -EIO for guarded accesses (media.h).
 *
 * A guarded call records [lo, hi) and a jump buffer in a thread-local slot, then runs the
 * access. The process-wide handler (SA_SIGINFO | SA_NODEFER) looks at the faulting thread's
 * slot: an address inside the range jumps back (siglongjmp) and the call returns -EIO; anything
 * else is passed to the handler that was there before, or, when that was the default action,
 * the default is put back and the handler returns, so the faulting access runs again and the
 * process dies of it as it would have without us.
 *
 * Invariants:
 *  1. The slot is set only around the access and cleared before the call returns (both ways),
 *     so a later SIGBUS of the same thread is never taken for a guarded one.
 *  2. sigsetjmp(..., 0) saves no signal mask (no system call per guarded access); SA_NODEFER
 *     keeps SIGBUS unblocked while the handler runs, so nothing is left blocked after the jump.
 *  3. Only async-signal-safe work in the handler: a thread-local load, a comparison, sigaction,
 *     siglongjmp.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include "pcache/cache_dev.h"
#include "pcache/format.h"
#include "pcache/media.h"
#include "pcache/util.h"

struct media_guard {
	const char *lo, *hi;
	sigjmp_buf jb;
};

static __thread struct media_guard *volatile guard_now;
static struct sigaction prev_bus;
static pthread_once_t media_once = PTHREAD_ONCE_INIT;
static int media_rc = -EAGAIN;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	struct media_guard *g = guard_now;
	const char *a = si ? (const char *)si->si_addr : NULL;

	if (g && a >= g->lo && a < g->hi) {
		guard_now = NULL;
		siglongjmp(g->jb, 1);
	}
	if ((prev_bus.sa_flags & SA_SIGINFO) && prev_bus.sa_sigaction) {
		prev_bus.sa_sigaction(sig, si, uc);
		return;
	}
	if (!(prev_bus.sa_flags & SA_SIGINFO) && prev_bus.sa_handler != SIG_DFL &&
	    prev_bus.sa_handler != SIG_IGN) {
		prev_bus.sa_handler(sig);
		return;
	}
	/* the default action: back in place, the access runs again and ends the process */
	{
		struct sigaction dfl;

		memset(&dfl, 0, sizeof(dfl));
		dfl.sa_handler = SIG_DFL;
		sigemptyset(&dfl.sa_mask);
		sigaction(SIGBUS, &dfl, NULL);
	}
}

static void media_install(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	media_rc = sigaction(SIGBUS, &sa, &prev_bus) == 0 ? 0 : -errno;
}

int pcache_media_init(void)
{
	pthread_once(&media_once, media_install);
	return media_rc;
}

int pcache_media_handler_installed(void)
{
	return media_rc == 0;
}

/* Run the access described by op over [p, p + len) guarded: 0 or -EIO. */
enum media_op { MEDIA_COPY, MEDIA_CRC, MEDIA_STORE };

static int guarded(enum media_op op, const void *p, size_t len, void *dst, const void *src,
		   const struct pcache_pmem *pm, unsigned int flags, uint32_t *crc)
{
	struct media_guard g;

	g.lo = p;
	g.hi = (const char *)p + len;
	if (sigsetjmp(g.jb, 0))
		return -EIO; /* the handler cleared guard_now */
	guard_now = &g;
	atomic_signal_fence(memory_order_seq_cst);
	switch (op) {
	case MEDIA_COPY:
		memcpy(dst, p, len);
		break;
	case MEDIA_CRC:
		*crc = pcache_crc32c(PCACHE_CRC_SEED, p, len);
		break;
	case MEDIA_STORE:
		pm->ops->memcpy(pm->ctx, dst, src, len, flags);
		break;
	}
	atomic_signal_fence(memory_order_seq_cst);
	guard_now = NULL;
	return 0;
}

int pcache_media_copy(void *dst, const void *src, size_t len)
{
	return guarded(MEDIA_COPY, src, len, dst, NULL, NULL, 0, NULL);
}

int pcache_media_crc(const void *p, size_t len, uint32_t *crc)
{
	return guarded(MEDIA_CRC, p, len, NULL, NULL, NULL, 0, crc);
}

int pcache_media_store(const struct pcache_pmem *pm, void *dst, const void *src, size_t len,
		       unsigned int flags)
{
	return guarded(MEDIA_STORE, dst, len, dst, src, pm, flags, NULL);
}
