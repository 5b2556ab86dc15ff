/*
 * cache_image.c -- the engine's images: attach (identity and ownership checks, the per-image
 * replay), detach and give-up, lookups by name and id, references, attributes.
 *
 * Invariants:
 *  1. An image's I/O is quiesced (inflight == 0, no writeback reference) before its backing is
 *     closed or its index freed (pcache_image_quiesce(), pcache_image_teardown()).
 *  2. The index is freed with the last reference (stats readers may still look at it).
 *  3. A known image whose stored identity does not match the backing found at its path is
 *     refused before anything is written (docs/identity.md).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache_i.h"
#include "cache_writeback.h"
#include "pcache/log.h"

#define ERR(...) snprintf(err, errlen, __VA_ARGS__)

/* ---- images ------------------------------------------------------------------------------- */

static struct pcache_image *find_attached(struct pcache_cache *c, const char *name)
{
	uint32_t i;

	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (c->imgs[i] && !strcmp(c->imgs[i]->name, name))
			return c->imgs[i];
	return NULL;
}

/*
 * Does backing b (identity id) reach bytes the cache already owns: the cache device, or the
 * backing of another live image? 0, or -EINVAL/-EBUSY with the reason. img_lock held.
 */
static int attach_check_overlap(struct pcache_cache *c, const char *name, const char *path,
				const struct pcache_ident *id, char *err, size_t errlen)
{
	uint32_t i;

	if (pcache_ident_overlap(id, &c->dev_ident)) {
		ERR("image %s: %s is the cache device (%s)", name, path, id->text);
		return -EINVAL;
	}
	for (i = 0; i < PCACHE_MAX_IMAGES; i++) {
		struct pcache_image *o = c->live[i];

		if (o && pcache_ident_overlap(id, pcache_backing_ident(o->b))) {
			ERR("image %s: %s reaches the same data as image %s (%s)", name, path, o->name,
			    id->text);
			return -EBUSY;
		}
	}
	return 0;
}

/*
 * The backing is held by someone: if that someone is this cache (another image, the cache
 * device), say so instead of naming our own process as the lock holder.
 */
static int attach_explain_busy(struct pcache_cache *c, const char *name, const char *path,
			       char *err, size_t errlen)
{
	struct pcache_ident id;
	int fd = open(path, O_RDONLY | O_CLOEXEC), ret = -EBUSY;

	if (fd < 0)
		return ret;
	if (pcache_ident_fd(fd, &id) == 0) {
		pthread_mutex_lock(&c->img_lock);
		ret = attach_check_overlap(c, name, path, &id, err, errlen);
		pthread_mutex_unlock(&c->img_lock);
	}
	close(fd);
	return ret ? ret : -EBUSY;
}

int pcache_backings_distinct(const char *const *names, const char *const *paths, int n,
			     char *err, size_t errlen)
{
	struct pcache_ident *id;
	int i, j, fd, ret = 0;

	id = calloc((size_t)n + 1, sizeof(*id));
	if (!id)
		return -ENOMEM;
	for (i = 0; i < n && !ret; i++) {
		fd = open(paths[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue; /* the attach itself reports it */
		if (pcache_ident_fd(fd, &id[i]) == 0) {
			for (j = 0; j < i; j++) {
				if (paths[j] && pcache_ident_overlap(&id[i], &id[j])) {
					ERR("image %s: %s reaches the same data as image %s (%s)", names[i],
					    paths[i], names[j], id[i].text);
					ret = -EBUSY;
					break;
				}
			}
		}
		close(fd);
	}
	free(id);
	return ret;
}

/* The run-time copies of img->ent's settings (its ent_lock held, or img not published yet). */
static void ent_apply(struct pcache_image *img)
{
	atomic_store(&img->cache_mode, img->ent.cache_mode);
	atomic_store(&img->seq_cutoff, pcache_seq_cutoff_bytes(img->ent.seq_cutoff));
	atomic_store(&img->share_limit, pcache_share_limit(img->c, img->ent.max_share));
}

int pcache_image_attach(struct pcache_cache *c, const struct pcache_attach_opts *ao,
			struct pcache_image **out, char *err, size_t errlen)
{
	struct pcache_backing_opts bo = { .read_only = ao->read_only };
	struct pcache_backing *b = NULL;
	const struct pcache_ident *id;
	struct pcache_image_ent e;
	struct pcache_image *img;
	bool known, rekey = false;
	char pathbuf[PCACHE_PATH_MAX + 1];
	const char *path;
	uint32_t i, mode;
	int ret;

	if (!ao->name || !pcache_image_name_valid(ao->name)) {
		ERR("image name '%s' is not valid", ao->name ? ao->name : "");
		return -EINVAL;
	}
	if (ao->cache_mode > (int)PCACHE_MODE_WRITEAROUND || ao->cache_mode < -1) {
		ERR("image %s: bad cache mode %d", ao->name, ao->cache_mode);
		return -EINVAL;
	}
	if (ao->path && strlen(ao->path) > PCACHE_PATH_MAX) {
		ERR("image %s: backing path longer than %u bytes", ao->name, PCACHE_PATH_MAX);
		return -ENAMETOOLONG;
	}
	known = pcache_cache_dev_image_find(c->cd, ao->name, &e) == 0;
	snprintf(pathbuf, sizeof(pathbuf), "%s", ao->path ? ao->path : (known ? e.path : ""));
	path = pathbuf;
	if (!*path) {
		ERR("image %s: no backing path given and none stored", ao->name);
		return -EINVAL;
	}
	/*
	 * Open before taking any lock: the path may lead into a FUSE mount whose requests need
	 * those locks (the caller's own mount: refused just below, instead of deadlocking).
	 */
	ret = pcache_backing_open(path, &bo, &b, err, errlen);
	if (ret == -EBUSY)
		ret = attach_explain_busy(c, ao->name, path, err, errlen);
	if (ret)
		return ret;
	id = pcache_backing_ident(b);
	if (ao->own_dev && !id->blockdev && id->dev == ao->own_dev) {
		ERR("image %s: %s is inside this pcachefs mount", ao->name, path);
		ret = -EINVAL;
		goto out_close;
	}
	pthread_mutex_lock(&c->img_lock);
	if (atomic_load(&c->stopping_io)) {
		ret = -ESHUTDOWN;
		ERR("cache is stopping");
		goto out_unlock;
	}
	if (find_attached(c, ao->name)) {
		ERR("image %s is already attached", ao->name);
		ret = -EBUSY;
		goto out_unlock;
	}
	ret = attach_check_overlap(c, ao->name, path, id, err, errlen);
	if (ret)
		goto out_unlock;
	/* again under the lock: the entry may have changed while the backing was opened */
	known = pcache_cache_dev_image_find(c->cd, ao->name, &e) == 0;
	if (known) {
		/*
		 * A growable file shorter than its record: a growth a crash kept from reaching the
		 * file (extended below). Longer: it changed behind the cache's back (its cached
		 * copies, clean ones too, may be stale), refused as any other size change.
		 */
		uint64_t bsize = pcache_backing_size(b);
		bool grows = !e.fixed && !pcache_backing_is_blockdev(b);
		bool size_ok = e.size == bsize || (grows && bsize < e.size);
		bool same_id = size_ok && e.lbs == pcache_backing_lbs(b) &&
			       (!e.ident[0] || !strcmp(e.ident, id->text));
		bool same_path = !strcmp(e.path, path);

		if (!same_path && !ao->allow_path_change) {
			ERR("image %s: backing path %s differs from the stored %s (use allow_path_change)",
			    ao->name, path, e.path);
			ret = -EEXIST;
			goto out_unlock;
		}
		if (!same_id) {
			bool dirty = pcache_image_has_dirty(c, e.id);

			if (dirty || !ao->rekey) {
				ERR("image %s: %s is not the image's backing: stored %s (%" PRIu64 " bytes, lbs %u), "
				    "found %s (%" PRIu64 " bytes, lbs %u): %s", ao->name, path,
				    e.ident[0] ? e.ident : "(no identity)", e.size, e.lbs, id->text,
				    pcache_backing_size(b), pcache_backing_lbs(b),
				    dirty ? "refused, the cache holds dirty data of the stored one" :
				    "refused (rekey accepts it and drops the cached data)");
				ret = -EEXIST;
				goto out_unlock;
			}
			/* asked for, and clean: forget the old identity (its keys stay unused in the log) */
			pcache_log(PCACHE_LOG_NOTICE, "image %s: re-keyed to %s (%s), cached data dropped",
				   ao->name, path, id->text);
			rekey = true;
		}
	}
	if (known && !rekey && !e.fixed && e.size > pcache_backing_size(b)) {
		/* a growth recorded before a crash (or a power loss) reached the file */
		ret = pcache_backing_grow(b, e.size);
		if (ret) {
			ERR("image %s: cannot extend %s to its recorded size %" PRIu64 ": %s", ao->name,
			    path, e.size, strerror(-ret));
			goto out_unlock;
		}
		pcache_log(PCACHE_LOG_NOTICE, "image %s: %s extended to its recorded size %" PRIu64,
			   ao->name, path, e.size);
	}
	if (rekey) {
		struct pcache_image_ent old = e;

		ret = pcache_cache_dev_image_remove(c->cd, old.slot);
		if (ret) {
			ERR("image %s: image table: %s", ao->name, strerror(-ret));
			goto out_unlock;
		}
		known = false;
		memset(&e, 0, sizeof(e));
		e.cache_mode = old.cache_mode;
		e.seq_cutoff = old.seq_cutoff;
		e.max_share = old.max_share;
		e.file_mode = old.file_mode;
		e.uid = old.uid;
		e.gid = old.gid;
	} else if (!known) {
		/* a new image shows its backing's permissions and owner */
		memset(&e, 0, sizeof(e));
		e.cache_mode = PCACHE_MODE_WRITEBACK;
		e.file_mode = id->mode & 07777u;
		e.uid = id->uid;
		e.gid = id->gid;
	}
	mode = ao->cache_mode >= 0 ? (uint32_t)ao->cache_mode : e.cache_mode;
	if (!known) {
		snprintf(e.name, sizeof(e.name), "%s", ao->name);
		snprintf(e.path, sizeof(e.path), "%s", path);
		snprintf(e.ident, sizeof(e.ident), "%s", id->text);
		e.size = pcache_backing_size(b);
		e.lbs = pcache_backing_lbs(b);
		e.state = PCACHE_IMAGE_ATTACHED;
		e.cache_mode = mode;
		ret = pcache_cache_dev_image_add(c->cd, &e);
		if (ret) {
			if (ret == -ENOSPC && pcache_cache_dev_max_images(c->cd) == PCACHE_MAX_IMAGES_V1)
				ERR("image %s: image table full (%u images: a version 1 cache; a new format holds up to %u)",
				    ao->name, PCACHE_MAX_IMAGES_V1, PCACHE_MAX_IMAGES);
			else if (ret == -ENOSPC)
				ERR("image %s: image table full (%u images)", ao->name,
				    pcache_cache_dev_max_images(c->cd));
			else
				ERR("image %s: image table: %s", ao->name, strerror(-ret));
			goto out_unlock;
		}
	} else if (strcmp(e.path, path) || e.state != PCACHE_IMAGE_ATTACHED || e.cache_mode != mode ||
		   strcmp(e.ident, id->text)) {
		snprintf(e.path, sizeof(e.path), "%s", path);
		snprintf(e.ident, sizeof(e.ident), "%s", id->text); /* recorded on first attach */
		e.state = PCACHE_IMAGE_ATTACHED;
		e.cache_mode = mode;
		ret = pcache_cache_dev_image_update(c->cd, &e);
		if (ret) {
			ERR("image %s: image table: %s", ao->name, strerror(-ret));
			goto out_unlock;
		}
	}
	img = calloc(1, sizeof(*img));
	if (!img) {
		ret = -ENOMEM;
		ERR("out of memory");
		goto out_unlock;
	}
	img->c = c;
	atomic_init(&img->refs, 1);
	img->id = e.id;
	img->slot = e.slot;
	img->renames = calloc(1, sizeof(*img->renames));
	if (!img->renames) {
		ret = -ENOMEM;
		ERR("out of memory");
		free(img);
		goto out_unlock;
	}
	snprintf(img->renames->s, sizeof(img->renames->s), "%s", e.name);
	atomic_init(&img->name, img->renames->s);
	img->b = b;
	img->lbs = PCACHE_MAX(e.lbs, PCACHE_SECTOR);
	img->bytes = e.size;
	/* the engine works in whole sectors; the backing reads zeros past the end of the last */
	img->size = PCACHE_ALIGN_UP(e.size, (uint64_t)img->lbs);
	img->read_only = ao->read_only;
	pcache_through_init(&img->through);
	pthread_mutex_init(&img->seq.lock, NULL);
	pthread_mutex_init(&img->wseq.lock, NULL);
	pthread_mutex_init(&img->nofill_lock, NULL);
	pthread_mutex_init(&img->ent_lock, NULL);
	img->ent = e;
	ent_apply(img);
	pthread_mutex_init(&img->grow_lock, NULL);
	ret = pcache_index_init(&img->ix, img->size, pcache_backing_is_blockdev(b) ? img->size : PCACHE_GROW_MAX);
	if (ret) {
		ERR("out of memory");
		goto out_img;
	}
	ret = pcache_replay_image(c, img, err, errlen);
	if (ret)
		goto out_img;
	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (!c->imgs[i])
			break;
	c->imgs[i] = img; /* at most PCACHE_MAX_IMAGES entries exist in the table */
	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (!c->live[i])
			break;
	if (i < PCACHE_MAX_IMAGES)
		c->live[i] = img;
	if (out) {
		atomic_fetch_add(&img->refs, 1);
		*out = img;
	}
	pthread_mutex_unlock(&c->img_lock);
	pcache_wb_notify_kick(c); /* its keys may have been blocking the writeback */
	return 0;

out_img:
	pcache_image_free(img);
out_unlock:
	pthread_mutex_unlock(&c->img_lock);
out_close:
	pcache_backing_close(b);
	return ret;
}

/* The image table's entries that are not attached now, in *ents (free it): count or -ENOMEM. */
static int unattached_ents(struct pcache_cache *c, struct pcache_image_ent **ents)
{
	int n, i, k = 0;

	*ents = calloc(PCACHE_MAX_IMAGES, sizeof(**ents));
	if (!*ents)
		return -ENOMEM;
	n = pcache_cache_dev_images(c->cd, *ents, PCACHE_MAX_IMAGES);
	pthread_mutex_lock(&c->img_lock);
	for (i = 0; i < n; i++)
		if (!find_attached(c, (*ents)[i].name))
			(*ents)[k++] = (*ents)[i];
	pthread_mutex_unlock(&c->img_lock);
	return k;
}

/* A backing that is not there (yet): the image waits, the others come up. */
static bool backing_missing(int ret)
{
	return ret == -ENOENT || ret == -ENXIO || ret == -ENODEV || ret == -ENOTDIR;
}

int pcache_cache_attach_known(struct pcache_cache *c, char *err, size_t errlen)
{
	return pcache_cache_attach_known_except(c, NULL, 0, err, errlen);
}

int pcache_cache_attach_known_except(struct pcache_cache *c, const char *const *skip, int n_skip,
				     char *err, size_t errlen)
{
	struct pcache_image_ent *ents;
	char why[1024];
	int n, i, j, ret = 0, r;

	n = unattached_ents(c, &ents);
	if (n < 0)
		return n;
	for (i = 0; i < n; i++) {
		struct pcache_attach_opts ao = { .name = ents[i].name, .cache_mode = -1 };

		for (j = 0; j < n_skip && strcmp(skip[j], ents[i].name); j++)
			;
		if (j < n_skip)
			continue;
		why[0] = '\0';
		r = pcache_image_attach(c, &ao, NULL, why, sizeof(why));
		if (r && backing_missing(r)) {
			pcache_log(PCACHE_LOG_WARNING, "image %s: backing %s is missing (%s): not attached; "
				   "its cached data waits for it", ents[i].name, ents[i].path, strerror(-r));
			continue;
		}
		if (r && !ret) {
			ret = r;
			snprintf(err, errlen, "%s", why);
		}
	}
	free(ents);
	return ret;
}

int pcache_cache_unattached(struct pcache_cache *c, struct pcache_unattached *v, int max)
{
	struct pcache_image_ent *ents;
	int n, i, k = 0;

	n = unattached_ents(c, &ents);
	if (n < 0)
		return n;
	for (i = 0; i < n && k < max; i++) {
		memset(&v[k], 0, sizeof(v[k]));
		snprintf(v[k].name, sizeof(v[k].name), "%s", ents[i].name);
		snprintf(v[k].path, sizeof(v[k].path), "%s", ents[i].path);
		v[k].missing = ents[i].state == PCACHE_IMAGE_ATTACHED;
		{
			uint64_t keys;

			/* a log walk: an unattached image has no counters (rare: missing backings) */
			pcache_image_dirty_walk(c, ents[i].id, &keys, &v[k].dirty_bytes);
		}
		k++;
	}
	free(ents);
	return k;
}

enum detach_how { DETACH_KEEP, DETACH_FORGET_CLEAN, DETACH_GIVE_UP };

static int image_detach(struct pcache_cache *c, const char *name, enum detach_how how);

int pcache_image_detach(struct pcache_cache *c, const char *name, bool forget)
{
	return image_detach(c, name, forget ? DETACH_FORGET_CLEAN : DETACH_KEEP);
}

int pcache_image_give_up(struct pcache_cache *c, const char *name, uint64_t *lost_bytes)
{
	struct pcache_image_ent e;
	uint64_t keys = 0, bytes = 0;
	int ret;

	if (pcache_cache_dev_image_find(c->cd, name, &e) != 0)
		return -ENOENT;
	pcache_image_dirty_walk(c, e.id, &keys, &bytes);
	ret = image_detach(c, name, DETACH_GIVE_UP);
	if (ret == -ENOENT) /* not attached (a missing backing): only the table entry goes */
		ret = pcache_cache_dev_image_remove(c->cd, e.slot);
	if (ret)
		return ret;
	/* its keys now belong to no image: the writeback passes them, replay and reads ignore them */
	if (c->wb)
		pcache_wb_image_forget(c->wb, e.id);
	pcache_log(PCACHE_LOG_WARNING, "image %s: gave up %" PRIu64 " dirty bytes (%" PRIu64 " keys) never "
		   "written to %s; the image is detached and forgotten, the other images' writeback goes on",
		   name, bytes, keys, e.path);
	if (lost_bytes)
		*lost_bytes = bytes;
	return 0;
}

static int image_detach(struct pcache_cache *c, const char *name, enum detach_how how)
{
	bool forget = how != DETACH_KEEP;
	struct pcache_image *img;
	struct pcache_image_ent e;
	uint32_t i;
	int ret;

	pthread_mutex_lock(&c->img_lock);
	img = find_attached(c, name);
	if (!img) {
		pthread_mutex_unlock(&c->img_lock);
		return -ENOENT;
	}
	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (c->imgs[i] == img)
			c->imgs[i] = NULL;
	atomic_store(&img->detaching, true);
	pthread_mutex_unlock(&c->img_lock);

	pcache_image_quiesce(img);
	ret = pcache_cache_flush(c);
	if (how == DETACH_GIVE_UP)
		ret = 0; /* a failing flush does not matter: its data is given up */
	if (!ret && how == DETACH_FORGET_CLEAN && pcache_image_has_dirty(c, img->id)) {
		/* not clean: put it back */
		atomic_store(&img->detaching, false);
		pthread_mutex_lock(&c->img_lock);
		for (i = 0; i < PCACHE_MAX_IMAGES; i++)
			if (!c->imgs[i])
				break;
		c->imgs[i] = img;
		pthread_mutex_unlock(&c->img_lock);
		return -EBUSY;
	}
	pthread_mutex_lock(&img->ent_lock);
	e = img->ent;
	pthread_mutex_unlock(&img->ent_lock);
	if (forget) {
		ret = pcache_cache_dev_image_remove(c->cd, e.slot);
	} else {
		e.state = PCACHE_IMAGE_DETACHED;
		ret = pcache_cache_dev_image_update(c->cd, &e);
	}
	pcache_image_teardown(c, img);
	pcache_image_put(img);
	return ret;
}

struct pcache_image *pcache_image_get(struct pcache_cache *c, const char *name)
{
	struct pcache_image *img;

	pthread_mutex_lock(&c->img_lock);
	img = find_attached(c, name);
	if (img)
		atomic_fetch_add(&img->refs, 1);
	pthread_mutex_unlock(&c->img_lock);
	return img;
}

static int img_cmp(const void *a, const void *b)
{
	return strcmp((*(struct pcache_image *const *)a)->name, (*(struct pcache_image *const *)b)->name);
}

int pcache_cache_images(struct pcache_cache *c, struct pcache_image **v, int max)
{
	struct pcache_image *all[PCACHE_MAX_IMAGES];
	int n = 0, i;
	uint32_t s;

	pthread_mutex_lock(&c->img_lock);
	for (s = 0; s < PCACHE_MAX_IMAGES; s++)
		if (c->imgs[s])
			all[n++] = c->imgs[s];
	qsort(all, (size_t)n, sizeof(all[0]), img_cmp);
	if (n > max)
		n = max;
	for (i = 0; i < n; i++) {
		atomic_fetch_add(&all[i]->refs, 1);
		v[i] = all[i];
	}
	pthread_mutex_unlock(&c->img_lock);
	return n;
}

const char *pcache_image_name(const struct pcache_image *img)
{
	return img->name;
}

struct rename_arg {
	const char *to, *path;
};

static void rename_edit_fn(struct pcache_image_ent *e, void *arg)
{
	const struct rename_arg *r = arg;

	snprintf(e->name, sizeof(e->name), "%s", r->to);
	snprintf(e->path, sizeof(e->path), "%s", r->path);
}

int pcache_image_rename(struct pcache_cache *c, const char *name, const char *to, const char *path)
{
	struct rename_arg ra = { to, path };
	struct pcache_image_ent e, got;
	struct pcache_name_node *n = NULL;
	struct pcache_image *img;
	int ret;

	if (!pcache_image_name_valid(to) || !*path || strlen(path) > PCACHE_PATH_MAX)
		return -EINVAL;
	pthread_mutex_lock(&c->img_lock);
	if (strcmp(name, to) && (find_attached(c, to) || pcache_cache_dev_image_find(c->cd, to, &e) == 0)) {
		ret = -EEXIST;
		goto out;
	}
	img = find_attached(c, name);
	if (img) {
		n = calloc(1, sizeof(*n));
		if (!n) {
			ret = -ENOMEM;
			goto out;
		}
		ret = pcache_image_ent_edit(img, rename_edit_fn, &ra);
		if (!ret) {
			/* older names stay allocated: a reader may hold one */
			snprintf(n->s, sizeof(n->s), "%s", to);
			n->next = img->renames;
			img->renames = n;
			atomic_store(&img->name, n->s);
			n = NULL;
		}
	} else if (pcache_cache_dev_image_find(c->cd, name, &e) == 0) {
		ret = pcache_cache_dev_image_modify(c->cd, e.slot, e.id, rename_edit_fn, &ra, &got);
	} else {
		ret = -ENOENT;
	}
	if (!ret)
		pcache_log(PCACHE_LOG_INFO, "image %s: renamed to %s (%s)", name, to, path);
out:
	pthread_mutex_unlock(&c->img_lock);
	free(n);
	return ret;
}

uint64_t pcache_image_size(const struct pcache_image *img)
{
	return img->bytes;
}

bool pcache_image_growable(const struct pcache_image *img)
{
	struct pcache_image *m = (struct pcache_image *)img;
	bool fixed;

	if (pcache_backing_is_blockdev(img->b) || img->read_only)
		return false;
	pthread_mutex_lock(&m->ent_lock);
	fixed = m->ent.fixed;
	pthread_mutex_unlock(&m->ent_lock);
	return !fixed;
}

static void fixed_edit_fn(struct pcache_image_ent *e, void *arg)
{
	e->fixed = *(const bool *)arg;
}

int pcache_image_set_growable(struct pcache_image *img, bool on)
{
	bool fixed = !on;

	if (on && pcache_backing_is_blockdev(img->b))
		return -EINVAL;
	return pcache_image_ent_edit(img, fixed_edit_fn, &fixed);
}

static void size_edit_fn(struct pcache_image_ent *e, void *arg)
{
	e->size = *(const uint64_t *)arg;
}

/*
 * Order, so that every state a crash can leave is one the next attach accepts: the image
 * table first (the new size is durable before any write past the old end is acknowledged:
 * its keys would not replay past the recorded size), then the backing (an attach finds the
 * file shorter than the record and extends it), then the index, then the engine's sector
 * bound (a request checked against it finds the subtrees there), then the byte size callers
 * see (a request sized from it passes the bound).
 */
int pcache_image_grow(struct pcache_image *img, uint64_t bytes)
{
	uint64_t old;
	int ret;

	if (!pcache_image_growable(img))
		return img->read_only ? -EROFS : -EFBIG;
	if (bytes > PCACHE_GROW_MAX)
		return -EFBIG;
	pthread_mutex_lock(&img->grow_lock);
	old = img->bytes;
	if (bytes <= old) {
		pthread_mutex_unlock(&img->grow_lock);
		return 0;
	}
	ret = pcache_image_ent_edit(img, size_edit_fn, &bytes);
	if (!ret) {
		ret = pcache_backing_grow(img->b, bytes);
		if (ret) {
			pcache_log(PCACHE_LOG_WARNING, "image %s: cannot grow %s to %" PRIu64 " bytes: %s",
				   img->name, pcache_backing_path(img->b), bytes, strerror(-ret));
			pcache_image_ent_edit(img, size_edit_fn, &old);
		}
	}
	if (!ret)
		ret = pcache_index_grow(&img->ix, PCACHE_ALIGN_UP(bytes, (uint64_t)img->lbs));
	if (!ret) {
		/* the engine's bound first: whoever sees the new byte size is let in */
		img->size = PCACHE_ALIGN_UP(bytes, (uint64_t)img->lbs);
		img->bytes = bytes;
	}
	pthread_mutex_unlock(&img->grow_lock);
	return ret;
}

struct read_wait {
	sem_t sem;
	int status;
};

static void read_wait_done(void *priv, int status)
{
	struct read_wait *w = priv;

	w->status = status;
	sem_post(&w->sem);
}

int pcache_image_read_wait(struct pcache_image *img, void *buf, uint64_t off, size_t len)
{
	struct read_wait w = { .status = 0 };
	int ret;

	sem_init(&w.sem, 0, 0);
	ret = pcache_image_read(img, buf, off, len, read_wait_done, &w);
	if (ret == PCACHE_IO_PENDING) {
		while (sem_wait(&w.sem) != 0)
			;
		ret = w.status;
	}
	sem_destroy(&w.sem);
	return ret;
}

/* The bytes of the new last sector past the new end become zeros (a read-modify-write). */
static int shrink_zero_tail(struct pcache_image *img, uint64_t bytes)
{
	uint64_t sec = bytes - bytes % img->lbs;
	char *buf;
	int ret;

	if (bytes % img->lbs == 0)
		return 0;
	buf = aligned_alloc(4096, PCACHE_ALIGN_UP(img->lbs, 4096u));
	if (!buf)
		return -ENOMEM;
	ret = pcache_image_read_wait(img, buf, sec, img->lbs);
	if (!ret) {
		memset(buf + (bytes - sec), 0, img->lbs - (bytes - sec));
		ret = pcache_image_write(img, buf, sec, img->lbs, 0);
	}
	free(buf);
	return ret;
}

/*
 * Order, so that a crash leaves the old size with zeros past the new end, or the new size:
 * the tail becomes zeros in the cache (ZERO keys, logged after every older key of those bytes,
 * so the writeback writes the old bytes, if at all, before the zeros), durable with a flush;
 * then the bounds drop (no new I/O past the end); then the file is cut (an attach finds it
 * shorter than the record and extends it with zeros: the old size, zero tail); then the record.
 * Replay drops keys past the recorded end and clips a key across it.
 */
int pcache_image_shrink(struct pcache_image *img, uint64_t bytes)
{
	uint64_t old_span, new_span;
	int ret;

	if (img->read_only)
		return -EROFS;
	if (!pcache_image_growable(img))
		return -EPERM;
	pthread_mutex_lock(&img->grow_lock);
	if (bytes >= img->bytes) {
		pthread_mutex_unlock(&img->grow_lock);
		return 0;
	}
	old_span = img->size;
	new_span = PCACHE_ALIGN_UP(bytes, (uint64_t)img->lbs);
	ret = shrink_zero_tail(img, bytes);
	if (!ret && new_span < old_span)
		ret = pcache_image_discard(img, new_span, old_span - new_span, true);
	if (!ret)
		ret = pcache_image_flush(img);
	if (ret) {
		pthread_mutex_unlock(&img->grow_lock);
		return ret;
	}
	/* the byte size callers see first, then the engine's bound (the reverse of a growth) */
	img->bytes = bytes;
	img->size = new_span;
	ret = pcache_backing_shrink(img->b, bytes);
	if (!ret)
		ret = pcache_image_ent_edit(img, size_edit_fn, &bytes);
	if (ret)
		pcache_log(PCACHE_LOG_WARNING, "image %s: shrinking %s to %" PRIu64 " bytes: %s (the bytes "
			   "past it read as zeros)", img->name, pcache_backing_path(img->b), bytes,
			   strerror(-ret));
	pthread_mutex_unlock(&img->grow_lock);
	return ret;
}

uint64_t pcache_image_blocks(const struct pcache_image *img)
{
	return pcache_backing_blocks(img->b);
}

int pcache_image_backing_stat(const struct pcache_image *img, struct stat *st)
{
	return pcache_backing_stat(img->b, st);
}

uint32_t pcache_image_lbs(const struct pcache_image *img)
{
	return img->lbs;
}

void pcache_image_attr(const struct pcache_image *img, uint32_t *mode, uint32_t *uid, uint32_t *gid)
{
	struct pcache_image *m = (struct pcache_image *)img;

	pthread_mutex_lock(&m->ent_lock);
	if (mode)
		*mode = m->ent.file_mode;
	if (uid)
		*uid = m->ent.uid;
	if (gid)
		*gid = m->ent.gid;
	pthread_mutex_unlock(&m->ent_lock);
}

struct attr_edit {
	uint32_t mode, uid, gid;
};

static void attr_edit_fn(struct pcache_image_ent *e, void *arg)
{
	const struct attr_edit *a = arg;

	e->file_mode = a->mode;
	e->uid = a->uid;
	e->gid = a->gid;
}

/*
 * Field updates go through pcache_cache_dev_image_modify() (read-modify-write under the table
 * lock), never a whole-entry rewrite from img->ent: the writeback persists wb_lsn/wb_time of
 * the same entry concurrently, and a stale copy would undo it (or it would undo ours).
 */
int pcache_image_ent_edit(struct pcache_image *img, void (*fn)(struct pcache_image_ent *, void *),
			  void *arg)
{
	struct pcache_image_ent e;
	int ret;

	pthread_mutex_lock(&img->ent_lock);
	ret = pcache_cache_dev_image_modify(img->c->cd, img->ent.slot, img->ent.id, fn, arg, &e);
	if (!ret) {
		img->ent = e;
		ent_apply(img);
	}
	pthread_mutex_unlock(&img->ent_lock);
	return ret;
}

int pcache_image_set_attr(struct pcache_image *img, uint32_t mode, uint32_t uid, uint32_t gid)
{
	struct attr_edit a = { mode, uid, gid };

	if (mode > 07777)
		return -EINVAL;
	return pcache_image_ent_edit(img, attr_edit_fn, &a);
}

void pcache_image_free(struct pcache_image *img)
{
	while (img->renames) {
		struct pcache_name_node *n = img->renames;

		img->renames = n->next;
		free(n);
	}
	pcache_index_exit(&img->ix);
	pcache_through_destroy(&img->through);
	pthread_mutex_destroy(&img->seq.lock);
	pthread_mutex_destroy(&img->wseq.lock);
	pthread_mutex_destroy(&img->nofill_lock);
	pthread_mutex_destroy(&img->ent_lock);
	pthread_mutex_destroy(&img->grow_lock);
	free(img);
}

void pcache_image_put(struct pcache_image *img)
{
	if (img && atomic_fetch_sub(&img->refs, 1) == 1)
		pcache_image_free(img);
}

/* Wait until no I/O and no writeback reference is on img (detaching already set). */
void pcache_image_quiesce(struct pcache_image *img)
{
	while (atomic_load(&img->inflight) || atomic_load(&img->wb_refs))
		usleep(1000);
}

/* Close the image's backing and free its index; it is out of the list, quiesced. */
void pcache_image_teardown(struct pcache_cache *c, struct pcache_image *img)
{
	uint32_t i;

	pthread_mutex_lock(&c->img_lock);
	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (c->live[i] == img)
			c->live[i] = NULL;
	pthread_mutex_unlock(&c->img_lock);
	pcache_backing_close(img->b);
	img->b = NULL;
	/* the index is freed with the last reference (stats readers may still look at it) */
}

bool pcache_name_valid(const char *name)
{
	return pcache_image_name_valid(name);
}

int pcache_cache_known_image(struct pcache_cache *c, const char *name, struct pcache_image_ent *e)
{
	return pcache_cache_dev_image_find(c->cd, name, e);
}
