/*
 * format.h -- the pcachefs on-media format, version 2 (version 1 is read as is: see VERSIONS).
 *
 * Depends only on libc. Every structure here is little-endian with fixed-width fields and has
 * a compile-time size assert at the bottom. Nothing read from media is trusted: the loader
 * (core/cache_dev.c) bounds-checks every field before use and names the structure in its error.
 *
 * MAP OF A CACHE DEVICE
 *
 *   0        +------------------------+
 *            | superblock copy 0      |  4 KiB slot, struct pcache_sb_om
 *   4 KiB    +------------------------+
 *            | superblock copy 1      |  4 KiB slot, identical content
 *   8 KiB    +------------------------+
 *            | cache_info slot 0 / 1  |  2 x 4 KiB, struct pcache_cache_info_om
 *   16 KiB   +------------------------+
 *            | tails                  |  4 KiB: key_tail slots @0,@256; dirty_tail @512,@768
 *   20 KiB   +------------------------+
 *            | image table            |  max_images x 2 slots x 1 KiB (64..512 entries)
 *  segtab    +------------------------+  20 KiB + max_images x 2 KiB (148 KiB for 64)
 *            | segment table          |  seg_count x 2 slots x 32 B (struct pcache_seg_om)
 *            +------------------------+
 *            | (pad to 2 MiB)         |
 *  seg_base  +------------------------+
 *            | segment 0              |  seg_size bytes, all data (no in-segment header)
 *            | segment 1 ...          |  segment i at seg_base + i * seg_size
 *            +------------------------+
 *
 * A segment is free, a data segment (filled sequentially by one data head) or a key-log
 * segment (a chain of ksets). The kind is not stored: replay rebuilds it from the log.
 *
 * COMMON RECORD HEADER (16 B, struct pcache_rec_hdr_om), first in every record:
 *
 *   OFF SIZE FIELD  DESCRIPTION
 *   0   4    crc    CRC32C (seed PCACHE_CRC_SEED) of bytes [4, len) of the record
 *   4   2    type   PCACHE_REC_* -- a slot holding another structure's bytes is invalid
 *   6   2    len    record length in bytes covered by the CRC (== sizeof the record)
 *   8   8    seq    update sequence number (dual-slot records); 0 for the superblock
 *
 * DUAL-SLOT RULE. Every mutable record (cache_info, key_tail, dirty_tail, each image entry,
 * each segment record) has two slots. A slot is valid when type, len and CRC match. Load takes
 * the valid slot with the newer seq (pcache_seq_after(): signed 64-bit difference, so it is
 * wrap-around aware; equal seq -> slot 0). Update writes seq+1 into the slot that does NOT
 * hold the newest valid copy, then persists it. So a torn update leaves the old copy intact
 * (overwriting the newest copy in place, as dm-pcache does, can tear both away).
 *
 * SUPERBLOCK (struct pcache_sb_om, 128 B in a 4 KiB slot, two identical copies)
 *
 *   OFF SIZE FIELD       DESCRIPTION
 *   0   16   hdr         type PCACHE_REC_SB, seq 0
 *   16  8    magic       PCACHE_SB_MAGIC ("PCACHEF1" as le64)
 *   24  4    version     PCACHE_FORMAT_VERSION; newer -> refused
 *   28  4    incompat    feature bits a reader must know (unknown bit -> refused)
 *   32  4    compat      feature bits a reader may ignore
 *   36  4    seg_count   number of segments, >= PCACHE_MIN_SEGS, <= PCACHE_MAX_SEGS
 *   40  8    seg_size    bytes, power of two, PCACHE_MIN_SEG_SIZE..PCACHE_MAX_SEG_SIZE
 *   48  8    seg_base    byte offset of segment 0 (2 MiB aligned, after the segment table)
 *   56  8    dev_size    device size at format time (the device may not shrink below it)
 *   64  16   uuid        random, identifies this cache
 *   80  4    max_images  entries of the image table: exactly PCACHE_MAX_IMAGES_V1 in a version 1
 *                       superblock; a multiple of 64 in 64..PCACHE_MAX_IMAGES in version 2
 *   84  44   reserved    zero
 *
 * CACHE INFO (struct pcache_cache_info_om, 64 B, slots at 8 KiB and 12 KiB)
 *
 *   OFF SIZE FIELD          DESCRIPTION
 *   0   16   hdr            type PCACHE_REC_INFO
 *   16  4    flags          PCACHE_INFO_DATA_CRC
 *   20  4    gc_percent     0..90, or 255 = auto (the default; caches formatted before
 *                           it was added have 70)
 *   24  4    dirty_high     dirty bytes, in percent of all segments' bytes, at which
 *                           writeback goes full speed (0..100)
 *   28  4    dirty_low      percent (same measure) where it slows down again (< dirty_high)
 *   32  8    wb_rate        writeback rate limit in bytes/s, 0 = unlimited
 *   40  4    next_image_id  next image id to hand out (ids are never reused)
 *   44  20   reserved       zero
 *
 * TAIL (struct pcache_tail_om, 32 B; key_tail slots at 16 KiB+0/+256, dirty_tail +512/+768)
 *
 *   OFF SIZE FIELD  DESCRIPTION
 *   0   16   hdr    type PCACHE_REC_KEY_TAIL or PCACHE_REC_DIRTY_TAIL
 *   16  4    seg    segment id of the kset at the tail (< seg_count)
 *   20  4    off    byte offset inside the segment (< seg_size, 8-aligned)
 *   24  8    lsn    log sequence number of the kset at that position
 *
 * VERSIONS. Version 1 had a fixed table of 64 images; version 2 sizes the table at format
 * (max_images: by default 1 entry per MiB of device, 64..512, so it takes at most 1/512 of it)
 * and moves the segment table behind it. Nothing else differs: a version 1 device is read and
 * written as it is (64 images), and a new format writes version 2.
 *
 * IMAGE ENTRY (struct pcache_image_om, 1 KiB; image i slots at 20 KiB + i*2 KiB + {0, 1 KiB})
 *
 *   OFF SIZE FIELD       DESCRIPTION
 *   0   16   hdr         type PCACHE_REC_IMAGE
 *   16  4    id          image id carried by keys (never reused; 0 = slot unused)
 *   20  4    state       PCACHE_IMAGE_FREE / _ATTACHED / _DETACHED
 *   24  16   uuid        random, identifies the image
 *   40  8    size        backing size in bytes (identity)
 *   48  4    lbs         backing logical block size (identity)
 *   52  4    cache_mode  PCACHE_MODE_*
 *   56  4    file_mode   permission bits shown on the mount
 *   60  4    uid
 *   64  4    gid
 *   68  4    flags       PCACHE_IMAGE_F_IDENT: ident holds the backing's stable identity;
 *                       PCACHE_IMAGE_F_FIXED: a file image that does not grow (block devices
 *                       never do). size is the image's size in bytes (any number for a file;
 *                       a growing file image persists its new size here before any write past
 *                       the old end is acknowledged)
 *   72  8    wb_lsn      writeback done up to this log sequence number
 *   80  8    wb_time     wall-clock seconds of that writeback
 *   88  4    seq_cutoff  KiB: reads in a sequential stream past it are not cached; 0 = the
 *                       default (PCACHE_SEQ_CUTOFF_DEFAULT), PCACHE_SEQ_CUTOFF_OFF = no cutoff
 *   92  4    max_share   percent of the data area the image's cached data may hold (1..100);
 *                       0 = no cap. Past it, its reads are not cached and its writeback-mode
 *                       writes go around the cache (docs/architecture.md)
 *   96  32   reserved    zero
 *   128 128  name        NUL-terminated, validated (pcache_image_name_valid())
 *   256 512  path        NUL-terminated backing path, as the user gave it (not resolved)
 *   768 256  ident       NUL-terminated stable identity of the backing (see below)
 *
 * IDENTITY. ident names the data behind path so that a renamed or renumbered device is still
 * recognised and a different one is refused (backing/backing_ident.c builds it): a file is
 * "file fs=<file system UUID> ino=<inode> [gen=<inode generation>]" (fsid=/dev= when the file
 * system has no UUID), a
 * block device "blk dm-uuid=...", "blk wwid=... [part=N]", "blk serial=... [part=N]" or, with
 * nothing stable, "blk devno=M:m"; a loop device "loop <its backing file as a file> off=N".
 * Entries written before identities existed have flags 0 and a path of up to 767 bytes; they
 * get an ident (and need a path of at most 511 bytes) at their next attach.
 *
 * SEGMENT RECORD (struct pcache_seg_om, 32 B; segment i slots at segtab + i*64 + {0, 32})
 *
 *   OFF SIZE FIELD  DESCRIPTION
 *   0   16   hdr    type PCACHE_REC_SEG
 *   16  8    gen    generation: bumped (durably) each time a data segment is freed
 *   24  4    flags  reserved, zero
 *   28  4    reserved
 *
 * KSET (struct pcache_kset_om header 40 B + key_num x 40 B keys; written in key-log segments)
 *
 *   OFF SIZE FIELD     DESCRIPTION
 *   0   4    crc       CRC32C of bytes [4, 40 + key_num * 40)
 *   4   2    key_num   1..PCACHE_KSET_MAX_KEYS (0 for a LAST record)
 *   6   2    flags     PCACHE_KSET_LAST: the log continues at offset 0 of segment next_seg
 *   8   8    magic     PCACHE_KSET_MAGIC
 *   16  8    lsn       log sequence number: exactly previous + 1 (LAST records count too)
 *   24  8    epoch     upper-layer flush epoch the keys belong to (non-decreasing in the log)
 *   32  4    next_seg  LAST only: next key-log segment id
 *   36  4    reserved  zero
 *   40  ...  keys
 *
 * KEY (struct pcache_key_om, 40 B)
 *
 *   OFF SIZE FIELD     DESCRIPTION
 *   0   8    off       logical byte offset in the image (sector aligned)
 *   8   4    len       bytes (sector multiple, never crosses a 4 MiB region or a segment)
 *   12  2    flags     PCACHE_KEY_CLEAN (equals backing), PCACHE_KEY_ZERO (reads as zeros,
 *                      no pmem data)
 *   14  2    reserved  zero
 *   16  4    image_id  owning image (keys of unknown images stay in the log untouched)
 *   20  4    seg       data segment id
 *   24  4    seg_off   offset of the data in the segment
 *   28  4    data_crc  CRC32C of the data when PCACHE_INFO_DATA_CRC, else 0
 *   32  8    seg_gen   generation of seg when the space was allocated (stale if < gen)
 *
 * The end of the log is the first position whose kset has a bad magic, bad CRC, or an lsn that
 * does not continue the log: a stale kset from an earlier lap of a segment can never replay.
 *
 * BLANK DEVICE AND FORMAT. A device is blank when both 4 KiB superblock slots are all zero; only
 * a blank device is formatted on first use. Format (core/cache_dev.c) writes, in this order:
 *   1. zeroes over both superblock slots (from here a crash leaves a blank device);
 *   2. zeroes over [8 KiB, seg_base) and over the first PCACHE_KSET_MAX_SIZE bytes of segment 0;
 *   3. both slots of every record, same values: slot 0 seq 1, slot 1 seq 0 --
 *      cache_info defaults (gc 70, dirty 80/50, wb_rate 0, next_image_id 1, DATA_CRC as asked),
 *      key_tail = dirty_tail = (seg 0, off 0, lsn 1), every image entry FREE (id 0, state 0),
 *      every segment gen 0;
 *   4. superblock copy 0, then copy 1 (the commit record of the format).
 * INITIAL LOG STATE: key_tail == dirty_tail == (0, 0, lsn 1) and the kset at segment 0 offset 0
 * is all zero (invalid), so the log is empty; the first kset written goes there with lsn 1.
 * A removed image is a FREE record written like any update (never a zeroed slot: zeroing would
 * let the older copy win at load). Ids are never reused: next_image_id only grows.
 */
#ifndef PCACHE_FORMAT_H
#define PCACHE_FORMAT_H

#include <stdint.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pcachefs stores little-endian fields with plain loads; big-endian hosts are not supported"
#endif

#define PCACHE_FORMAT_VERSION 2u
#define PCACHE_FORMAT_VERSION_V1 1u   /* fixed 64-image table */
#define PCACHE_SB_MAGIC 0x3146454843414350ULL   /* "PCACHEF1" */
#define PCACHE_KSET_MAGIC 0x5445534B48435050ULL /* "PPCHKSET" */

/* record types (pcache_rec_hdr_om.type) */
#define PCACHE_REC_SB 0x5342u
#define PCACHE_REC_INFO 0x4E49u
#define PCACHE_REC_KEY_TAIL 0x544Bu
#define PCACHE_REC_DIRTY_TAIL 0x5444u
#define PCACHE_REC_IMAGE 0x4D49u
#define PCACHE_REC_SEG 0x4753u

/* device map */
#define PCACHE_SB_OFF 0u
#define PCACHE_SB_SLOT_SIZE 4096u
#define PCACHE_INFO_OFF (PCACHE_SB_OFF + 2 * PCACHE_SB_SLOT_SIZE)
#define PCACHE_INFO_SLOT_SIZE 4096u
#define PCACHE_TAILS_OFF (PCACHE_INFO_OFF + 2 * PCACHE_INFO_SLOT_SIZE)
#define PCACHE_TAILS_SIZE 4096u
#define PCACHE_KEY_TAIL_SLOT(i) (PCACHE_TAILS_OFF + (i) * 256u)
#define PCACHE_DIRTY_TAIL_SLOT(i) (PCACHE_TAILS_OFF + 512u + (i) * 256u)
#define PCACHE_IMAGES_OFF (PCACHE_TAILS_OFF + PCACHE_TAILS_SIZE)
#define PCACHE_MAX_IMAGES_V1 64u    /* the table of a version 1 device */
#define PCACHE_MAX_IMAGES 512u      /* the largest table (version 2) */
#define PCACHE_IMAGES_STEP 64u      /* a version 2 table is a multiple of this */
#define PCACHE_IMAGE_SLOT_SIZE 1024u
#define PCACHE_IMAGE_SLOT(img, i) \
	(PCACHE_IMAGES_OFF + (img) * 2u * PCACHE_IMAGE_SLOT_SIZE + (i) * PCACHE_IMAGE_SLOT_SIZE)
/* the segment table follows an image table of maxi entries */
#define PCACHE_SEGTAB_OFF(maxi) (PCACHE_IMAGES_OFF + (uint64_t)(maxi) * 2u * PCACHE_IMAGE_SLOT_SIZE)
#define PCACHE_SEG_SLOT_SIZE 32u
#define PCACHE_SEG_SLOT(maxi, seg, i) \
	(PCACHE_SEGTAB_OFF(maxi) + (uint64_t)(seg) * 2u * PCACHE_SEG_SLOT_SIZE + (i) * PCACHE_SEG_SLOT_SIZE)
#define PCACHE_SEG_BASE_ALIGN (2u << 20)

/* segment geometry */
#define PCACHE_DEFAULT_SEG_SIZE (16u << 20)
#define PCACHE_MIN_SEG_SIZE (1u << 20)
#define PCACHE_MAX_SEG_SIZE (1u << 30)
#define PCACHE_MIN_SEGS 8u
#define PCACHE_MAX_SEGS (1u << 20)

/* features */
#define PCACHE_INCOMPAT_SUPPORTED 0u
#define PCACHE_COMPAT_SUPPORTED 0u

/* cache_info flags and defaults */
#define PCACHE_INFO_DATA_CRC (1u << 0)
/* gc_percent: 0..PCACHE_MAX_GC_PERCENT, or AUTO: GC keeps a reserve of free segments sized
 * from the allocation rate (cache_gc.c) and lets clean data fill the rest */
#define PCACHE_GC_PERCENT_AUTO 255u
#define PCACHE_DEFAULT_GC_PERCENT PCACHE_GC_PERCENT_AUTO
#define PCACHE_MAX_GC_PERCENT 90u
#define PCACHE_DEFAULT_DIRTY_HIGH 80u
#define PCACHE_DEFAULT_DIRTY_LOW 50u

/* image states and cache modes */
#define PCACHE_IMAGE_FREE 0u
#define PCACHE_IMAGE_ATTACHED 1u
#define PCACHE_IMAGE_DETACHED 2u
#define PCACHE_MODE_WRITEBACK 0u
#define PCACHE_MODE_WRITETHROUGH 1u
#define PCACHE_MODE_WRITEAROUND 2u
#define PCACHE_NAME_MAX 127u
#define PCACHE_PATH_MAX 511u
#define PCACHE_IDENT_LEN 256u
#define PCACHE_IMAGE_F_IDENT (1u << 0)
#define PCACHE_IMAGE_F_FIXED (1u << 1)   /* a file image that does not grow (growable=0) */
/* image entry seq_cutoff (KiB): 0 = this default, PCACHE_SEQ_CUTOFF_OFF = every read cached */
#define PCACHE_SEQ_CUTOFF_DEFAULT (4u << 20)
#define PCACHE_SEQ_CUTOFF_OFF 0xFFFFFFFFu

/* ksets and keys */
#define PCACHE_KSET_LAST (1u << 0)
#define PCACHE_KSET_MAX_KEYS 128u
#define PCACHE_KEY_CLEAN (1u << 0)
#define PCACHE_KEY_ZERO (1u << 1)
#define PCACHE_REGION_SHIFT 22 /* 4 MiB: index subtrees and staging-kset striping */
#define PCACHE_SECTOR 512u     /* keys address whole sectors: off and len are multiples */

struct pcache_rec_hdr_om {
	uint32_t crc;
	uint16_t type;
	uint16_t len;
	uint64_t seq;
};

struct pcache_sb_om {
	struct pcache_rec_hdr_om hdr;
	uint64_t magic;
	uint32_t version;
	uint32_t incompat;
	uint32_t compat;
	uint32_t seg_count;
	uint64_t seg_size;
	uint64_t seg_base;
	uint64_t dev_size;
	uint8_t uuid[16];
	uint32_t max_images;
	uint8_t reserved[44];
};

struct pcache_cache_info_om {
	struct pcache_rec_hdr_om hdr;
	uint32_t flags;
	uint32_t gc_percent;
	uint32_t dirty_high;
	uint32_t dirty_low;
	uint64_t wb_rate;
	uint32_t next_image_id;
	uint8_t reserved[20];
};

struct pcache_tail_om {
	struct pcache_rec_hdr_om hdr;
	uint32_t seg;
	uint32_t off;
	uint64_t lsn;
};

struct pcache_image_om {
	struct pcache_rec_hdr_om hdr;
	uint32_t id;
	uint32_t state;
	uint8_t uuid[16];
	uint64_t size;
	uint32_t lbs;
	uint32_t cache_mode;
	uint32_t file_mode;
	uint32_t uid;
	uint32_t gid;
	uint32_t flags;
	uint64_t wb_lsn;
	uint64_t wb_time;
	uint32_t seq_cutoff;
	uint32_t max_share;
	uint8_t reserved[32];
	char name[128];
	char path[512];
	char ident[256];
};

struct pcache_seg_om {
	struct pcache_rec_hdr_om hdr;
	uint64_t gen;
	uint32_t flags;
	uint32_t reserved;
};

struct pcache_key_om {
	uint64_t off;
	uint32_t len;
	uint16_t flags;
	uint16_t reserved;
	uint32_t image_id;
	uint32_t seg;
	uint32_t seg_off;
	uint32_t data_crc;
	uint64_t seg_gen;
};

struct pcache_kset_om {
	uint32_t crc;
	uint16_t key_num;
	uint16_t flags;
	uint64_t magic;
	uint64_t lsn;
	uint64_t epoch;
	uint32_t next_seg;
	uint32_t reserved;
	struct pcache_key_om keys[];
};

#define PCACHE_KSET_HDR_SIZE ((uint32_t)sizeof(struct pcache_kset_om))
#define PCACHE_KSET_SIZE(n) (PCACHE_KSET_HDR_SIZE + (uint32_t)(n) * (uint32_t)sizeof(struct pcache_key_om))
#define PCACHE_KSET_MAX_SIZE PCACHE_KSET_SIZE(PCACHE_KSET_MAX_KEYS)

_Static_assert(sizeof(struct pcache_rec_hdr_om) == 16, "record header is 16 bytes");
_Static_assert(sizeof(struct pcache_sb_om) == 128, "superblock is 128 bytes");
_Static_assert(sizeof(struct pcache_cache_info_om) == 64, "cache_info is 64 bytes");
_Static_assert(sizeof(struct pcache_tail_om) == 32, "tail is 32 bytes");
_Static_assert(sizeof(struct pcache_image_om) == PCACHE_IMAGE_SLOT_SIZE, "image entry fills its slot");
_Static_assert(sizeof(struct pcache_seg_om) == PCACHE_SEG_SLOT_SIZE, "segment record fills its slot");
_Static_assert(sizeof(struct pcache_key_om) == 40, "key is 40 bytes");
_Static_assert(sizeof(struct pcache_kset_om) == 40, "kset header is 40 bytes");
_Static_assert(PCACHE_IMAGES_OFF == 20u * 1024u, "image table at 20 KiB");
_Static_assert(PCACHE_SEGTAB_OFF(PCACHE_MAX_IMAGES_V1) == 148u * 1024u, "v1 segment table at 148 KiB");
_Static_assert(PCACHE_SEGTAB_OFF(PCACHE_MAX_IMAGES) < PCACHE_SEG_BASE_ALIGN, "the largest image table ends below 2 MiB");

#endif
