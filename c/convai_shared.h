/*
 * app_elevenlabs_convai -- the contract between the Asterisk side, the Python host and cffi.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * Neutral on purpose: only the C standard library, so that the Asterisk-side files (asterisk.h
 * first), pyhost.c (Python.h first) and the cffi extension can all include it.
 *
 * C owns every byte declared here. Python receives addresses and reads or writes through the
 * rings and the accessors below; it never sees an Asterisk object.
 */
#ifndef CONVAI_SHARED_H
#define CONVAI_SHARED_H

#include <time.h>

#include "convai_ring.h"

/* Bumped whenever a layout or meaning below changes; Python refuses to boot on a mismatch. */
#define CONVAI_ABI_VERSION 2

#define CONVAI_HOST_MAGIC 0x434f4e56u    /* "CONV" */
#define CONVAI_SESSION_MAGIC 0x53455353u /* "SESS" */

/* Largest 20 ms frame: pcm_16000 is 640 bytes. */
#define CONVAI_FRAME_MAX 640u
/* Down ring: 10.24 s of agent audio; Python keeps any excess in its own backlog. */
#define CONVAI_DOWN_SLOTS 512u
/* Up ring: 2.56 s of caller audio. */
#define CONVAI_UP_SLOTS 128u
/* Command queues. */
#define CONVAI_CMD_SLOTS 64u
#define CONVAI_CMD_BYTES 1000u

/* Commands, carried in the event id of a command slot. Payloads are UTF-8 text. */
enum convai_cmd_type {
	/* Python -> C */
	CONVAI_CMD_STARTED = 1,   /* "conversation_id\tinput_format\toutput_format" */
	CONVAI_CMD_END = 2,       /* "STATUS\treason\tdetail": drain the down ring, then leave;
	                           * STATUS TRANSFER: then carry out the accepted transfer */
	CONVAI_CMD_EVENT = 3,     /* "Event: Name\r\nKey: value\r\n...": AMI event for this channel */
	CONVAI_CMD_SETVAR = 4,    /* "NAME=value": channel variable */
	CONVAI_CMD_FLUSH = 5,     /* stop the agent's audio now (no payload) */
	CONVAI_CMD_TRANSFER = 6,  /* "tool_call_id\ttarget name": the agent's transfer tool */
	CONVAI_CMD_SEND_DTMF = 7, /* "digits": 0-9 * # w W, sent on the channel */
	/* C -> Python */
	CONVAI_CMD_DTMF = 101,    /* the digit, one character */
	CONVAI_CMD_HANGUP = 102,  /* the caller hung up; no payload */
	CONVAI_CMD_TRANSFER_STATE = 103, /* "tool_call_id\tstate\tdetail" (convai_xfer_state) */
	CONVAI_CMD_TOOL_RESULT = 104,    /* "tool_call_id\tis_error 0|1\tresult": from AMI */
};

/* Live counters. Python writes the ones it owns, C the others; both may read any. */
enum convai_stat {
	CONVAI_STAT_BYTES_UP = 0,        /* Python: caller audio bytes sent to the agent */
	CONVAI_STAT_BYTES_DOWN,          /* Python: agent audio bytes received */
	CONVAI_STAT_LAST_EVENT_ID,       /* Python */
	CONVAI_STAT_INTERRUPTIONS,       /* Python */
	CONVAI_STAT_PING_RTT_US,         /* Python */
	CONVAI_STAT_BACKLOG_FRAMES,      /* Python: frames waiting for ring space */
	CONVAI_STAT_FRAMES_PLAYED,       /* C: agent frames written to the channel */
	CONVAI_STAT_UNDERRUNS,           /* C: ticks with an utterance under way but nothing queued */
	CONVAI_STAT_LATE_TICKS,          /* C: timer expirations beyond one per wake-up */
	CONVAI_STAT_FRAMES_UP,           /* C: caller frames queued */
	CONVAI_STAT_UP_OVERFLOWS,        /* C: caller frames lost because Python fell behind */
	CONVAI_STAT_INTERRUPT_STAMP,     /* Python: µs stamp of the last interruption's arrival */
	CONVAI_STAT_MAX
};

/*
 * Latency histograms, in µs, each with exactly one writer. Buckets: 10 µs wide below 1 ms,
 * 250 µs wide below 20 ms, 5 ms wide below 200 ms, then one overflow bucket.
 */
enum convai_hist {
	CONVAI_HIST_PLAYOUT = 0,   /* C: |interval between agent-audio writes - 20 ms| */
	CONVAI_HIST_FIRST_FRAME,   /* C: agent audio received by Python -> its first frame written */
	CONVAI_HIST_BARGE_IN,      /* C: interruption received by Python -> audio cut */
	CONVAI_HIST_UPLINK,        /* Python: caller chunk complete in the ring -> handed to the session */
	CONVAI_HIST_MAX
};
#define CONVAI_HIST_BUCKETS 213

static inline int convai_hist_bucket(uint64_t us)
{
	if (us < 1000) {
		return (int) (us / 10);
	} else if (us < 20000) {
		return 100 + (int) ((us - 1000) / 250);
	} else if (us < 200000) {
		return 176 + (int) ((us - 20000) / 5000);
	}
	return CONVAI_HIST_BUCKETS - 1;
}

/*! \brief The upper edge of a bucket, in µs (the overflow bucket reports 200 ms). */
static inline uint64_t convai_hist_upper(int b)
{
	if (b < 100) {
		return (uint64_t) (b + 1) * 10;
	} else if (b < 176) {
		return 1000 + (uint64_t) (b - 99) * 250;
	}
	return 20000 + (uint64_t) (b - 175) * 5000;
}

/* Formats the app thread can run the channel in, as the agent's metadata asks. */
enum convai_format {
	CONVAI_FMT_NONE = 0,
	CONVAI_FMT_ULAW = 1,      /* ulaw_8000: 160 bytes per 20 ms, passed through untouched */
	CONVAI_FMT_SLIN = 2,      /* pcm_8000: 320 bytes */
	CONVAI_FMT_SLIN16 = 3,    /* pcm_16000: 640 bytes */
};

struct convai_session {
	uint32_t magic;
	uint32_t id;
	_Atomic int refs;          /* one for the app thread, one for Python */
	int up_efd;                /* C -> Python: caller audio chunk ready or command queued */
	int down_efd;              /* Python -> C: command queued */
	uint32_t up_batch_frames;  /* signal Python once this many caller frames are queued */
	_Atomic uint32_t up_unsignalled;
	unsigned int callid;       /* Asterisk call id, so Python's log lines carry [C-xxxxxxxx] */
	int send_caller_number;
	int buffer_ms;
	/* Call and agent settings, fixed at creation; NUL-terminated. */
	char agent[64];
	char agent_id[128];
	char api_key[256];
	char endpoint[512];
	char channel[128];
	char uniqueid[64];
	char caller_number[80];
	char caller_name[80];
	char exten[80];
	char extra_json[8192];     /* optional JSON: dynamic_variables, overrides, tools */
	_Atomic uint64_t stats[CONVAI_STAT_MAX];
	uint32_t hist[CONVAI_HIST_MAX][CONVAI_HIST_BUCKETS];
	struct convai_ring *up;    /* caller audio: C produces, Python consumes */
	struct convai_ring *down;  /* agent audio: Python produces, C consumes */
	struct convai_ring *to_c;  /* commands: Python produces, C consumes */
	struct convai_ring *to_py; /* commands: C produces, Python consumes */
	struct convai_session *next_pending;
};

/* Levels Python passes to host->log(); they are Asterisk's __LOG_* values. */
enum convai_log_level {
	CONVAI_LOG_DEBUG = 0,
	CONVAI_LOG_NOTICE = 2,
	CONVAI_LOG_WARNING = 3,
	CONVAI_LOG_ERROR = 4,
	CONVAI_LOG_VERBOSE = 5,
};

struct convai_host {
	uint32_t magic;
	uint32_t abi_version;
	int wake_efd;                /* C -> Python: sessions pending, reload or stop */
	_Atomic int debug;           /* `elevenlabs debug on|off` */
	_Atomic int stop;            /* Asterisk is shutting down */
	_Atomic int stall_ms;        /* test hook: block the loop this long once (resilience tests) */
	/* Filled by C; Python calls them from the loop thread. */
	void (*log)(int level, const char *file, int line, const char *func, unsigned int callid,
		const char *msg);
	struct convai_session *(*take_session)(void);
	void (*release_session)(struct convai_session *s);
};

/* Accessors that keep C11 atomics out of cffi's cdef. */
static inline uint64_t convai_stat_get(struct convai_session *s, int i)
{
	return atomic_load_explicit(&s->stats[i], memory_order_relaxed);
}

static inline void convai_stat_set(struct convai_session *s, int i, uint64_t v)
{
	atomic_store_explicit(&s->stats[i], v, memory_order_relaxed);
}

static inline void convai_stat_add(struct convai_session *s, int i, uint64_t v)
{
	atomic_fetch_add_explicit(&s->stats[i], v, memory_order_relaxed);
}

/* The stamp both sides put on ring slots: CLOCK_MONOTONIC in µs, truncated to 32 bits. */
static inline uint32_t convai_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint32_t) ((uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u);
}

/* Single writer per histogram; readers see a consistent-enough snapshot for reporting. */
static inline void convai_hist_add(struct convai_session *s, int h, uint32_t us)
{
	s->hist[h][convai_hist_bucket(us)]++;
}

static inline int convai_host_debug(struct convai_host *h)
{
	return atomic_load_explicit(&h->debug, memory_order_relaxed);
}

static inline int convai_host_take_stall(struct convai_host *h)
{
	return atomic_exchange_explicit(&h->stall_ms, 0, memory_order_relaxed);
}

static inline int convai_host_stopping(struct convai_host *h)
{
	return atomic_load_explicit(&h->stop, memory_order_acquire);
}

#endif /* CONVAI_SHARED_H */
