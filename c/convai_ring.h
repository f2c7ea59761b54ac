/*
 * app_elevenlabs_convai -- lock-free single-producer/single-consumer ring.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * One ring carries fixed-size slots: a 20 ms audio frame, or a command. Each slot is tagged
 * with an event id. Exactly one thread pushes and exactly one thread pops; neither ever waits.
 *
 * Interruption: the producer publishes a monotonic watermark `drop_below`; the consumer skips
 * every slot whose event id is lower, both those already queued and those pushed later. Only
 * the consumer moves `head`, so a frame is never withdrawn while it is being read. This
 * watermark is the module's one authority on the interruption rule: convai_ring_stale() is
 * the rule, and the producer asks it too before it frames late audio (python/convai/host.py).
 *
 * This header is included by the Asterisk-facing C file, by the Python-facing C file and by
 * the cffi extension, so it uses only the C11 standard library.
 */
#ifndef CONVAI_RING_H
#define CONVAI_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");

#define CONVAI_CACHELINE 64

struct convai_slot {
	uint32_t event_id;
	uint32_t len;
	uint32_t stamp;          /* producer's CLOCK_MONOTONIC in µs (wraps; only differences count) */
	uint32_t reserved;
	unsigned char data[];
};

struct convai_ring {
	_Alignas(CONVAI_CACHELINE) _Atomic uint32_t head;     /* written by the consumer only */
	uint32_t tail_cache;                                    /* consumer's last view of tail */
	_Atomic uint64_t skipped;                               /* slots dropped by the watermark */
	_Alignas(CONVAI_CACHELINE) _Atomic uint32_t tail;     /* written by the producer only */
	uint32_t head_cache;                                    /* producer's last view of head */
	_Atomic uint32_t drop_below;                            /* written by the producer only */
	_Alignas(CONVAI_CACHELINE) uint32_t nslots;           /* a power of two */
	uint32_t slot_bytes;                                    /* payload capacity of one slot */
	uint32_t stride;                                        /* bytes from one slot to the next */
	_Alignas(CONVAI_CACHELINE) unsigned char mem[];
};

static inline size_t convai_ring_stride(uint32_t slot_bytes)
{
	size_t s = sizeof(struct convai_slot) + slot_bytes;
	return (s + 15u) & ~(size_t)15u;
}

/*! \brief Bytes needed for a ring of \a nslots (a power of two) slots of \a slot_bytes. */
static inline size_t convai_ring_size(uint32_t nslots, uint32_t slot_bytes)
{
	return sizeof(struct convai_ring) + (size_t)nslots * convai_ring_stride(slot_bytes);
}

/*! \brief Initialise zeroed memory of convai_ring_size() bytes. Returns -1 on a bad size. */
static inline int convai_ring_init(struct convai_ring *r, uint32_t nslots, uint32_t slot_bytes)
{
	if (nslots < 2 || (nslots & (nslots - 1)) || nslots > (1u << 30) || !slot_bytes) {
		return -1;
	}
	atomic_init(&r->head, 0);
	atomic_init(&r->tail, 0);
	atomic_init(&r->drop_below, 0);
	atomic_init(&r->skipped, 0);
	r->tail_cache = 0;
	r->head_cache = 0;
	r->nslots = nslots;
	r->slot_bytes = slot_bytes;
	r->stride = (uint32_t) convai_ring_stride(slot_bytes);
	return 0;
}

static inline struct convai_slot *convai_ring_slot(struct convai_ring *r, uint32_t idx)
{
	return (struct convai_slot *) (r->mem + (size_t)(idx & (r->nslots - 1)) * r->stride);
}

/*!
 * \brief Producer: queue one slot stamped with \a stamp.
 * \retval 0 queued, -1 full, -2 \a len is too big
 */
static inline int convai_ring_push_stamped(struct convai_ring *r, uint32_t event_id, uint32_t stamp,
	const void *data, uint32_t len)
{
	uint32_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
	struct convai_slot *s;

	if (len > r->slot_bytes) {
		return -2;
	}
	if (t - r->head_cache == r->nslots) {
		r->head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
		if (t - r->head_cache == r->nslots) {
			return -1;
		}
	}
	s = convai_ring_slot(r, t);
	s->event_id = event_id;
	s->len = len;
	s->stamp = stamp;
	if (len) {
		memcpy(s->data, data, len);
	}
	atomic_store_explicit(&r->tail, t + 1, memory_order_release);
	return 0;
}

/*!
 * \brief Producer: queue \a nframes slots of \a frame_len bytes each, read one after the other
 * from \a data, all tagged \a event_id and stamped \a stamp: one call per agent audio chunk
 * from Python (host.py), not one per frame.
 * \return how many were queued (fewer than \a nframes once the ring is full), -2 if
 * \a frame_len is too big
 */
static inline int convai_ring_push_run(struct convai_ring *r, uint32_t event_id, uint32_t stamp,
	const void *data, uint32_t frame_len, uint32_t nframes)
{
	const unsigned char *p = data;
	uint32_t i;

	if (frame_len > r->slot_bytes) {
		return -2;
	}
	for (i = 0; i < nframes; i++) {
		if (convai_ring_push_stamped(r, event_id, stamp, p + (size_t)i * frame_len, frame_len)) {
			break;
		}
	}
	return (int) i;
}

/*! \brief Producer: queue one unstamped slot (see convai_ring_push_stamped()). */
static inline int convai_ring_push(struct convai_ring *r, uint32_t event_id,
	const void *data, uint32_t len)
{
	return convai_ring_push_stamped(r, event_id, 0, data, len);
}

/*! \brief Producer: from now on the consumer drops every slot whose event id is below \a id. */
static inline void convai_ring_drop_below(struct convai_ring *r, uint32_t id)
{
	uint32_t cur = atomic_load_explicit(&r->drop_below, memory_order_relaxed);

	if (id > cur) {
		atomic_store_explicit(&r->drop_below, id, memory_order_release);
	}
}

/*!
 * \brief The interruption rule, the one place it is written: audio older than the last
 * interruption is stale; audio with the interruption's own id is the reply and plays
 * (elevenlabs-python#829: `<=` swallowed it).
 */
static inline int convai_ring_id_stale(uint32_t event_id, uint32_t drop_below)
{
	return event_id < drop_below;
}

/*! \brief Producer: whether a frame with \a event_id would be dropped if pushed now. */
static inline int convai_ring_stale(struct convai_ring *r, uint32_t event_id)
{
	uint32_t below = atomic_load_explicit(&r->drop_below, memory_order_relaxed);

	return convai_ring_id_stale(event_id, below);
}

/*! \brief Producer: free slots (a lower bound: the consumer may free more meanwhile). */
static inline uint32_t convai_ring_space(struct convai_ring *r)
{
	uint32_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);

	r->head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
	return r->nslots - (t - r->head_cache);
}

/*! \brief Either side: slots queued (a snapshot). */
static inline uint32_t convai_ring_count(struct convai_ring *r)
{
	uint32_t h = atomic_load_explicit(&r->head, memory_order_acquire);
	uint32_t t = atomic_load_explicit(&r->tail, memory_order_acquire);

	return t - h;
}

/*!
 * \brief Consumer: skip stale slots, then look at the next one without taking it.
 * \return the slot, or NULL when nothing playable is queued.
 */
static inline struct convai_slot *convai_ring_peek(struct convai_ring *r)
{
	uint32_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint32_t below = atomic_load_explicit(&r->drop_below, memory_order_acquire);
	uint32_t start = h;
	struct convai_slot *s = NULL;

	if (h == r->tail_cache) {
		r->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
	}
	while (h != r->tail_cache) {
		s = convai_ring_slot(r, h);
		if (!convai_ring_id_stale(s->event_id, below)) {
			break;
		}
		s = NULL;
		h++;
		if (h == r->tail_cache) {
			r->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
		}
	}
	if (h != start) {
		atomic_fetch_add_explicit(&r->skipped, h - start, memory_order_relaxed);
		atomic_store_explicit(&r->head, h, memory_order_release);
	}
	return s;
}

/*! \brief Consumer: release the slot returned by convai_ring_peek(). */
static inline void convai_ring_advance(struct convai_ring *r)
{
	uint32_t h = atomic_load_explicit(&r->head, memory_order_relaxed);

	atomic_store_explicit(&r->head, h + 1, memory_order_release);
}

/*!
 * \brief Consumer: take one slot.
 * \return its length (0 is a valid empty slot), or -1 when nothing is queued.
 */
static inline int convai_ring_pop(struct convai_ring *r, uint32_t *event_id, void *out, uint32_t cap)
{
	struct convai_slot *s = convai_ring_peek(r);
	uint32_t n;

	if (!s) {
		return -1;
	}
	n = s->len < cap ? s->len : cap;
	if (event_id) {
		*event_id = s->event_id;
	}
	memcpy(out, s->data, n);
	convai_ring_advance(r);
	return (int) n;
}

/*!
 * \brief Consumer: take up to \a max_slots slots and concatenate their payloads into \a out.
 * \param last_stamp if not NULL, receives the stamp of the last slot taken
 * \param mark if not NULL, receives the event id of the last slot taken, and the pop stops
 *        after the first slot whose id is not 0 (a mark such as CONVAI_UP_END_OF_SPEECH)
 * \return bytes written; stops early when the next payload would not fit.
 */
static inline uint32_t convai_ring_pop_many(struct convai_ring *r, void *out, uint32_t cap,
	uint32_t max_slots, uint32_t *last_stamp, uint32_t *mark)
{
	uint32_t used = 0;
	struct convai_slot *s;

	if (mark) {
		*mark = 0;
	}
	while (max_slots-- && (s = convai_ring_peek(r)) && used + s->len <= cap) {
		uint32_t id = s->event_id;   /* read before advance: then the slot is the producer's */

		memcpy((unsigned char *) out + used, s->data, s->len);
		used += s->len;
		if (last_stamp) {
			*last_stamp = s->stamp;
		}
		convai_ring_advance(r);
		if (mark && (*mark = id)) {
			break;
		}
	}
	return used;
}
/*! \brief Consumer: slots dropped by the watermark so far. */
static inline uint64_t convai_ring_skipped(struct convai_ring *r)
{
	return atomic_load_explicit(&r->skipped, memory_order_relaxed);
}

#endif /* CONVAI_RING_H */
