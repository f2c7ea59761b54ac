/*
 * app_elevenlabs_convai -- the agent's transfer tool: blind (dialplan or SIP REFER) and warm.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * Fail-closed: the agent names a target, which must be in the agent's allow-list
 * (transfer_target in elevenlabs.conf). Where it leads comes only from the configuration;
 * nothing the agent sent ever reaches a dial string or a dialplan location.
 *
 * Blind: the request is checked and accepted at once; the conversation ends once the agent's
 * last words have played out (Python decides when, then END TRANSFER), and the channel
 * continues at the target (or is REFERred, for a PJSIP caller when the target has refer=).
 *
 * Warm: the target is requested and called on the caller's thread (neither blocks), then a
 * dialler thread of the transfer's own waits for the answer, so the media loop never waits.
 * The dialler only ever touches the target's channel; it tells the caller's thread how things
 * go through the call's wake eventfd. On answer (after an optional whisper to the person who
 * answered) the caller's thread ends the conversation and bridges the two.
 */

#include "asterisk.h"

#include <sys/eventfd.h>
#include <pthread.h>

#include "asterisk/bridge.h"
#include "asterisk/channel.h"
#include "asterisk/features.h"
#include "asterisk/file.h"
#include "asterisk/format_cap.h"
#include "asterisk/logger.h"
#include "asterisk/manager.h"
#include "asterisk/pbx.h"
#include "asterisk/strings.h"
#include "asterisk/utils.h"

#include "convai_private.h"
#include "metrics.h"

#define DIAL_POLL_MS 100   /* how often the dialler looks at its cancel flag */

struct convai_transfer {
	const struct convai_target *target;   /* in the call's agent, which the call references */
	char tool_call_id[128];
	struct timeval started;
	struct timeval ringing;                /* when the target rang, or zero */
	struct timeval answered;
	int wake_efd;                          /* the call's */
	struct ast_channel *peer;              /* warm: the target's channel (the dialler's) */
	pthread_t thread;
	int thread_up;
	_Atomic int cancel;
	ast_mutex_t lock;
	enum convai_xfer_state state;          /* set by the dialler, under lock */
	char detail[128];
	enum convai_xfer_state reported;       /* what the caller's thread has passed on */
};

static const char *state_names[] = {
	[CONVAI_XFER_ACCEPTED] = "accepted", [CONVAI_XFER_DIALING] = "dialing",
	[CONVAI_XFER_RINGING] = "ringing", [CONVAI_XFER_ANSWERED] = "answered",
	[CONVAI_XFER_FAILED] = "failed",
};

const char *convai_xfer_state_name(enum convai_xfer_state state)
{
	return state_names[state];
}

static const char *mode_name(const struct convai_target *t)
{
	return t->mode == CONVAI_XFER_BLIND ? "blind" : "warm";
}

static double since(struct timeval start)
{
	return ast_tvdiff_us(ast_tvnow(), start) / 1e6;
}

/* AMI: ElevenLabsConvAITransferStarted / Answered / Failed. */
static void xfer_event(struct convai_call *c, struct convai_transfer *x, const char *name,
	const char *mode, const char *reason)
{
	char body[512], ring[48] = "";
	struct timeval ringing;

	ast_mutex_lock(&x->lock);
	ringing = x->ringing;
	ast_mutex_unlock(&x->lock);
	if (!ast_tvzero(ringing)) {
		snprintf(ring, sizeof(ring), "RingSeconds: %.3f\r\n", ast_tvdiff_us(ringing, x->started) / 1e6);
	}
	snprintf(body, sizeof(body), "Target: %s\r\nMode: %s\r\nToolCallID: %s\r\nSeconds: %.3f\r\n"
		"%s%s%s%s", x->target->name, mode, x->tool_call_id, since(x->started), ring,
		reason ? "Reason: " : "", S_OR(reason, ""), reason ? "\r\n" : "");
	convai_call_event(c, name, body);
}

/* Python hears every state once. */
static void xfer_report(struct convai_call *c, const char *tool_call_id,
	enum convai_xfer_state state, const char *detail)
{
	struct convai_cmd_transfer_state cmd = { .state = state };

	ast_copy_string(cmd.tool_call_id, tool_call_id, sizeof(cmd.tool_call_id));
	ast_copy_string(cmd.detail, S_OR(detail, ""), sizeof(cmd.detail));
	convai_call_send(c, CONVAI_CMD_TRANSFER_STATE, &cmd, sizeof(cmd));
}

static void xfer_refuse(struct convai_call *c, const char *tool_call_id, const char *target,
	const char *why)
{
	ast_log(LOG_WARNING, LOG_PREFIX "%s [%s]: transfer to %s refused: %s\n",
		ast_channel_name(c->chan), c->agent->name, target, why);
	xfer_report(c, tool_call_id, CONVAI_XFER_FAILED, why);
	convai_metrics_transfer(CONVAI_TRANSFER_FAILED);
}

static void xfer_free(struct convai_transfer *x)
{
	if (x->peer) {
		ast_hangup(x->peer);
	}
	ast_mutex_destroy(&x->lock);
	ast_free(x);
}

static struct convai_transfer *xfer_new(struct convai_call *c, const struct convai_target *t,
	const char *tool_call_id)
{
	struct convai_transfer *x = ast_calloc(1, sizeof(*x));

	if (x) {
		x->target = t;
		x->started = ast_tvnow();
		x->wake_efd = c->wake_efd;
		ast_mutex_init(&x->lock);
		ast_copy_string(x->tool_call_id, tool_call_id, sizeof(x->tool_call_id));
	}
	return x;
}

/* --- blind ------------------------------------------------------------------------------------- */

static int is_pjsip(struct ast_channel *chan)
{
	return !strcasecmp(ast_channel_tech(chan)->type, "PJSIP");
}

/* Whether context,exten,priority (a number or a label) is in the dialplan now. */
static int location_exists(struct ast_channel *chan, const char *location)
{
	char *buf = ast_strdupa(location);
	char *context = strsep(&buf, ","), *exten = strsep(&buf, ","), *prio = buf;
	const char *cid;
	int n;

	ast_channel_lock(chan);
	cid = ast_strdupa(S_COR(ast_channel_caller(chan)->id.number.valid,
		ast_channel_caller(chan)->id.number.str, ""));
	ast_channel_unlock(chan);
	if (!context || !exten || !prio) {
		return 0;
	}
	if (sscanf(prio, "%30d", &n) != 1) {
		n = ast_findlabel_extension(chan, context, exten, prio, cid);
	}
	return n > 0 && ast_exists_extension(chan, context, exten, n, cid);
}

static void blind_request(struct convai_call *c, const struct convai_target *t,
	const char *tool_call_id)
{
	int refer = !ast_strlen_zero(t->refer) && is_pjsip(c->chan);
	struct convai_transfer *x;

	if (!refer && !location_exists(c->chan, t->location)) {
		xfer_refuse(c, tool_call_id, t->name, "the target is not in the dialplan");
		return;
	}
	if (!(x = xfer_new(c, t, tool_call_id))) {
		xfer_refuse(c, tool_call_id, t->name, "out of memory");
		return;
	}
	x->state = x->reported = CONVAI_XFER_ACCEPTED;
	convai_call_set_transfer(c, x);
	ast_verb(3, LOG_PREFIX "%s [%s]: blind transfer to %s (%s) once the agent has finished\n",
		ast_channel_name(c->chan), c->agent->name, t->name, refer ? t->refer : t->location);
	xfer_report(c, tool_call_id, CONVAI_XFER_ACCEPTED, "");
	xfer_event(c, c->xfer, "ElevenLabsConvAITransferStarted", refer ? "refer" : "blind", NULL);
}

/* After the conversation: REFER a PJSIP caller (when configured), else continue at the target. */
static void blind_finish(struct convai_call *c, struct convai_transfer *x)
{
	const struct convai_target *t = x->target;

	if (!ast_strlen_zero(t->refer) && is_pjsip(c->chan)) {
		char *dest = ast_strdupa(t->refer);
		int protocol = 0;

		/* Blocks until the phone reports the outcome (NOTIFY): the conversation is over. */
		if (ast_transfer_protocol(c->chan, dest, &protocol) > 0) {
			ast_verb(3, LOG_PREFIX "%s [%s]: REFERred to %s (%s)\n", ast_channel_name(c->chan),
				c->agent->name, t->name, t->refer);
			xfer_event(c, x, "ElevenLabsConvAITransferAnswered", "refer", NULL);
			convai_metrics_transfer(CONVAI_TRANSFER_REFER);
			c->transfer_res = -1;   /* the caller is with the target: our leg is done */
			return;
		}
		ast_log(LOG_WARNING, LOG_PREFIX "%s [%s]: REFER to %s failed (%d); continuing at %s\n",
			ast_channel_name(c->chan), c->agent->name, t->name, protocol, t->location);
		xfer_event(c, x, "ElevenLabsConvAITransferFailed", "refer", "REFER rejected");
		if (ast_check_hangup(c->chan)) {
			c->transfer_res = -1;
			return;
		}
	}
	if (ast_parseable_goto(c->chan, t->location)) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: cannot continue at %s (%s)\n",
			ast_channel_name(c->chan), c->agent->name, t->name, t->location);
		xfer_event(c, x, "ElevenLabsConvAITransferFailed", "blind", "not in the dialplan");
		convai_metrics_transfer(CONVAI_TRANSFER_FAILED);
		c->transfer_res = -1;
		return;
	}
	ast_verb(3, LOG_PREFIX "%s [%s]: transferred to %s (%s)\n", ast_channel_name(c->chan),
		c->agent->name, t->name, t->location);
	convai_metrics_transfer(CONVAI_TRANSFER_BLIND);
	c->transfer_res = 0;   /* the dialplan goes on at the target */
}

/* --- warm: the dialler ------------------------------------------------------------------------ */

static void dial_set(struct convai_transfer *x, enum convai_xfer_state state, const char *detail)
{
	ast_mutex_lock(&x->lock);
	x->state = state;
	ast_copy_string(x->detail, S_OR(detail, ""), sizeof(x->detail));
	if (state == CONVAI_XFER_RINGING) {
		x->ringing = ast_tvnow();
	} else if (state == CONVAI_XFER_ANSWERED) {
		x->answered = ast_tvnow();
	}
	ast_mutex_unlock(&x->lock);
	eventfd_write(x->wake_efd, 1);
}

/* One frame from the target: NULL while it is still ringing, else the outcome's detail. */
static const char *dial_frame(struct convai_transfer *x, struct ast_frame *f, int *answered)
{
	if (f->frametype != AST_FRAME_CONTROL) {
		return NULL;
	}
	switch (f->subclass.integer) {
	case AST_CONTROL_RINGING:
		if (x->state == CONVAI_XFER_DIALING) {
			dial_set(x, CONVAI_XFER_RINGING, "");
		}
		return NULL;
	case AST_CONTROL_ANSWER:
		*answered = 1;
		return "";
	case AST_CONTROL_BUSY:
		return "the line is busy";
	case AST_CONTROL_CONGESTION:
		return "the target is unreachable (congestion)";
	case AST_CONTROL_HANGUP:
		return "the target hung up";
	}
	return NULL;
}

static void *dial_thread(void *data)
{
	struct convai_transfer *x = data;
	int64_t limit_ms = (int64_t) x->target->timeout * 1000;
	const char *outcome = NULL;
	int answered = 0;
	char why[64];

	while (!outcome) {
		int64_t left = limit_ms - ast_tvdiff_ms(ast_tvnow(), x->started);
		struct ast_frame *f;
		int res;

		if (atomic_load(&x->cancel)) {
			outcome = "cancelled";
			break;
		}
		if (left <= 0) {
			snprintf(why, sizeof(why), "no answer after %d s", x->target->timeout);
			outcome = why;
			break;
		}
		res = ast_waitfor(x->peer, (int) MIN(left, DIAL_POLL_MS));
		if (res < 0) {
			outcome = "the target hung up";
		} else if (res > 0) {
			if (!(f = ast_read(x->peer))) {
				outcome = "the target hung up";
			} else {
				outcome = dial_frame(x, f, &answered);
				ast_frfree(f);
			}
		}
	}
	if (answered && !ast_strlen_zero(x->target->whisper) && !atomic_load(&x->cancel)) {
		/* The person who answered hears who is coming before the bridge. */
		ast_stream_and_wait(x->peer, x->target->whisper, "");
	}
	if (answered && !atomic_load(&x->cancel) && !ast_check_hangup(x->peer)) {
		dial_set(x, CONVAI_XFER_ANSWERED, "");
	} else {
		dial_set(x, CONVAI_XFER_FAILED, answered ? "the target hung up" : outcome);
	}
	return NULL;
}

/* Request and call the target on the caller's thread (neither waits), then dial on. */
static void warm_request(struct convai_call *c, const struct convai_target *t,
	const char *tool_call_id)
{
	RAII_VAR(struct ast_format_cap *, cap, ast_format_cap_alloc(AST_FORMAT_CAP_FLAG_DEFAULT),
		ao2_cleanup);
	char *tech = ast_strdupa(t->dial), *resource = strchr(tech, '/');
	struct convai_transfer *x;
	int cause = 0;

	*resource++ = '\0';   /* config.c checked there is one */
	if (!cap || !(x = xfer_new(c, t, tool_call_id))) {
		xfer_refuse(c, tool_call_id, t->name, "out of memory");
		return;
	}
	ast_channel_lock(c->chan);
	ast_format_cap_append_from_cap(cap, ast_channel_nativeformats(c->chan), AST_MEDIA_TYPE_AUDIO);
	ast_channel_unlock(c->chan);
	x->peer = ast_request(tech, cap, NULL, c->chan, resource, &cause);
	if (!x->peer) {
		xfer_free(x);
		xfer_refuse(c, tool_call_id, t->name, ast_cause2str(cause));
		return;
	}
	ast_channel_lock_both(c->chan, x->peer);
	ast_connected_line_copy_from_caller(ast_channel_connected(x->peer), ast_channel_caller(c->chan));
	ast_channel_inherit_variables(c->chan, x->peer);
	ast_channel_unlock(x->peer);
	ast_channel_unlock(c->chan);
	if (ast_call(x->peer, resource, 0)) {
		xfer_free(x);
		xfer_refuse(c, tool_call_id, t->name, "the call to the target could not be placed");
		return;
	}
	x->state = x->reported = CONVAI_XFER_DIALING;
	if (ast_pthread_create(&x->thread, NULL, dial_thread, x)) {
		xfer_free(x);
		xfer_refuse(c, tool_call_id, t->name, "cannot start the dialler thread");
		return;
	}
	x->thread_up = 1;
	convai_call_set_transfer(c, x);
	ast_verb(3, LOG_PREFIX "%s [%s]: warm transfer: calling %s (%s, up to %d s)\n",
		ast_channel_name(c->chan), c->agent->name, t->name, t->dial, t->timeout);
	xfer_report(c, tool_call_id, CONVAI_XFER_DIALING, "");
	xfer_event(c, x, "ElevenLabsConvAITransferStarted", "warm", NULL);
}

static void dial_join(struct convai_transfer *x)
{
	if (x->thread_up) {
		pthread_join(x->thread, NULL);
		x->thread_up = 0;
	}
}

/* --- the call's side --------------------------------------------------------------------------- */

void convai_transfer_request(struct convai_call *c, const char *tool_call_id, const char *target)
{
	const struct convai_target *t = convai_agent_target(c->agent, target);

	if (c->xfer) {
		xfer_refuse(c, tool_call_id, target, "a transfer is already under way");
	} else if (!t) {
		xfer_refuse(c, tool_call_id, target, "no such transfer target");
	} else if (c->phase != CALL_TALKING) {
		xfer_refuse(c, tool_call_id, target, "the call is ending");
	} else if (t->mode == CONVAI_XFER_BLIND) {
		blind_request(c, t, tool_call_id);
	} else {
		warm_request(c, t, tool_call_id);
	}
}

int convai_transfer_blind_accepted(struct convai_call *c)
{
	return c->xfer && c->xfer->target->mode == CONVAI_XFER_BLIND;
}

int convai_transfer_poll(struct convai_call *c)
{
	struct convai_transfer *x = c->xfer;
	enum convai_xfer_state state;
	char detail[128];

	if (!x || x->target->mode != CONVAI_XFER_WARM) {
		return 0;
	}
	ast_mutex_lock(&x->lock);
	state = x->state;
	ast_copy_string(detail, x->detail, sizeof(detail));
	ast_mutex_unlock(&x->lock);
	if (state == x->reported) {
		return 0;
	}
	x->reported = state;
	xfer_report(c, x->tool_call_id, state, detail);
	if (state == CONVAI_XFER_RINGING) {
		ast_verb(4, LOG_PREFIX "%s [%s]: transfer target %s is ringing (%.3f s)\n",
			ast_channel_name(c->chan), c->agent->name, x->target->name,
			ast_tvdiff_us(x->ringing, x->started) / 1e6);
		return 0;
	}
	if (state == CONVAI_XFER_ANSWERED) {
		ast_verb(3, LOG_PREFIX "%s [%s]: transfer target %s answered after %.3f s\n",
			ast_channel_name(c->chan), c->agent->name, x->target->name,
			ast_tvdiff_us(x->answered, x->started) / 1e6);
		xfer_event(c, x, "ElevenLabsConvAITransferAnswered", "warm", NULL);
		return 1;   /* the conversation ends now; convai_transfer_finish() bridges */
	}
	/* Failed: the conversation goes on; the agent hears why (Python). */
	ast_log(LOG_NOTICE, LOG_PREFIX "%s [%s]: warm transfer to %s failed: %s\n",
		ast_channel_name(c->chan), c->agent->name, x->target->name, detail);
	xfer_event(c, x, "ElevenLabsConvAITransferFailed", "warm", detail);
	convai_metrics_transfer(CONVAI_TRANSFER_FAILED);
	dial_join(x);
	convai_call_set_transfer(c, NULL);
	xfer_free(x);
	return 0;
}

static void warm_finish(struct convai_call *c, struct convai_transfer *x)
{
	struct ast_bridge_config config;
	struct ast_channel *peer;

	memset(&config, 0, sizeof(config));
	dial_join(x);
	peer = x->peer;
	x->peer = NULL;
	convai_metrics_transfer(CONVAI_TRANSFER_ANSWERED);
	ast_verb(3, LOG_PREFIX "%s [%s]: bridging the caller with %s (%s)\n",
		ast_channel_name(c->chan), c->agent->name, x->target->name, ast_channel_name(peer));
	/* Takes the peer over whatever happens, and returns when the caller leaves the bridge. */
	ast_bridge_call(c->chan, peer, &config);
	c->transfer_res = -1;
}

void convai_transfer_finish(struct convai_call *c)
{
	struct convai_transfer *x = c->xfer;

	if (!x) {
		return;
	}
	if (c->status == CONVAI_STATUS_TRANSFER) {
		pbx_builtin_setvar_helper(c->chan, "ELEVENLABS_TRANSFER_TARGET", x->target->name);
		if (x->target->mode == CONVAI_XFER_BLIND) {
			blind_finish(c, x);
		} else {
			warm_finish(c, x);
		}
	} else if (x->target->mode == CONVAI_XFER_WARM) {
		/* The call ended some other way while the target rang: hang the target up. */
		atomic_store(&x->cancel, 1);
		dial_join(x);
		xfer_event(c, x, "ElevenLabsConvAITransferFailed", "warm", "the call ended first");
		convai_metrics_transfer(CONVAI_TRANSFER_FAILED);
	}
	c->xfer = NULL;   /* no longer in the list of live calls: nobody else looks */
	xfer_free(x);
}

void convai_transfer_describe(struct convai_call *c, char *buf, size_t len)
{
	struct convai_transfer *x = c->xfer;
	enum convai_xfer_state state;

	if (!x) {
		*buf = '\0';
		return;
	}
	ast_mutex_lock(&x->lock);
	state = x->state;
	ast_mutex_unlock(&x->lock);
	snprintf(buf, len, "%s to %s (%s): %s for %.1f s", mode_name(x->target), x->target->name,
		x->target->mode == CONVAI_XFER_BLIND ? x->target->location : x->target->dial,
		state_names[state], since(x->started));
}
