/*
 * Two-thread stress test of the SPSC ring in c/convai_ring.h.
 *
 * The producer pushes N frames: each carries its sequence number and a fill byte derived from
 * it; event ids advance every UTTERANCE frames, like an agent's turns. Every INTERRUPT_EVERY-th
 * utterance, the producer raises the watermark past it before starting the next one, as an
 * interruption does. The consumer pops as fast as it can.
 *
 * It proves: nothing is duplicated or reordered (sequence strictly increasing), nothing is torn
 * (fill bytes match), nothing is lost (popped + skipped == pushed), only stale frames are
 * dropped (every missing frame is older than a watermark raised while it was still queued),
 * and no frame below the watermark the consumer saw before popping is ever returned.
 *
 * Usage: ring_stress [frames]   (default 10000000). Prints one JSON line; exit 0 on success.
 */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "convai_ring.h"

#define FRAME 160u
#define SLOTS 512u
#define UTTERANCE 50u
#define INTERRUPT_EVERY 7u

static struct convai_ring *ring;
static uint64_t total;
static unsigned char *popped;   /* one byte per frame: 1 when the consumer got it */
static volatile int failed;

static uint32_t event_of(uint64_t seq)
{
	return (uint32_t) (seq / UTTERANCE) + 1;
}

static int interrupted(uint32_t event_id)
{
	return event_id % INTERRUPT_EVERY == 0;
}

/*
 * May the consumer have dropped frame \a seq? Only if a watermark above its event id was
 * raised while it was still queued: at the next interruption point S (where the producer
 * raises the watermark before pushing frame S), the ring held at most frames [S - SLOTS, S).
 */
static int may_drop(uint64_t seq)
{
	uint32_t u = event_of(seq);
	uint64_t s;

	while (!interrupted(u)) {
		u++;
	}
	s = (uint64_t) u * UTTERANCE;   /* first frame of utterance u + 1 */
	return s < total && seq + SLOTS >= s;
}

static void *producer(void *unused)
{
	unsigned char buf[FRAME];
	uint64_t seq;

	(void) unused;
	for (seq = 0; seq < total; seq++) {
		uint32_t ev = event_of(seq);

		if (seq % UTTERANCE == 0 && ev > 1 && interrupted(ev - 1)) {
			convai_ring_drop_below(ring, ev);
		}
		memcpy(buf, &seq, sizeof(seq));
		memset(buf + sizeof(seq), (int) (seq * 31u & 0xff), FRAME - sizeof(seq));
		while (convai_ring_push(ring, ev, buf, FRAME) == -1) {
			sched_yield();
		}
	}
	return NULL;
}

static void *consumer(void *unused)
{
	unsigned char buf[FRAME];
	uint64_t got = 0, last = 0;
	int have_last = 0;

	(void) unused;
	while (!failed) {
		uint32_t below = atomic_load_explicit(&ring->drop_below, memory_order_acquire);
		uint32_t ev;
		uint64_t seq;
		int n = convai_ring_pop(ring, &ev, buf, sizeof(buf));

		if (n < 0) {
			if (got + convai_ring_skipped(ring) == total) {
				break;
			}
			sched_yield();
			continue;
		}
		memcpy(&seq, buf, sizeof(seq));
		if (n != FRAME || seq >= total || ev != event_of(seq) || ev < below
			|| buf[FRAME - 1] != (unsigned char) (seq * 31u & 0xff)
			|| (have_last && seq <= last)) {
			fprintf(stderr, "bad frame: n=%d seq=%" PRIu64 " ev=%u below=%u last=%" PRIu64 "\n",
				n, seq, ev, below, last);
			failed = 1;
			break;
		}
		popped[seq] = 1;
		last = seq;
		have_last = 1;
		got++;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct timespec t0, t1;
	pthread_t p, c;
	uint64_t seq, missing = 0, got = 0, wrongly_dropped = 0;
	double secs;

	total = argc > 1 ? strtoull(argv[1], NULL, 10) : 10000000ull;
	ring = aligned_alloc(64, (convai_ring_size(SLOTS, FRAME) + 63) & ~(size_t) 63);
	popped = calloc(total, 1);
	if (!ring || !popped) {
		return 2;
	}
	memset(ring, 0, convai_ring_size(SLOTS, FRAME));
	convai_ring_init(ring, SLOTS, FRAME);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	pthread_create(&c, NULL, consumer, NULL);
	pthread_create(&p, NULL, producer, NULL);
	pthread_join(p, NULL);
	pthread_join(c, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (double) (t1.tv_sec - t0.tv_sec) + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9;

	for (seq = 0; seq < total; seq++) {
		if (popped[seq]) {
			got++;
		} else {
			missing++;
			wrongly_dropped += !may_drop(seq);
		}
	}
	printf("{\"frames\": %" PRIu64 ", \"popped\": %" PRIu64 ", \"skipped\": %" PRIu64
		", \"missing\": %" PRIu64 ", \"wrongly_dropped\": %" PRIu64 ", \"seconds\": %.3f"
		", \"frames_per_second\": %.0f, \"ok\": %s}\n",
		total, got, convai_ring_skipped(ring), missing, wrongly_dropped, secs, total / secs,
		!failed && missing == convai_ring_skipped(ring) && !wrongly_dropped ? "true" : "false");
	return failed || missing != convai_ring_skipped(ring) || wrongly_dropped;
}
