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

/* Everything between a "cffi: begin" and the next "cffi: end" is plain C that
 * python/convai/_native_build.py feeds to cffi's cdef as it stands: one declaration for both
 * languages, checked by the compiler (API mode). Only integer literals, enums and plain
 * structs in there. */
/* --- cffi: begin --- */

/* Bumped whenever a layout or meaning below changes; Python refuses to boot on a mismatch. */
#define CONVAI_ABI_VERSION 6

#define CONVAI_HOST_MAGIC 0x434f4e56    /* "CONV" */
#define CONVAI_SESSION_MAGIC 0x53455353 /* "SESS": checked by Python when it takes a session */

/* Largest 20 ms frame: pcm_16000 is 640 bytes. */
#define CONVAI_FRAME_MAX 640
/* Down ring: 1.28 s of agent audio; Python keeps any excess in its own bounded backlog and
 * tops the ring up every 0.25 s (host.py TOP_UP_S), so the ring holds over a second whenever
 * audio waits. Every slot becomes resident (calloc, and the ring's cycle touches them all):
 * 42 KB a call, where 512 slots were 336 KB (bench/). */
#define CONVAI_DOWN_SLOTS 64
/* Up ring: two chunks of the agent's buffer_ms, at least 0.64 s of caller audio: Python pops
 * each chunk as it is signalled and may be one chunk (and at least 400 ms) late. */
#define CONVAI_UP_SLOTS_MIN 32
/* Up ring slots carry event id 0, except the frame at which the caller's speech ended (the
 * channel thread's energy check, c/call.c): that one carries CONVAI_UP_END_OF_SPEECH, and
 * Python sends the partial chunk it ends at once instead of waiting for a full one. */
#define CONVAI_UP_END_OF_SPEECH 1
/* The energy check: a caller frame is speech when its mean absolute sample, on the 16-bit
 * linear scale, reaches CONVAI_UP_SPEECH_LEVEL (about -45 dBFS: a phone line's idle noise is
 * -60 dBFS and below, the quietest consonants -40 and above). The CONVAI_UP_HANGOVER_FRAMES-th
 * quiet frame in a row after speech ends it. One frame, because issue 12 wants the last word at
 * the agent within 40 ms (two frames measured 43 ms at p99, one 26.5 ms), and a flush too many
 * (a quiet frame inside a word) costs only one shorter WebSocket message: nothing is lost or
 * reordered, and the next chunk counts afresh. */
#define CONVAI_UP_SPEECH_LEVEL 150
#define CONVAI_UP_HANGOVER_FRAMES 1
/* Command queues: slots of one command record each (see below); each side drains its queue
 * within a loop turn, and a call sends a few commands a second at most. */
#define CONVAI_CMD_SLOTS 16
#define CONVAI_CMD_BYTES 1000

/* elevenlabs_audio_frames_buffer_ms: caller audio per WebSocket message, a multiple of 20. */
#define CONVAI_BUFFER_MS_MIN 20
#define CONVAI_BUFFER_MS_MAX 2000

/* An id the server chooses (conversation, tool call) or a tool name, NUL included:
 * protocol.ID_PATTERN allows 128 characters. */
#define CONVAI_ID_BYTES 129
/* A tool call's parameters as JSON, cut to fit, NUL included. */
#define CONVAI_PARAMS_BYTES 600
/* A transfer target's name, digits the agent sends, a transfer state's detail, an AMI tool
 * result: NUL included. */
#define CONVAI_TARGET_BYTES 32
#define CONVAI_DIGITS_BYTES 72
#define CONVAI_DETAIL_BYTES 128
#define CONVAI_RESULT_BYTES 840
/* A channel variable set for the dialplan (name and value), NUL included. */
#define CONVAI_VAR_NAME_BYTES 64
#define CONVAI_VAR_VALUE_BYTES 257

/* Formats the app thread can run the channel in, as the agent's metadata asks
 * (convai_format() below gives each one's name, rate, frame size and silence byte). */
enum convai_format {
	CONVAI_FMT_NONE = 0,
	CONVAI_FMT_ULAW_8000 = 1,    /* μ-law, passed through untouched */
	CONVAI_FMT_PCM_8000 = 2,     /* slin */
	CONVAI_FMT_PCM_16000 = 3,    /* slin16 */
	CONVAI_FMT_MAX
};

struct convai_format_info {
	const char *name;            /* as ConvAI spells it */
	uint32_t sample_rate;
	uint32_t frame_bytes;        /* one 20 ms frame */
	uint32_t silence;            /* the byte a silent frame is filled with */
};

/* ELEVENLABS_STATUS. */
enum convai_status {
	CONVAI_STATUS_RUNNING = 0,
	CONVAI_STATUS_COMPLETED = 1,
	CONVAI_STATUS_HANGUP = 2,
	CONVAI_STATUS_FAILED = 3,
	CONVAI_STATUS_TRANSFER = 4,    /* a transfer tool handed the caller on */
	CONVAI_STATUS_MAX
};

/* ELEVENLABS_END_REASON (convai_reason_name() spells them; protocol.EndReason must match,
 * which tests/unit/test_c_contract.py checks). */
enum convai_reason {
	CONVAI_REASON_NONE = 0,
	CONVAI_REASON_COMPLETED,
	CONVAI_REASON_AGENT_ENDED_CALL,
	CONVAI_REASON_MAX_DURATION,
	CONVAI_REASON_TIMEOUT,
	CONVAI_REASON_POLICY_VIOLATION,
	CONVAI_REASON_SERVER_ERROR,
	CONVAI_REASON_NETWORK_LOSS,
	CONVAI_REASON_CALLER_HANGUP,
	CONVAI_REASON_SIGNED_URL_FAILED,
	CONVAI_REASON_CONNECT_FAILED,
	CONVAI_REASON_UNSUPPORTED_FORMAT,
	CONVAI_REASON_UNKNOWN_AGENT,
	CONVAI_REASON_RUNTIME_UNAVAILABLE,
	CONVAI_REASON_START_TIMEOUT,
	CONVAI_REASON_SHUTDOWN,
	CONVAI_REASON_MESSAGE_TOO_BIG,
	CONVAI_REASON_TRANSFER,
	CONVAI_REASON_MAX
};

/*
 * Commands. Each is one fixed record in one slot of a command ring, its type in the slot's
 * event id and its length exactly sizeof the record (convai_cmd_size() says which). Strings
 * are NUL-terminated UTF-8; the receiver terminates them again and never trusts them: C
 * strips control characters before a value reaches a channel variable, a log line or AMI.
 *
 * Adding a command: a type here, its record struct named after it (CONVAI_CMD_FOO ->
 * struct convai_cmd_foo), a case in convai_cmd_size(), a handler in c/call.c's table
 * (Python -> C) or in host.py's CallBridge._on_command (C -> Python), and the encoder call
 * on the sending side. tests/unit/test_c_contract.py checks the naming and the sizes.
 */
enum convai_cmd_type {
	/* Python -> C: 1..99 */
	CONVAI_CMD_STARTED = 1,        /* the conversation started: set the formats, start playout */
	CONVAI_CMD_END = 2,            /* it ended: play out the down ring if asked, then leave */
	CONVAI_CMD_INTERRUPTION = 3,   /* the caller interrupted: raise ElevenLabsConvAIInterruption */
	CONVAI_CMD_TOOL_CALL = 4,      /* a client tool call: raise ElevenLabsConvAIToolCall */
	CONVAI_CMD_SETVAR = 5,         /* set an ELEVENLABS_* channel variable */
	CONVAI_CMD_TRANSFER = 6,       /* the agent's transfer tool: a target by its name */
	CONVAI_CMD_SEND_DTMF = 7,      /* digits for the channel (0-9 * # w W), on the 20 ms ticks */
	CONVAI_CMD_SYSTEM_TOOL = 8,    /* a system tool ran: raise ElevenLabsConvAISystemTool */
	/* C -> Python: 101.. */
	CONVAI_CMD_DTMF = 101,         /* the caller pressed a key */
	CONVAI_CMD_HANGUP = 102,       /* the call is over on the channel side (reason says why) */
	CONVAI_CMD_TRANSFER_STATE = 103, /* how a transfer is going */
	CONVAI_CMD_TOOL_RESULT = 104,  /* ElevenLabsConvAIToolResult from AMI, for an ami tool */
};

/* How a transfer is going, as the caller's thread sees it (TRANSFER_STATE). */
enum convai_xfer_state {
	CONVAI_XFER_ACCEPTED,          /* blind: leaving once the agent's words have played out */
	CONVAI_XFER_DIALING,           /* warm: the target is being called */
	CONVAI_XFER_RINGING,
	CONVAI_XFER_ANSWERED,          /* warm: the bridge follows */
	CONVAI_XFER_FAILED,
};

struct convai_cmd_started {
	uint32_t in_format;            /* enum convai_format */
	uint32_t out_format;
	char conversation_id[CONVAI_ID_BYTES];
};

struct convai_cmd_end {
	uint32_t status;               /* enum convai_status, never RUNNING */
	uint32_t reason;               /* enum convai_reason */
	uint32_t play_out;             /* 1: play what the ring holds first, whatever the status */
};

struct convai_cmd_interruption {
	uint32_t event_id;             /* the ring's new watermark (already raised) */
};

struct convai_cmd_tool_call {
	char tool_name[CONVAI_ID_BYTES];
	char tool_call_id[CONVAI_ID_BYTES];
	char parameters[CONVAI_PARAMS_BYTES];
	char handler[16];              /* who answers it: module, ami or none */
};

struct convai_cmd_setvar {
	char name[CONVAI_VAR_NAME_BYTES];   /* must start with ELEVENLABS_ */
	char value[CONVAI_VAR_VALUE_BYTES];
};

struct convai_cmd_transfer {
	char tool_call_id[CONVAI_ID_BYTES];
	char target[CONVAI_TARGET_BYTES];   /* a transfer_target name; C looks it up */
};

struct convai_cmd_send_dtmf {
	char digits[CONVAI_DIGITS_BYTES];
};

struct convai_cmd_system_tool {
	char tool_name[CONVAI_ID_BYTES];
	char tool_call_id[CONVAI_ID_BYTES];
	uint32_t is_error;
};

struct convai_cmd_transfer_state {
	char tool_call_id[CONVAI_ID_BYTES];
	uint32_t state;                /* enum convai_xfer_state */
	char detail[CONVAI_DETAIL_BYTES];
};

struct convai_cmd_tool_result {
	char tool_call_id[CONVAI_ID_BYTES];
	uint32_t is_error;
	char result[CONVAI_RESULT_BYTES];
};

struct convai_cmd_dtmf {
	char digit;
};

struct convai_cmd_hangup {
	uint32_t reason;               /* CALLER_HANGUP, MAX_DURATION or SHUTDOWN */
};

/* --- cffi: end --- */

/*! \brief The record size of a command type, 0 for an unknown type. */
static inline uint32_t convai_cmd_size(uint32_t type)
{
	switch (type) {
	case CONVAI_CMD_STARTED: return sizeof(struct convai_cmd_started);
	case CONVAI_CMD_END: return sizeof(struct convai_cmd_end);
	case CONVAI_CMD_INTERRUPTION: return sizeof(struct convai_cmd_interruption);
	case CONVAI_CMD_TOOL_CALL: return sizeof(struct convai_cmd_tool_call);
	case CONVAI_CMD_SETVAR: return sizeof(struct convai_cmd_setvar);
	case CONVAI_CMD_TRANSFER: return sizeof(struct convai_cmd_transfer);
	case CONVAI_CMD_SEND_DTMF: return sizeof(struct convai_cmd_send_dtmf);
	case CONVAI_CMD_SYSTEM_TOOL: return sizeof(struct convai_cmd_system_tool);
	case CONVAI_CMD_TRANSFER_STATE: return sizeof(struct convai_cmd_transfer_state);
	case CONVAI_CMD_TOOL_RESULT: return sizeof(struct convai_cmd_tool_result);
	case CONVAI_CMD_DTMF: return sizeof(struct convai_cmd_dtmf);
	case CONVAI_CMD_HANGUP: return sizeof(struct convai_cmd_hangup);
	}
	return 0;
}

_Static_assert(sizeof(struct convai_cmd_tool_call) <= CONVAI_CMD_BYTES, "a command fits a slot");
_Static_assert(sizeof(struct convai_cmd_setvar) <= CONVAI_CMD_BYTES, "a command fits a slot");
_Static_assert(sizeof(struct convai_cmd_tool_result) <= CONVAI_CMD_BYTES, "a command fits a slot");

/*! \brief A format's facts, or NULL for CONVAI_FMT_NONE and unknown values. */
static inline const struct convai_format_info *convai_format(int fmt)
{
	static const struct convai_format_info table[CONVAI_FMT_MAX] = {
		[CONVAI_FMT_ULAW_8000] = { "ulaw_8000", 8000, 160, 0xff },
		[CONVAI_FMT_PCM_8000] = { "pcm_8000", 8000, 320, 0 },
		[CONVAI_FMT_PCM_16000] = { "pcm_16000", 16000, 640, 0 },
	};

	return fmt > CONVAI_FMT_NONE && fmt < CONVAI_FMT_MAX ? &table[fmt] : NULL;
}

/*! \brief "COMPLETED", "HANGUP", ...; "" for an unknown value. */
static inline const char *convai_status_name(int status)
{
	static const char *const names[CONVAI_STATUS_MAX] = {
		[CONVAI_STATUS_RUNNING] = "RUNNING", [CONVAI_STATUS_COMPLETED] = "COMPLETED",
		[CONVAI_STATUS_HANGUP] = "HANGUP", [CONVAI_STATUS_FAILED] = "FAILED",
		[CONVAI_STATUS_TRANSFER] = "TRANSFER",
	};

	return status >= 0 && status < CONVAI_STATUS_MAX ? names[status] : "";
}

/*! \brief "completed", "caller_hangup", ...; "" for NONE and unknown values. */
static inline const char *convai_reason_name(int reason)
{
	static const char *const names[CONVAI_REASON_MAX] = {
		[CONVAI_REASON_NONE] = "",
		[CONVAI_REASON_COMPLETED] = "completed",
		[CONVAI_REASON_AGENT_ENDED_CALL] = "agent_ended_call",
		[CONVAI_REASON_MAX_DURATION] = "max_duration",
		[CONVAI_REASON_TIMEOUT] = "timeout",
		[CONVAI_REASON_POLICY_VIOLATION] = "policy_violation",
		[CONVAI_REASON_SERVER_ERROR] = "server_error",
		[CONVAI_REASON_NETWORK_LOSS] = "network_loss",
		[CONVAI_REASON_CALLER_HANGUP] = "caller_hangup",
		[CONVAI_REASON_SIGNED_URL_FAILED] = "signed_url_failed",
		[CONVAI_REASON_CONNECT_FAILED] = "connect_failed",
		[CONVAI_REASON_UNSUPPORTED_FORMAT] = "unsupported_format",
		[CONVAI_REASON_UNKNOWN_AGENT] = "unknown_agent",
		[CONVAI_REASON_RUNTIME_UNAVAILABLE] = "runtime_unavailable",
		[CONVAI_REASON_START_TIMEOUT] = "start_timeout",
		[CONVAI_REASON_SHUTDOWN] = "shutdown",
		[CONVAI_REASON_MESSAGE_TOO_BIG] = "message_too_big",
		[CONVAI_REASON_TRANSFER] = "transfer",
	};

	return reason > 0 && reason < CONVAI_REASON_MAX ? names[reason] : "";
}

/* --- cffi: begin --- */

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
	CONVAI_STAT_BACKLOG_DROPPED,     /* Python: agent frames dropped over the backlog's ceiling */
	CONVAI_STAT_UP_FLUSHES,          /* C: ends of the caller's speech, each sent at once */
	CONVAI_STAT_REPHASES,            /* C: utterances started at once, the 20 ms clock re-phased */
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

/* --- cffi: end --- */

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

struct convai_session {
	uint32_t magic;
	uint32_t id;
	_Atomic int refs;          /* the app thread, Python, and the host's ready list */
	_Atomic int ready;         /* on the host's ready list: Python will look at it */
	struct convai_session *next_ready;
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

/* --- cffi: begin --- */

/* Levels Python passes to host->log(); they are Asterisk's __LOG_* values. */
enum convai_log_level {
	CONVAI_LOG_DEBUG = 0,
	CONVAI_LOG_NOTICE = 2,
	CONVAI_LOG_WARNING = 3,
	CONVAI_LOG_ERROR = 4,
	CONVAI_LOG_VERBOSE = 5,
};

/* --- cffi: end --- */

struct convai_host {
	uint32_t magic;
	uint32_t abi_version;
	int wake_efd;                /* C -> Python: sessions pending or ready, reload or stop */
	/* Sessions with caller audio or a command for Python (a lock-free stack, any channel
	 * thread pushes, Python takes it whole): one eventfd for every call, not one per call. */
	_Atomic(struct convai_session *) ready;
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

/*!
 * \brief A channel thread: list \a s for Python (it has caller audio or a command).
 * \retval 1 it was not listed: write the host's wake eventfd
 * The list holds a reference, which Python drops once it has looked (release_session).
 */
static inline int convai_session_mark_ready(struct convai_host *h, struct convai_session *s)
{
	struct convai_session *head;

	if (atomic_exchange_explicit(&s->ready, 1, memory_order_acq_rel)) {
		return 0;   /* listed already: Python has yet to look, and will see this too */
	}
	atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	head = atomic_load_explicit(&h->ready, memory_order_relaxed);
	do {
		s->next_ready = head;
	} while (!atomic_compare_exchange_weak_explicit(&h->ready, &head, s,
		memory_order_release, memory_order_relaxed));
	return 1;
}

/*! \brief Python: take every listed session (a chain through convai_session_unready()). */
static inline struct convai_session *convai_host_take_ready(struct convai_host *h)
{
	return atomic_exchange_explicit(&h->ready, NULL, memory_order_acquire);
}

/*!
 * \brief Python: unlist a taken session before reading its rings; returns the next one.
 * An acquire exchange, so what the channel thread pushed before listing it is visible, and
 * anything it pushes from now on lists it again.
 */
static inline struct convai_session *convai_session_unready(struct convai_session *s)
{
	struct convai_session *next = s->next_ready;

	atomic_exchange_explicit(&s->ready, 0, memory_order_acq_rel);
	return next;
}

static inline int convai_host_stopping(struct convai_host *h)
{
	return atomic_load_explicit(&h->stop, memory_order_acquire);
}

#endif /* CONVAI_SHARED_H */
