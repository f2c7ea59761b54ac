/*
 * app_elevenlabs_convai -- AMI events and the per-call statistics.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * The events are documented in app_elevenlabs_convai.c (`manager show event ElevenLabsConvAI*`).
 */

#include "asterisk.h"

#include "asterisk/channel.h"
#include "asterisk/manager.h"
#include "asterisk/strings.h"
#include "asterisk/utils.h"

#include "convai_private.h"

/* Every ElevenLabsConvAI* manager event starts with these fields (see the DOCUMENTATION). */
void convai_event_emit(struct ast_channel *chan, const char *agent, const char *agent_id,
	const char *conversation_id, const char *event, const char *body)
{
	ast_manager_event(chan, EVENT_FLAG_CALL, event,
		"Channel: %s\r\nUniqueid: %s\r\nAgent: %s\r\nAgentID: %s\r\nConversationID: %s\r\n%s",
		ast_channel_name(chan), ast_channel_uniqueid(chan), agent, agent_id, conversation_id,
		body);
}

void convai_call_event(struct convai_call *c, const char *event, const char *body)
{
	convai_event_emit(c->chan, c->agent->name, c->agent->agent_id, c->conversation_id, event, body);
}

/* "P50Us: 12\r\nP99Us: 85\r\nMaxUs: 240\r\nCount: n\r\nHist: bucket:count,..." for one histogram */
static void hist_summary(struct ast_str **out, const char *name, const uint32_t *h)
{
	uint64_t n = 0, seen = 0;
	uint64_t p50 = 0, p99 = 0, max = 0;
	int b;

	for (b = 0; b < CONVAI_HIST_BUCKETS; b++) {
		n += h[b];
	}
	ast_str_append(out, 0, "%sHist: ", name);
	for (b = 0; b < CONVAI_HIST_BUCKETS; b++) {
		if (!h[b]) {
			continue;
		}
		ast_str_append(out, 0, "%s%d:%u", seen ? "," : "", b, h[b]);
		seen += h[b];
		if (!p50 && seen * 2 >= n) {
			p50 = convai_hist_upper(b);
		}
		if (!p99 && seen * 100 >= n * 99) {
			p99 = convai_hist_upper(b);
		}
		max = convai_hist_upper(b);
	}
	ast_str_append(out, 0, "\r\n%sCount: %" PRIu64 "\r\n%sP50Us: %" PRIu64 "\r\n"
		"%sP99Us: %" PRIu64 "\r\n%sMaxUs: %" PRIu64 "\r\n", name, n, name, p50, name, p99,
		name, max);
}

/* Per-call media statistics, for monitoring and the benchmark (bench/). */
void convai_call_event_stats(struct convai_call *c)
{
	RAII_VAR(struct ast_str *, body, ast_str_create(2048), ast_free);
	struct convai_session *s = c->sess;
	static const char *names[CONVAI_HIST_MAX] = {
		[CONVAI_HIST_PLAYOUT] = "Playout", [CONVAI_HIST_FIRST_FRAME] = "FirstFrame",
		[CONVAI_HIST_BARGE_IN] = "BargeIn", [CONVAI_HIST_UPLINK] = "Uplink",
	};
	int i;

	if (!body) {
		return;
	}
	ast_str_append(&body, 0, "FramesPlayed: %" PRIu64 "\r\nUnderruns: %" PRIu64 "\r\n"
		"LateTicks: %" PRIu64 "\r\nFramesUp: %" PRIu64 "\r\nUpOverflows: %" PRIu64 "\r\n"
		"FramesDropped: %" PRIu64 "\r\nInterruptions: %" PRIu64 "\r\nBytesUp: %" PRIu64 "\r\n"
		"BytesDown: %" PRIu64 "\r\n",
		convai_stat_get(s, CONVAI_STAT_FRAMES_PLAYED), convai_stat_get(s, CONVAI_STAT_UNDERRUNS),
		convai_stat_get(s, CONVAI_STAT_LATE_TICKS), convai_stat_get(s, CONVAI_STAT_FRAMES_UP),
		convai_stat_get(s, CONVAI_STAT_UP_OVERFLOWS), convai_ring_skipped(s->down),
		convai_stat_get(s, CONVAI_STAT_INTERRUPTIONS), convai_stat_get(s, CONVAI_STAT_BYTES_UP),
		convai_stat_get(s, CONVAI_STAT_BYTES_DOWN));
	for (i = 0; i < CONVAI_HIST_MAX; i++) {
		hist_summary(&body, names[i], s->hist[i]);
	}
	convai_call_event(c, "ElevenLabsConvAIStats", ast_str_buffer(body));
}

/* --- the ElevenLabsConvAIToolResult action: an external handler answers a tool call ---------- */

struct tool_result {
	const char *channel;
	const char *text;   /* "tool_call_id\tis_error\tresult" */
	int found;
	int queued;
};

static int post_tool_result(struct convai_call *c, void *arg)
{
	struct tool_result *r = arg;

	if (strcasecmp(ast_channel_name(c->chan), r->channel)) {
		return 0;
	}
	r->found = 1;
	r->queued = !convai_call_post(c, CONVAI_CMD_TOOL_RESULT, r->text);
	return 1;
}

/* Printable and without tabs: a tool call id goes back to the agent as it came. */
static int plain_id(const char *id)
{
	const char *p;

	for (p = id; *p; p++) {
		if ((unsigned char) *p < ' ' || *p == 0x7f) {
			return 0;
		}
	}
	return p != id && p - id < 128;
}

static int action_tool_result(struct mansession *s, const struct message *m)
{
	const char *channel = astman_get_header(m, "Channel");
	const char *id = astman_get_header(m, "ToolCallID");
	const char *result = astman_get_header(m, "Result");
	const char *is_error = astman_get_header(m, "IsError");
	char text[CONVAI_CMD_BYTES];
	struct tool_result r = { .channel = channel, .text = text };

	if (ast_strlen_zero(channel) || !plain_id(id)) {
		astman_send_error(s, m, "Channel and ToolCallID are required");
		return 0;
	}
	if (strlen(result) > CONVAI_CMD_BYTES - 160) {
		astman_send_error(s, m, "Result is too long");
		return 0;
	}
	snprintf(text, sizeof(text), "%s\t%d\t%s", id, ast_true(is_error), result);
	convai_calls_foreach(post_tool_result, &r);
	if (!r.found) {
		astman_send_error(s, m, "No conversation on that channel");
	} else if (!r.queued) {
		astman_send_error(s, m, "Out of memory");
	} else {
		astman_send_ack(s, m, "Tool result queued");
	}
	return 0;
}

int convai_manager_register(void)
{
	return ast_manager_register_xml("ElevenLabsConvAIToolResult", EVENT_FLAG_CALL,
		action_tool_result);
}

void convai_manager_unregister(void)
{
	ast_manager_unregister("ElevenLabsConvAIToolResult");
}
