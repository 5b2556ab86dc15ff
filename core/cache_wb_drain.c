/*
 * cache_wb_drain.c -- writing everything back now: drains (flush-all, detach, stop with
 * drain_on_exit; a drain lifts the rate limit and waits for the batches to pass the head it
 * saw) and the offline writeback of pcachectl (no engine: the end of the log found by
 * scanning, backings opened by the paths in the image table).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pcache/log.h"
#include "pcache/media.h"
#include "pcache/util.h"
#include "wb_i.h"

/* ---- drain -------------------------------------------------------------------------------- */

/* Dirty bytes between from and head (an estimate for progress: before override). */
static uint64_t wb_scan_dirty(struct pcache_wb *wb, struct pcache_pos from,
			      const struct pcache_pos *head, uint32_t image_id, uint64_t *ksets,
			      struct pcache_pos *end)
{
	uint64_t total = 0, n = 0;

	while (!head || from.lsn < head->lsn) {
		const struct pcache_kset_om *ks;
		struct pcache_pos next;

		if (pcache_log_read(wb->rd, &from, &ks))
			break;
		for (uint32_t k = 0; k < pcache_le16(&ks->key_num); k++) {
			const struct pcache_key_om *key = &ks->keys[k];

			if (!(pcache_le16(&key->flags) & PCACHE_KEY_CLEAN) &&
			    (!image_id || pcache_le32(&key->image_id) == image_id))
				total += pcache_le32(&key->len);
		}
		pcache_log_next(ks, &from, &next);
		from = next;
		n++;
	}
	if (ksets)
		*ksets = n;
	if (end)
		*end = from;
	return total;
}

/* Caller holds wb->lock. 1 = done, 0 = not yet, -errno = failed since fail_seq snapshot. */
static int wb_drain_state(struct pcache_wb *wb, uint32_t image_id, uint64_t target,
			  const uint64_t *snap)
{
	bool done = true;

	if (wb->latched)
		return wb->latched;
	if (!image_id)
		done = wb->dirty_tail.lsn >= target;
	for (uint32_t i = 0; i < wb->n_imgs; i++) {
		struct wb_img *im = &wb->imgs[i];

		if (image_id && im->id != image_id)
			continue;
		if (!im->in_table)
			continue;
		if (im->blocked) {
			uint64_t fails = im->fail_seq - (i < PCACHE_MAX_IMAGES * 4 ? snap[i] : 0);

			/* a missing backing may be an attach in progress: give it a few polls */
			if (im->latched || (fails && im->last_error != -ENXIO) ||
			    fails >= WB_DRAIN_ENXIO_FAILS)
				return im->last_error ? im->last_error : -EIO;
		}
		if (image_id)
			return !im->blocked && im->done_lsn >= target;
	}
	if (image_id) /* never met: done when the walker passed target */
		return wb->scan.lsn >= target;
	return done;
}

int pcache_wb_drain(struct pcache_wb *wb, uint32_t image_id)
{
	struct pcache_pos head;
	uint64_t snap[PCACHE_MAX_IMAGES * 4] = { 0 };
	uint64_t total;
	int r;

	wb->ops.key_head(wb->ctx, &head);
	pthread_mutex_lock(&wb->lock);
	if (head.lsn > wb->st.drain_target_lsn)
		wb->st.drain_target_lsn = head.lsn;
	for (uint32_t i = 0; i < wb->n_imgs && i < PCACHE_ARRAY_SIZE(snap); i++)
		snap[i] = wb->imgs[i].fail_seq;
	pthread_mutex_unlock(&wb->lock);
	if (!wb->have_thread) {
		pthread_mutex_lock(&wb->run_lock); /* one worker at a time without the thread */
		total = wb_scan_dirty(wb, wb->dirty_tail, &head, image_id, NULL, NULL);
		pthread_mutex_lock(&wb->lock);
		wb->st.drain_total = wb->st.drain_left = total;
		wb->drains++;
		pthread_mutex_unlock(&wb->lock);
		for (;;) {
			pthread_mutex_lock(&wb->lock);
			r = wb_drain_state(wb, image_id, head.lsn, snap);
			if (!r && wb->drain_abort)
				r = -ESHUTDOWN;
			pthread_mutex_unlock(&wb->lock);
			if (r)
				break;
			r = pcache_wb_batch(wb, false, false);
			if (r < 0 && r != -ECANCELED)
				continue; /* latched: wb_drain_state reports it */
			if (r < 0)
				break;
			if (r == 0)
				pcache_wb_sleep(wb, pcache_wb_next_retry_ns(wb));
		}
		pthread_mutex_unlock(&wb->run_lock);
	} else {
		/* no byte estimate here: reading the log outside the worker could race with GC
		 * reusing segments; drain_target_lsn - dirty_tail.lsn tells the ksets left */
		pthread_mutex_lock(&wb->lock);
		wb->st.drain_total = wb->st.drain_left = 0;
		wb->drains++;
		wb->kicked = true;
		pthread_cond_signal(&wb->cond);
		for (;;) {
			r = wb_drain_state(wb, image_id, head.lsn, snap);
			if (r || wb->stopping || wb->drain_abort)
				break;
			pthread_cond_wait(&wb->done_cond, &wb->lock);
		}
		if (!r && (wb->stopping || wb->drain_abort))
			r = -ESHUTDOWN;
		pthread_mutex_unlock(&wb->lock);
	}
	pthread_mutex_lock(&wb->lock);
	wb->drains--;
	wb->st.drain_left = 0;
	pthread_mutex_unlock(&wb->lock);
	if (r == 1)
		r = 0;
	if (!wb->have_thread || r == 0)
		pcache_wb_persist_images(wb, true);
	return r;
}

void pcache_wb_abort_drains(struct pcache_wb *wb, bool abort)
{
	pthread_mutex_lock(&wb->lock);
	wb->drain_abort = abort;
	pthread_cond_broadcast(&wb->done_cond);
	pthread_mutex_unlock(&wb->lock);
}

/* ---- offline ------------------------------------------------------------------------------ */

struct wb_offline {
	struct pcache_cache_dev *cd;
	struct pcache_pos end;
	struct pcache_backing_opts bo;
	struct {
		uint32_t id;
		struct pcache_backing *b;
		int err;
		char msg[1800];
	} img[PCACHE_MAX_IMAGES];
	uint32_t n;
};

static void wb_off_head(void *ctx, struct pcache_pos *head)
{
	struct wb_offline *w = ctx;

	*head = w->end;
}

static struct pcache_backing *wb_off_backing(void *ctx, uint32_t id)
{
	struct wb_offline *w = ctx;
	struct pcache_image_ent *ents;
	int n, slot = -1;

	for (uint32_t i = 0; i < w->n; i++)
		if (w->img[i].id == id)
			return w->img[i].b;
	if (w->n == PCACHE_MAX_IMAGES)
		return NULL;
	slot = (int)w->n++;
	w->img[slot].id = id;
	ents = calloc(PCACHE_MAX_IMAGES, sizeof(*ents));
	if (!ents) {
		w->img[slot].err = -ENOMEM;
		return NULL;
	}
	n = pcache_cache_dev_images(w->cd, ents, (int)PCACHE_MAX_IMAGES);
	for (int i = 0; i < n; i++) {
		char err[200] = "";
		int r;

		if (ents[i].id != id)
			continue;
		r = pcache_backing_open(ents[i].path, &w->bo, &w->img[slot].b, err, sizeof(err));
		if (r) {
			w->img[slot].err = r;
			snprintf(w->img[slot].msg, sizeof(w->img[slot].msg), "image %s: %s: %s",
				 ents[i].name, ents[i].path, err[0] ? err : strerror(-r));
		} else if ((pcache_backing_size(w->img[slot].b) != ents[i].size &&
			    (ents[i].fixed || pcache_backing_is_blockdev(w->img[slot].b) ||
			     pcache_backing_size(w->img[slot].b) > ents[i].size)) ||
			   pcache_backing_lbs(w->img[slot].b) != ents[i].lbs ||
			   (ents[i].ident[0] &&
			    strcmp(ents[i].ident, pcache_backing_ident(w->img[slot].b)->text))) {
			/* the same identity rule as attach: never write to another disk under the name */
			w->img[slot].err = -EINVAL;
			snprintf(w->img[slot].msg, sizeof(w->img[slot].msg),
				 "image %s: %s is not the image's backing: stored %s (%" PRIu64 " bytes), "
				 "found %s (%" PRIu64 " bytes): not written", ents[i].name, ents[i].path,
				 ents[i].ident[0] ? ents[i].ident : "(no identity)", ents[i].size,
				 pcache_backing_ident(w->img[slot].b)->text,
				 pcache_backing_size(w->img[slot].b));
			pcache_backing_close(w->img[slot].b);
			w->img[slot].b = NULL;
		}
		/* a growable file shorter than its recorded size: a growth that did not reach it */
		if (w->img[slot].b && pcache_backing_size(w->img[slot].b) < ents[i].size) {
			r = pcache_backing_grow(w->img[slot].b, ents[i].size);
			if (r) {
				w->img[slot].err = r;
				snprintf(w->img[slot].msg, sizeof(w->img[slot].msg), "image %s: cannot extend %s "
					 "to its recorded size %" PRIu64 ": %s", ents[i].name, ents[i].path,
					 ents[i].size, strerror(-r));
				pcache_backing_close(w->img[slot].b);
				w->img[slot].b = NULL;
			}
		}
		break;
	}
	free(ents);
	return w->img[slot].b;
}

int pcache_wb_offline(struct pcache_cache_dev *cd, const struct pcache_wb_offline_opts *oo,
		      char *err, size_t errlen)
{
	struct pcache_wb_offline_opts defo;
	struct pcache_wb_opts wo;
	struct pcache_wb_ops ops = { .key_head = wb_off_head, .backing_get = wb_off_backing };
	struct pcache_wb_progress pg;
	struct pcache_wb_stats st;
	struct wb_offline *w;
	struct pcache_wb *wb;
	int r, res = 0;

	if (err && errlen)
		err[0] = 0;
	if (!oo) {
		memset(&defo, 0, sizeof(defo));
		oo = &defo;
	}
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->cd = cd;
	w->bo = oo->backing;
	if (oo->wb)
		wo = *oo->wb;
	else
		memset(&wo, 0, sizeof(wo));
	wo.no_thread = true;
	r = pcache_wb_start(cd, &ops, w, &wo, &wb);
	if (r) {
		free(w);
		if (err)
			snprintf(err, errlen, "writeback start: %s", strerror(-r));
		return r;
	}
	wb->offline = true;
	pcache_wb_set_rate(wb, oo->rate);
	memset(&pg, 0, sizeof(pg));
	pg.total_bytes = wb_scan_dirty(wb, wb->dirty_tail, NULL, 0, &pg.total_ksets, &w->end);

	for (;;) {
		bool pending_retry = false, failed = false;

		r = pcache_wb_batch(wb, oo->rate != 0, false);
		pcache_wb_get_stats(wb, &st);
		pg.done_bytes = st.bytes_written + st.bytes_zeroed + st.bytes_overridden;
		pg.done_ksets = st.dirty_tail.lsn - (w->end.lsn - pg.total_ksets);
		if (oo->progress)
			oo->progress(oo->progress_arg, &pg);
		if (r < 0) {
			res = r;
			if (err)
				snprintf(err, errlen, r == -EUCLEAN ? "corrupt log at lsn %" PRIu64
					 " (see pcachectl check): written back up to there" :
					 "writeback stopped at lsn %" PRIu64 ": %s",
					 st.scan.lsn, strerror(-r));
			break;
		}
		if (r > 0)
			continue;
		/* at the end of the log: retry blocked images a few times, then give up */
		for (uint32_t i = 0; i < wb->n_imgs; i++) {
			struct wb_img *im = &wb->imgs[i];

			if (!im->blocked)
				continue;
			if (im->latched || im->fails_in_row >= WB_OFFLINE_MAX_FAILS ||
			    im->last_error == -ENXIO || im->last_error == -ERANGE) {
				failed = true;
				if (!res) {
					res = im->last_error ? im->last_error : -EIO;
					if (err) {
						const char *m = NULL;
						char txt[160];

						for (uint32_t j = 0; j < w->n; j++)
							if (w->img[j].id == im->id && w->img[j].msg[0])
								m = w->img[j].msg;
						if (m)
							snprintf(err, errlen, "%s", m);
						else
							snprintf(err, errlen, "image id %u: %s (its dirty data stays in the cache)",
								 im->id, pcache_wb_err_text(im, res, txt, sizeof(txt)));
					}
				}
			} else {
				pending_retry = true;
			}
		}
		if (!pending_retry)
			break;
		(void)failed;
		pcache_wb_sleep(wb, pcache_wb_next_retry_ns(wb));
	}
	pcache_wb_stop(wb); /* persists every image's wb_lsn */
	for (uint32_t i = 0; i < w->n; i++)
		pcache_backing_close(w->img[i].b);
	free(w);
	return res;
}
