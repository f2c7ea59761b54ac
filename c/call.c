/*
 * app_elevenlabs_convai -- one call: the media loop, agent audio out, caller audio up, the end.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * Everything here runs on the channel's own thread, in one ast_waitfor_nandfds() loop over the
 * channel, a 20 ms timerfd (one agent frame per tick) and the session's command eventfd.
 */

#include "asterisk.h"

#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "asterisk/astobj2.h"
#include "asterisk/channel.h"
#include "asterisk/format_cache.h"
#include "asterisk/frame.h"
#include "asterisk/linkedlists.h"
#include "asterisk/logger.h"
#include "asterisk/pbx.h"
#include "asterisk/strings.h"
#include "asterisk/ulaw.h"
#include "asterisk/utils.h"

#include "convai_private.h"
#include "metrics.h"

/* Safety net only: Python gives up first, with the real cause. Its worst case before the
 * metadata is 3 signed-URL attempts of 10 s (aiohttp rounds each up to a whole second) with
 * 0.5 s + 1 s backoff, 10 s WebSocket handshake, 10 s for the metadata: about 54 s. */
#define START_TIMEOUT_MS 60000
#define DRAIN_MAX_MS 30000
#define PREBUFFER_FRAMES 3       /* 60 ms, absorbed at once when a chunk arrives */
#define CATCHUP_MAX 3U           /* frames written for one wake-up after a stall */
/* First audio at once: never two packets closer than this (no burst the caller's jitter
 * buffer would see; 11 ms, not 10, leaves the pacing check of the SIP tests their margin). */
#define REPHASE_MIN_GAP_US 11000
#define FADE_MS 8
#define UP_SLACK_FRAMES 3        /* caller audio may lag the clock this much before we fill */

#define INBOX_SLOTS 8            /* tool results from AMI waiting for the call's thread */
#define DTMF_TONE_TICKS 5        /* 100 ms per digit the agent sends */
#define DTMF_GAP_TICKS 5         /* 100 ms between digits */

static AST_RWLIST_HEAD_STATIC(live_calls, convai_call);

/* --- the call's phases ------------------------------------------------------------------ */

static const char *const phase_names[CALL_PHASE_MAX] = {
	[CALL_CONNECTING] = "connecting", [CALL_TALKING] = "talking",
	[CALL_DRAINING] = "ending (playing out)", [CALL_DONE] = "done",
};

/* The moves each phase allows (a bit per target phase); anything else is ignored. */
static const unsigned int phase_moves[CALL_PHASE_MAX] = {
	[CALL_CONNECTING] = 1u << CALL_TALKING | 1u << CALL_DONE,
	[CALL_TALKING] = 1u << CALL_DRAINING | 1u << CALL_DONE,
	[CALL_DRAINING] = 1u << CALL_DONE,
	[CALL_DONE] = 0,
};

const char *convai_call_phase_name(enum call_phase phase)
{
	return phase_names[phase];
}

/*!
 * \brief The one place the call's phase and outcome change.
 * \param status, reason the outcome: fixed when entering DRAINING (the result stands once the
 *        ring has played out) or DONE. CONVAI_STATUS_RUNNING with DONE keeps the outcome that
 *        DRAINING fixed (the ring has played out).
 * \retval 0 moved, -1 not a move from this phase (e.g. a second END): nothing changed
 */
static int call_enter(struct convai_call *c, enum call_phase to, enum convai_status status,
	enum convai_reason reason)
{
	if (!(phase_moves[c->phase] & (1u << to))) {
		return -1;
	}
	if (to == CALL_DRAINING) {
		c->drain_start = ast_tvnow();
	}
	if (status != CONVAI_STATUS_RUNNING) {
		c->status = status;
		c->reason = reason;
	}
	AST_RWLIST_WRLOCK(&live_calls);   /* the CLI reads the phase */
	c->phase = to;
	AST_RWLIST_UNLOCK(&live_calls);
	return 0;
}

/* The channel has gone: the caller hung up, or Asterisk hung it up to shut down (`core stop
 * now` sets AST_SOFTHANGUP_SHUTDOWN). Not ast_shutting_down(): during `core stop gracefully`
 * calls run to their normal end, and a caller hanging up then is a plain HANGUP. */
static void call_hung_up(struct convai_call *c)
{
	if (ast_channel_softhangup_internal_flag(c->chan) & AST_SOFTHANGUP_SHUTDOWN) {
		call_enter(c, CALL_DONE, CONVAI_STATUS_FAILED, CONVAI_REASON_SHUTDOWN);
	} else {
		call_enter(c, CALL_DONE, CONVAI_STATUS_HANGUP, CONVAI_REASON_CALLER_HANGUP);
	}
}

/* --- commands: C -> Python --------------------------------------------------------------- */

static void call_send(struct convai_call *c, uint32_t type, const void *rec, uint32_t len)
{
	if (!convai_ring_push(c->sess->to_py, type, rec, len)) {
		convai_session_notify(c->sess);
	}
}

void convai_call_send(struct convai_call *c, uint32_t type, const void *rec, uint32_t len)
{
	call_send(c, type, rec, len);
}

void convai_call_set_transfer(struct convai_call *c, struct convai_transfer *x)
{
	AST_RWLIST_WRLOCK(&live_calls);
	c->xfer = x;
	AST_RWLIST_UNLOCK(&live_calls);
}

int convai_call_post(struct convai_call *c, uint32_t type, const void *rec, uint32_t len)
{
	int res;

	/* Any number of AMI threads: the lock makes them one producer of the inbox ring. */
	ast_mutex_lock(&c->inbox_lock);
	res = convai_ring_push(c->inbox, type, rec, len);
	ast_mutex_unlock(&c->inbox_lock);
	if (!res) {
		eventfd_write(c->wake_efd, 1);
	}
	return res ? -1 : 0;
}

/* Another thread has news: tool results from AMI for Python, the transfer dialler's state.
 * They share the session's down eventfd with Python's commands (call_on_commands reads it). */
static void call_on_wake(struct convai_call *c)
{
	uint32_t rec[CONVAI_CMD_BYTES / sizeof(uint32_t) + 1];   /* aligned for the records */
	uint32_t type;
	int len;

	while ((len = convai_ring_pop(c->inbox, &type, rec, CONVAI_CMD_BYTES)) >= 0) {
		call_send(c, type, rec, (uint32_t) len);
	}
	if (convai_transfer_poll(c)) {
		call_enter(c, CALL_DONE, CONVAI_STATUS_TRANSFER, CONVAI_REASON_TRANSFER);
	}
}

static void call_send_hangup(struct convai_call *c, enum convai_reason reason)
{
	struct convai_cmd_hangup cmd = { .reason = reason };

	call_send(c, CONVAI_CMD_HANGUP, &cmd, sizeof(cmd));
}

/* --- commands: Python -> C --------------------------------------------------------------- */

static struct ast_format *ast_format_for(int fmt)
{
	switch (fmt) {
	case CONVAI_FMT_ULAW_8000: return ast_format_ulaw;
	case CONVAI_FMT_PCM_8000: return ast_format_slin;
	case CONVAI_FMT_PCM_16000: return ast_format_slin16;
	}
	return NULL;
}

static void call_on_started(struct convai_call *c, const void *rec)
{
	const struct convai_cmd_started *cmd = rec;
	const struct convai_format_info *in = convai_format(cmd->in_format);
	const struct convai_format_info *out = convai_format(cmd->out_format);
	char conv[CONVAI_ID_BYTES];
	/* The first tick at once, not 20 ms on: the greeting often reaches the ring before this
	 * command does, and would otherwise wait a whole extra frame (bench/README.md). */
	struct itimerspec its = { { 0, 20000000 }, { 0, 1 } };

	if (c->phase != CALL_CONNECTING) {
		return;   /* a second STARTED */
	}
	if (!in || !out) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: the agent asked for unsupported audio formats\n",
			ast_channel_name(c->chan), c->agent->name);
		call_enter(c, CALL_DONE, CONVAI_STATUS_FAILED, CONVAI_REASON_UNSUPPORTED_FORMAT);
		return;
	}
	c->read_fmt = ast_format_for(cmd->in_format);
	c->write_fmt = ast_format_for(cmd->out_format);
	c->up_frame_bytes = in->frame_bytes;
	c->up_silence = in->silence;
	c->frame_bytes = out->frame_bytes;
	c->frame_samples = out->sample_rate / 50;
	memset(c->silence, out->silence, sizeof(c->silence));
	if (ast_set_read_format(c->chan, c->read_fmt) || ast_set_write_format(c->chan, c->write_fmt)) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: cannot set the channel to %s/%s\n",
			ast_channel_name(c->chan), c->agent->name, in->name, out->name);
		call_enter(c, CALL_DONE, CONVAI_STATUS_FAILED, CONVAI_REASON_UNSUPPORTED_FORMAT);
		return;
	}
	convai_clean(conv, cmd->conversation_id, sizeof(conv));
	AST_RWLIST_WRLOCK(&live_calls);
	ast_copy_string(c->conversation_id, conv, sizeof(c->conversation_id));
	c->in_format = in->name;
	c->out_format = out->name;
	AST_RWLIST_UNLOCK(&live_calls);
	call_enter(c, CALL_TALKING, CONVAI_STATUS_RUNNING, CONVAI_REASON_NONE);
	pbx_builtin_setvar_helper(c->chan, "ELEVENLABS_CONVERSATION_ID", conv);
	/* Absolute 20 ms clock for agent audio; its expiration count is what keeps us exact. */
	timerfd_settime(c->tfd, 0, &its, NULL);
	ast_verb(3, LOG_PREFIX "%s [%s]: conversation %s started with agent [%s] (%s in, %s out)\n",
		ast_channel_name(c->chan), c->agent->name, conv, c->agent->name, in->name, out->name);
	convai_event_start(c);
}

static void call_on_end(struct convai_call *c, const void *rec)
{
	const struct convai_cmd_end *cmd = rec;
	enum convai_status st = cmd->status == CONVAI_STATUS_COMPLETED
		|| cmd->status == CONVAI_STATUS_HANGUP ? cmd->status : CONVAI_STATUS_FAILED;
	enum convai_reason reason = *convai_reason_name(cmd->reason) ? cmd->reason
		: CONVAI_REASON_SERVER_ERROR;

	if (cmd->status == CONVAI_STATUS_TRANSFER) {
		/* Only a blind transfer this thread accepted; anything else ends as completed. */
		st = convai_transfer_blind_accepted(c) ? CONVAI_STATUS_TRANSFER : CONVAI_STATUS_COMPLETED;
	}
	if (c->phase == CALL_DRAINING) {
		return;   /* already ending (max_duration): that result stands */
	}
	if (c->phase == CALL_TALKING && cmd->play_out) {
		/* The loop ends once the agent's queued audio has played out: no cut-off goodbye,
		 * also after a broken connection (Python decides: convai/lifecycle.py). */
		call_enter(c, CALL_DRAINING, st, reason);
	} else {
		call_enter(c, CALL_DONE, st, reason);
	}
}

static void call_on_interruption_cmd(struct convai_call *c, const void *rec)
{
	const struct convai_cmd_interruption *cmd = rec;

	convai_event_interruption(c, cmd->event_id);
}

static void call_on_tool_call(struct convai_call *c, const void *rec)
{
	convai_event_tool_call(c, rec);
}

/* Only ELEVENLABS_* names of letters, digits and _: nothing else of the dialplan's is ours. */
static void call_on_setvar(struct convai_call *c, const void *rec)
{
	const struct convai_cmd_setvar *cmd = rec;
	char name[CONVAI_VAR_NAME_BYTES], value[CONVAI_VAR_VALUE_BYTES];
	const char *p;

	ast_copy_string(name, cmd->name, sizeof(name));
	for (p = name; *p && (isalnum((unsigned char) *p) || *p == '_'); p++) {
	}
	if (*p || strncmp(name, "ELEVENLABS_", 11) || !name[11]) {
		ast_log(LOG_WARNING, LOG_PREFIX "%s [%s]: refusing to set channel variable '%s'\n",
			ast_channel_name(c->chan), c->agent->name, convai_clean(name, name, sizeof(name)));
		return;
	}
	pbx_builtin_setvar_helper(c->chan, name, convai_clean(value, cmd->value, sizeof(value)));
}

static void call_on_transfer(struct convai_call *c, const void *rec)
{
	const struct convai_cmd_transfer *cmd = rec;
	char id[CONVAI_ID_BYTES], target[CONVAI_TARGET_BYTES];

	convai_clean(id, cmd->tool_call_id, sizeof(id));
	convai_clean(target, cmd->target, sizeof(target));
	if (!ast_strlen_zero(id) && !ast_strlen_zero(target)) {
		convai_transfer_request(c, id, target);
	}
}

/* The agent's digits: queued and played on the 20 ms ticks, so the loop never waits. */
static void call_on_send_dtmf(struct convai_call *c, const void *rec)
{
	const struct convai_cmd_send_dtmf *cmd = rec;
	char digits[CONVAI_DIGITS_BYTES];
	size_t have = strlen(c->dtmf_out), n;

	convai_clean(digits, cmd->digits, sizeof(digits));
	n = strlen(digits);
	if (!n || strspn(digits, "0123456789*#wW") != n || have + n >= sizeof(c->dtmf_out)) {
		ast_log(LOG_WARNING, LOG_PREFIX "%s [%s]: DTMF '%.16s' from the agent refused\n",
			ast_channel_name(c->chan), c->agent->name, digits);
		return;
	}
	ast_verb(4, LOG_PREFIX "%s [%s]: sending DTMF %s for the agent\n",
		ast_channel_name(c->chan), c->agent->name, digits);
	strcat(c->dtmf_out, digits);   /* length checked */
}

static void call_on_system_tool(struct convai_call *c, const void *rec)
{
	convai_event_system_tool(c, rec);
}

/* One 20 ms step of the agent's DTMF: 100 ms tones with 100 ms gaps; w 0.5 s, W 1 s. */
static void call_dtmf_tick(struct convai_call *c)
{
	char d = c->dtmf_out[c->dtmf_pos];

	if (c->dtmf_ticks > 0 && --c->dtmf_ticks > 0) {
		return;
	}
	if (c->dtmf_tone) {
		ast_senddigit_end(c->chan, d, DTMF_TONE_TICKS * 20);
		c->dtmf_tone = 0;
		c->dtmf_pos++;
		c->dtmf_ticks = DTMF_GAP_TICKS;
	} else if (!d) {
		c->dtmf_out[0] = '\0';
		c->dtmf_pos = 0;
	} else if (d == 'w' || d == 'W') {
		c->dtmf_ticks = d == 'w' ? 25 : 50;
		c->dtmf_pos++;
	} else {
		ast_senddigit_begin(c->chan, d);
		c->dtmf_tone = 1;
		c->dtmf_ticks = DTMF_TONE_TICKS;
		c->dtmf_sent++;
	}
}

/* Python -> C, by type: the records' sizes are checked before a handler sees one. */
static const struct {
	uint32_t type;
	void (*handle)(struct convai_call *c, const void *rec);
} call_commands[] = {
	{ CONVAI_CMD_STARTED, call_on_started },
	{ CONVAI_CMD_END, call_on_end },
	{ CONVAI_CMD_INTERRUPTION, call_on_interruption_cmd },
	{ CONVAI_CMD_TOOL_CALL, call_on_tool_call },
	{ CONVAI_CMD_SETVAR, call_on_setvar },
	{ CONVAI_CMD_TRANSFER, call_on_transfer },
	{ CONVAI_CMD_SEND_DTMF, call_on_send_dtmf },
	{ CONVAI_CMD_SYSTEM_TOOL, call_on_system_tool },
};

static void call_on_command(struct convai_call *c, uint32_t type, const void *rec, int len)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(call_commands); i++) {
		if (call_commands[i].type == type && (uint32_t) len == convai_cmd_size(type)) {
			call_commands[i].handle(c, rec);
			return;
		}
	}
	ast_log(LOG_WARNING, LOG_PREFIX "%s [%s]: ignoring command %u of %d bytes from the Python "
		"runtime\n", ast_channel_name(c->chan), c->agent->name, type, len);
}

static void call_on_commands(struct convai_call *c)
{
	/* Aligned for the records' uint32_t fields. */
	uint32_t rec[CONVAI_CMD_BYTES / sizeof(uint32_t) + 1];
	eventfd_t ignored;
	uint32_t type;
	int len;

	eventfd_read(c->sess->down_efd, &ignored);
	while ((len = convai_ring_pop(c->sess->to_c, &type, rec, CONVAI_CMD_BYTES)) >= 0) {
		call_on_command(c, type, rec, len);
	}
}

/* --- media: agent audio out, one frame per timer tick -------------------------------------- */

/* How far each write strays from the 20 ms grid: what the caller's jitter buffer sees. */
static void call_note_write(struct convai_call *c)
{
	uint32_t now = convai_now_us();

	if (c->rephased) {
		c->rephased = 0;   /* a new grid on purpose (call_start_at_once), not a stray write */
	} else if (c->last_write_us) {
		int32_t dev = (int32_t) (now - c->last_write_us) - 20000;

		convai_hist_add(c->sess, CONVAI_HIST_PLAYOUT, (uint32_t) abs(dev));
	}
	c->last_write_us = now;
}

static void call_write(struct convai_call *c, const unsigned char *data)
{
	struct ast_frame f = {
		.frametype = AST_FRAME_VOICE,
		.src = APP_NAME,
	};

	memcpy(c->out + AST_FRIENDLY_OFFSET, data, c->frame_bytes);
	f.subclass.format = c->write_fmt;
	AST_FRAME_SET_BUFFER(&f, c->out, AST_FRIENDLY_OFFSET, c->frame_bytes);
	f.samples = c->frame_samples;
	ast_write(c->chan, &f);
	call_note_write(c);
}

/* Fade the frame that would have played next to silence over FADE_MS: no click on barge-in. */
static void call_write_fade(struct convai_call *c, const unsigned char *cut, uint32_t len)
{
	unsigned char buf[CONVAI_FRAME_MAX];
	uint32_t n = c->frame_samples * FADE_MS / 20;
	uint32_t i;

	memcpy(buf, c->silence, c->frame_bytes);
	for (i = 0; i < n; i++) {
		int gain = (int) (n - i);

		if (c->write_fmt == ast_format_ulaw) {
			if (i < len) {
				buf[i] = AST_LIN2MU(AST_MULAW(cut[i]) * gain / (int) n);
			}
		} else if (2 * i + 1 < len) {
			int16_t s;

			memcpy(&s, cut + 2 * i, 2);
			s = (int16_t) (s * gain / (int) n);
			memcpy(buf + 2 * i, &s, 2);
		}
	}
	call_write(c, buf);
}

/* The watermark moved while the agent was speaking: cut what is queued, fading the head. */
static int call_on_interruption(struct convai_call *c, uint32_t below)
{
	struct convai_ring *r = c->sess->down;
	uint32_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint32_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
	struct convai_slot *s = h != t ? convai_ring_slot(r, h) : NULL;

	c->seen_below = below;
	if (!c->playing || !convai_ring_id_stale(c->last_played_id, below)) {
		return 0;
	}
	c->playing = 0;
	c->prebuffer_ticks = 0;
	convai_hist_add(c->sess, CONVAI_HIST_BARGE_IN,
		convai_now_us() - (uint32_t) convai_stat_get(c->sess, CONVAI_STAT_INTERRUPT_STAMP));
	if (s && convai_ring_id_stale(s->event_id, below)) {
		call_write_fade(c, s->data, s->len);
	} else {
		call_write(c, c->silence);
	}
	return 1;
}

static void call_play_one(struct convai_call *c)
{
	struct convai_ring *r = c->sess->down;
	uint32_t below = atomic_load_explicit(&r->drop_below, memory_order_acquire);
	struct convai_slot *s;

	if (below != c->seen_below && call_on_interruption(c, below)) {
		convai_ring_peek(r);   /* drops the stale slots now */
		return;
	}
	s = convai_ring_peek(r);
	if (!c->playing) {
		/* Prebuffer: start once a few frames are queued, or after as many ticks. */
		if (!s || (convai_ring_count(r) < PREBUFFER_FRAMES
				&& ++c->prebuffer_ticks < PREBUFFER_FRAMES)) {
			call_write(c, c->silence);
			return;
		}
		c->playing = 1;
		c->prebuffer_ticks = 0;
		if (s->stamp && s->event_id != c->last_played_id) {
			/* Measured at the write below, give or take the memcpy. */
			convai_hist_add(c->sess, CONVAI_HIST_FIRST_FRAME, convai_now_us() - s->stamp);
		}
	}
	if (!s) {
		/* Dry. With audio still waiting in Python's backlog this is a real underrun. */
		if (convai_stat_get(c->sess, CONVAI_STAT_BACKLOG_FRAMES)) {
			convai_stat_add(c->sess, CONVAI_STAT_UNDERRUNS, 1);
		} else {
			c->playing = 0;
		}
		call_write(c, c->silence);
		return;
	}
	if (s->len == c->frame_bytes) {
		call_write(c, s->data);
	} else {
		unsigned char buf[CONVAI_FRAME_MAX];

		memcpy(buf, c->silence, c->frame_bytes);
		memcpy(buf, s->data, MIN(s->len, c->frame_bytes));
		call_write(c, buf);
	}
	c->last_played_id = s->event_id;
	convai_ring_advance(r);
	convai_stat_add(c->sess, CONVAI_STAT_FRAMES_PLAYED, 1);
}

static void call_push_up(struct convai_call *c, const unsigned char *p, uint32_t len, uint32_t now);

/*
 * The agent's VAD, barge-in and receive timeout need a continuous stream, but a channel may
 * deliver nothing for a while (a Local channel running Wait(), DTX, hold). When the caller's
 * frames lag the 20 ms clock by more than a little, send silence for the gap.
 */
static void call_fill_uplink(struct convai_call *c, uint64_t ticks)
{
	uint32_t now = convai_now_us();
	unsigned char silence[CONVAI_FRAME_MAX];

	c->up_deficit += (int) MIN(ticks, 50u);
	if (c->up_deficit <= UP_SLACK_FRAMES || c->phase != CALL_TALKING) {
		return;
	}
	memset(silence, c->up_silence, c->up_frame_bytes);
	while (c->up_deficit > UP_SLACK_FRAMES) {
		call_push_up(c, silence, c->up_frame_bytes, now);
	}
}

/* Restart the 20 ms clock: its next expiry \a first_us from now. */
static void call_arm_timer(struct convai_call *c, uint32_t first_us)
{
	struct itimerspec its = { { 0, 20000000 }, { 0, (long) first_us * 1000 } };

	timerfd_settime(c->tfd, 0, &its, NULL);
}

static void call_ticks(struct convai_call *c, uint64_t expirations)
{
	if (expirations > 1) {
		convai_stat_add(c->sess, CONVAI_STAT_LATE_TICKS, expirations - 1);
	}
	/* A tick moved earlier by a re-phase is not one more 20 ms of the caller's time. */
	call_fill_uplink(c, expirations - (uint64_t) c->tick_uncounted);
	c->tick_uncounted = 0;
	/* Catch up after a stall, but never burst more than a few frames at once. */
	for (expirations = MIN(expirations, CATCHUP_MAX); expirations; expirations--) {
		call_play_one(c);
	}
	if (c->dtmf_out[0]) {
		call_dtmf_tick(c);
	}
	if (c->phase == CALL_DRAINING && !c->playing && !convai_ring_count(c->sess->down)
		&& !convai_stat_get(c->sess, CONVAI_STAT_BACKLOG_FRAMES)) {
		call_enter(c, CALL_DONE, CONVAI_STATUS_RUNNING, CONVAI_REASON_NONE);   /* played out */
	}
}

static void call_on_tick(struct convai_call *c)
{
	uint64_t expirations = 0;

	if (read(c->tfd, &expirations, sizeof(expirations)) == sizeof(expirations)) {
		call_ticks(c, expirations);
	}
}

/*
 * First audio at once (issue 12). Python wakes this thread (the down eventfd) when an
 * utterance's first frames reach the ring. While the channel only writes silence, the first
 * frame need not wait for the next tick: it is written now and the 20 ms clock restarts from
 * it; if the last write is under REPHASE_MIN_GAP_US ago, the clock's next tick is moved to
 * that point instead. The caller sees one interval of 11-20 ms where the new grid begins, no
 * burst and no gap; the RTP timestamps stay contiguous, as Asterisk stamps a frame without a
 * delivery time as predicted (+160) while it is within MAX_TIMESTAMP_SKEW (80 ms) of the clock
 * (res_rtp_asterisk.c). Playout, prebuffer, and barge-in are call_play_one()'s, unchanged.
 */
static void call_start_at_once(struct convai_call *c)
{
	struct convai_ring *r = c->sess->down;
	uint64_t due = 0;
	uint32_t since;

	if (c->playing || !c->last_write_us || (c->phase != CALL_TALKING
		&& c->phase != CALL_DRAINING)) {
		return;
	}
	if (!convai_ring_peek(r) || convai_ring_count(r) < PREBUFFER_FRAMES) {
		return;   /* too little yet: the prebuffer waits on the ticks, as before */
	}
	if (read(c->tfd, &due, sizeof(due)) == sizeof(due) && due) {
		call_ticks(c, due);   /* a tick is due anyway: it plays the audio now */
		return;
	}
	convai_stat_add(c->sess, CONVAI_STAT_REPHASES, 1);
	since = convai_now_us() - c->last_write_us;
	c->rephased = 1;
	if (since >= REPHASE_MIN_GAP_US) {
		call_arm_timer(c, 20000);
		call_play_one(c);
	} else {
		call_arm_timer(c, REPHASE_MIN_GAP_US - since);
		c->tick_uncounted = 1;
	}
}

/* --- media: caller audio up ------------------------------------------------------------------ */

/* Mean absolute sample of one caller frame on the 16-bit linear scale: μ-law through
 * Asterisk's decoding table, slin and slin16 as they are (A-law callers reach us translated:
 * the read format is always the agent's). A few ns a frame, on the channel's thread. */
static uint32_t up_level(const struct convai_call *c, const unsigned char *p, uint32_t n)
{
	uint32_t sum = 0, i;

	if (c->read_fmt == ast_format_ulaw) {
		for (i = 0; i < n; i++) {
			sum += (uint32_t) abs(AST_MULAW(p[i]));
		}
		return n ? sum / n : 0;
	}
	for (i = 0; i + 1 < n; i += 2) {
		int16_t s;

		memcpy(&s, p + i, 2);
		sum += (uint32_t) abs(s);
	}
	return n >= 2 ? sum / (n / 2) : 0;
}

/* Whether this frame ends the caller's speech: the CONVAI_UP_HANGOVER_FRAMES-th quiet one after
 * speech. The state lives on the call, so it spans ast_read() frames and the silence fill. */
static int up_speech_ended(struct convai_call *c, const unsigned char *p, uint32_t n)
{
	if (up_level(c, p, n) >= CONVAI_UP_SPEECH_LEVEL) {
		c->up_speaking = 1;
		c->up_quiet = 0;
		return 0;
	}
	if (c->up_speaking && ++c->up_quiet >= CONVAI_UP_HANGOVER_FRAMES) {
		c->up_speaking = 0;
		return 1;
	}
	return 0;
}

/* Queue caller audio for Python, split into 20 ms slots. Python is woken once per chunk of
 * buffer_ms, and at once when the caller's speech ends: that slot carries the
 * CONVAI_UP_END_OF_SPEECH mark, so Python sends the partial chunk it ends. */
static void call_push_up(struct convai_call *c, const unsigned char *p, uint32_t len, uint32_t now)
{
	uint32_t pushed = 0;
	int ticks = MAX(1, (int) ((len + c->up_frame_bytes / 2) / c->up_frame_bytes));
	int flush = 0;

	while (len) {
		uint32_t n = MIN(len, c->up_frame_bytes);
		uint32_t mark = up_speech_ended(c, p, n) ? CONVAI_UP_END_OF_SPEECH : 0;

		if (convai_ring_push_stamped(c->sess->up, mark, now, p, n)) {
			convai_stat_add(c->sess, CONVAI_STAT_UP_OVERFLOWS, 1);
			break;
		}
		flush |= mark != 0;
		p += n;
		len -= n;
		pushed++;
	}
	/* Counted even when the ring is full, so the silence fill can never spin. */
	c->up_deficit = MAX(c->up_deficit - ticks, -UP_SLACK_FRAMES);
	convai_stat_add(c->sess, CONVAI_STAT_FRAMES_UP, pushed);
	if (flush) {
		convai_stat_add(c->sess, CONVAI_STAT_UP_FLUSHES, 1);
	}
	if (flush || atomic_fetch_add(&c->sess->up_unsignalled, pushed) + pushed
		>= c->sess->up_batch_frames) {
		/* After a flush the next chunk counts from here: steady speech keeps buffer_ms. */
		atomic_store(&c->sess->up_unsignalled, 0);
		convai_session_notify(c->sess);
	}
}

static void call_on_voice(struct convai_call *c, struct ast_frame *f)
{
	if (c->phase != CALL_TALKING || ast_format_cmp(f->subclass.format, c->read_fmt)
		!= AST_FORMAT_CMP_EQUAL) {
		return;
	}
	call_push_up(c, f->data.ptr, f->datalen, convai_now_us());
}

static void call_on_dtmf(struct convai_call *c, struct ast_frame *f)
{
	struct convai_cmd_dtmf cmd = { .digit = (char) f->subclass.integer };

	if (c->phase == CALL_TALKING) {
		ast_debug(1, LOG_PREFIX "%s [%s]: DTMF '%c' passed to the agent\n",
			ast_channel_name(c->chan), c->agent->name, cmd.digit);
		call_send(c, CONVAI_CMD_DTMF, &cmd, sizeof(cmd));
	}
}

/* Returns -1 when the channel has gone. */
static int call_on_channel(struct convai_call *c)
{
	struct ast_frame *f = ast_read(c->chan);

	if (!f) {
		call_hung_up(c);
		return -1;
	}
	if (f->frametype == AST_FRAME_VOICE) {
		call_on_voice(c, f);
	} else if (f->frametype == AST_FRAME_DTMF_END) {
		call_on_dtmf(c, f);
	}
	ast_frfree(f);
	return 0;
}

/*
 * The agent's max_duration: the conversation ends, but what the caller has not heard yet of
 * the agent's last words still plays out, as when the service ends it. Python is told at once
 * so it closes the WebSocket; the loop then drains the ring.
 */
static void call_end_at_max_duration(struct convai_call *c)
{
	if (!call_enter(c, CALL_DRAINING, CONVAI_STATUS_COMPLETED, CONVAI_REASON_MAX_DURATION)) {
		call_send_hangup(c, CONVAI_REASON_MAX_DURATION);
	}
}

static void call_loop(struct convai_call *c)
{
	int fds[2] = { c->tfd, c->sess->down_efd };
	int64_t max_ms = c->agent->max_duration ? (int64_t) c->agent->max_duration * 1000 : -1;

	while (c->phase != CALL_DONE) {
		int ms = 1000, outfd = -1;
		struct ast_channel *ready = ast_waitfor_nandfds(&c->chan, 1, fds, 2, NULL, &outfd, &ms);
		int64_t elapsed = ast_tvdiff_ms(ast_tvnow(), c->start);

		if (ready) {
			if (call_on_channel(c)) {
				break;
			}
		} else if (outfd == c->tfd) {
			call_on_tick(c);
		} else if (outfd == c->sess->down_efd) {
			call_on_commands(c);
			call_on_wake(c);
			call_start_at_once(c);
		} else if (ms < 0) {
			call_hung_up(c);
		}
		if (c->phase == CALL_CONNECTING && elapsed > START_TIMEOUT_MS) {
			ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: the agent did not start within %d s\n",
				ast_channel_name(c->chan), c->agent->name, START_TIMEOUT_MS / 1000);
			call_enter(c, CALL_DONE, CONVAI_STATUS_FAILED, CONVAI_REASON_START_TIMEOUT);
		} else if (max_ms > 0 && elapsed > max_ms && c->phase == CALL_TALKING) {
			ast_log(LOG_NOTICE, LOG_PREFIX "%s [%s]: max_duration of %d s reached\n",
				ast_channel_name(c->chan), c->agent->name, c->agent->max_duration);
			call_end_at_max_duration(c);
		} else if (c->phase == CALL_DRAINING
			&& ast_tvdiff_ms(ast_tvnow(), c->drain_start) > DRAIN_MAX_MS) {
			call_enter(c, CALL_DONE, CONVAI_STATUS_RUNNING, CONVAI_REASON_NONE);
		}
	}
}

static void call_set_result(struct convai_call *c)
{
	const char *status = convai_status_name(c->status);
	const char *reason = convai_reason_name(c->reason);
	double secs = ast_tvdiff_ms(ast_tvnow(), c->start) / 1000.0;

	pbx_builtin_setvar_helper(c->chan, "ELEVENLABS_STATUS", status);
	pbx_builtin_setvar_helper(c->chan, "ELEVENLABS_END_REASON", reason);
	pbx_builtin_setvar_helper(c->chan, "ELEVENLABS_CONVERSATION_ID", c->conversation_id);
	convai_event_stats(c);
	convai_event_end(c->chan, c->agent->name, c->agent->agent_id, c->conversation_id, c->status,
		c->reason, secs);
	convai_metrics_call_ended(c->status, convai_stat_get(c->sess, CONVAI_STAT_INTERRUPTIONS),
		convai_stat_get(c->sess, CONVAI_STAT_UNDERRUNS), c->sess->hist[CONVAI_HIST_FIRST_FRAME]);
	if (c->status == CONVAI_STATUS_FAILED) {
		ast_log(LOG_WARNING, LOG_PREFIX "%s [%s]: conversation %s with agent [%s] failed: %s "
			"after %.3f s\n", ast_channel_name(c->chan), c->agent->name,
			S_OR(c->conversation_id, "(none)"), c->agent->name, reason, secs);
	} else {
		ast_log(LOG_NOTICE, LOG_PREFIX "%s [%s]: conversation %s with agent [%s] ended: %s (%s) "
			"after %.3f s\n", ast_channel_name(c->chan), c->agent->name,
			S_OR(c->conversation_id, "(none)"), c->agent->name, status, reason, secs);
	}
}

int convai_fail_early(struct ast_channel *chan, const char *agent, enum convai_reason reason)
{
	pbx_builtin_setvar_helper(chan, "ELEVENLABS_STATUS", convai_status_name(CONVAI_STATUS_FAILED));
	pbx_builtin_setvar_helper(chan, "ELEVENLABS_END_REASON", convai_reason_name(reason));
	pbx_builtin_setvar_helper(chan, "ELEVENLABS_CONVERSATION_ID", "");
	convai_event_end(chan, S_OR(agent, ""), "", "", CONVAI_STATUS_FAILED, reason, 0);
	convai_metrics_call_failed_early();
	return 0;
}

static void call_run_loop(struct convai_call *c)
{
	RAII_VAR(struct ast_format *, old_read, ao2_bump(ast_channel_readformat(c->chan)), ao2_cleanup);
	RAII_VAR(struct ast_format *, old_write, ao2_bump(ast_channel_writeformat(c->chan)), ao2_cleanup);

	AST_RWLIST_WRLOCK(&live_calls);
	AST_RWLIST_INSERT_TAIL(&live_calls, c, list);
	AST_RWLIST_UNLOCK(&live_calls);
	convai_metrics_call_started();

	convai_session_submit(c->sess);
	call_loop(c);

	/* Tell Python the call is over (a no-op if it already knows), then let go. */
	call_send_hangup(c, c->reason == CONVAI_REASON_SHUTDOWN ? CONVAI_REASON_SHUTDOWN
		: CONVAI_REASON_CALLER_HANGUP);
	AST_RWLIST_WRLOCK(&live_calls);
	AST_RWLIST_REMOVE(&live_calls, c, list);
	AST_RWLIST_UNLOCK(&live_calls);

	if (old_read) {
		ast_set_read_format(c->chan, old_read);
	}
	if (old_write) {
		ast_set_write_format(c->chan, old_write);
	}
}

void convai_call_run(struct convai_call *c)
{
	call_run_loop(c);
	if (c->dtmf_tone) {
		ast_senddigit_end(c->chan, c->dtmf_out[c->dtmf_pos], DTMF_TONE_TICKS * 20);
	}
	call_set_result(c);
	convai_transfer_finish(c);
}

struct convai_call *convai_call_new(struct ast_channel *chan, struct convai_agent *agent)
{
	struct convai_call *c = ast_calloc(1, sizeof(*c));

	if (!c || !(c->sess = convai_session_new(chan, agent))) {
		ast_free(c);
		return NULL;
	}
	c->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	/* Other threads wake this loop through the session's down eventfd, as Python does: one
	 * wakeup fd per call (fds per call are an issue-12 target; bench/). */
	c->wake_efd = c->sess->down_efd;
	c->inbox = ast_calloc(1, convai_ring_size(INBOX_SLOTS, CONVAI_CMD_BYTES));
	if (c->inbox) {
		convai_ring_init(c->inbox, INBOX_SLOTS, CONVAI_CMD_BYTES);
	}
	if (c->tfd < 0 || !c->inbox) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: cannot create a timer: %s\n",
			ast_channel_name(chan), agent->name, strerror(errno));
		convai_session_release(c->sess);
		convai_session_release(c->sess);   /* Python's reference too: it never saw the session */
		if (c->tfd >= 0) {
			close(c->tfd);
		}
		ast_free(c->inbox);
		ast_free(c);
		return NULL;
	}
	ast_mutex_init(&c->inbox_lock);
	c->chan = chan;
	c->agent = ao2_bump(agent);
	c->start = ast_tvnow();
	return c;
}

void convai_call_destroy(struct convai_call *c)
{
	if (convai_session_withdraw(c->sess)) {
		convai_session_release(c->sess);   /* Python's reference: it never took the session */
	}
	ast_free(c->inbox);
	ast_mutex_destroy(&c->inbox_lock);
	convai_session_release(c->sess);
	close(c->tfd);
	ao2_ref(c->agent, -1);
	ast_free(c);
}

int convai_calls_foreach(int (*cb)(struct convai_call *c, void *arg), void *arg)
{
	struct convai_call *c;
	int res = 0;

	AST_RWLIST_RDLOCK(&live_calls);
	AST_RWLIST_TRAVERSE(&live_calls, c, list) {
		if ((res = cb(c, arg))) {
			break;
		}
	}
	AST_RWLIST_UNLOCK(&live_calls);
	return res;
}
