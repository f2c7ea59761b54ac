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

char *convai_clean(char *dst, const char *src, size_t size)
{
	size_t i;

	for (i = 0; i + 1 < size && src[i]; i++) {
		unsigned char ch = (unsigned char) src[i];

		dst[i] = ch < 0x20 || ch == 0x7f ? ' ' : (char) ch;
	}
	dst[i] = '\0';
	return dst;
}

/*
 * Every ElevenLabsConvAI* manager event starts with these fields (see the DOCUMENTATION); the
 * values are cleaned here, so nothing that came from Python or the network can add a header.
 * \a body is built in this file from typed values only.
 */
static void event_emit(struct ast_channel *chan, const char *agent, const char *agent_id,
	const char *conversation_id, const char *event, const char *body)
{
	char a[64], id[128], conv[CONVAI_ID_BYTES];

	ast_manager_event(chan, EVENT_FLAG_CALL, event,
		"Channel: %s\r\nUniqueid: %s\r\nAgent: %s\r\nAgentID: %s\r\nConversationID: %s\r\n%s",
		ast_channel_name(chan), ast_channel_uniqueid(chan), convai_clean(a, agent, sizeof(a)),
		convai_clean(id, agent_id, sizeof(id)), convai_clean(conv, conversation_id, sizeof(conv)),
		body);
}

void convai_call_event(struct convai_call *c, const char *event, const char *body)
{
	event_emit(c->chan, c->agent->name, c->agent->agent_id, c->conversation_id, event, body);
}

void convai_event_start(struct convai_call *c)
{
	char body[96];

	snprintf(body, sizeof(body), "InputFormat: %s\r\nOutputFormat: %s\r\n", c->in_format,
		c->out_format);
	convai_call_event(c, "ElevenLabsConvAIStart", body);
}

void convai_event_interruption(struct convai_call *c, uint32_t event_id)
{
	char body[32];

	snprintf(body, sizeof(body), "EventID: %u\r\n", event_id);
	convai_call_event(c, "ElevenLabsConvAIInterruption", body);
}

void convai_event_tool_call(struct convai_call *c, const struct convai_cmd_tool_call *cmd)
{
	char name[CONVAI_ID_BYTES], id[CONVAI_ID_BYTES], params[CONVAI_PARAMS_BYTES];
	char handler[sizeof(cmd->handler)];
	char body[sizeof(name) + sizeof(id) + sizeof(params) + sizeof(handler) + 64];

	snprintf(body, sizeof(body), "ToolName: %s\r\nToolCallID: %s\r\nParameters: %s\r\n"
		"Handler: %s\r\n", convai_clean(name, cmd->tool_name, sizeof(name)),
		convai_clean(id, cmd->tool_call_id, sizeof(id)),
		convai_clean(params, cmd->parameters, sizeof(params)),
		convai_clean(handler, cmd->handler, sizeof(handler)));
	convai_call_event(c, "ElevenLabsConvAIToolCall", body);
}

void convai_event_system_tool(struct convai_call *c, const struct convai_cmd_system_tool *cmd)
{
	char name[CONVAI_ID_BYTES], id[CONVAI_ID_BYTES];
	char body[sizeof(name) + sizeof(id) + 64];

	snprintf(body, sizeof(body), "ToolName: %s\r\nToolCallID: %s\r\nIsError: %s\r\n",
		convai_clean(name, cmd->tool_name, sizeof(name)),
		convai_clean(id, cmd->tool_call_id, sizeof(id)), cmd->is_error ? "true" : "false");
	convai_call_event(c, "ElevenLabsConvAISystemTool", body);
}

void convai_event_end(struct ast_channel *chan, const char *agent, const char *agent_id,
	const char *conversation_id, enum convai_status status, enum convai_reason reason,
	double secs)
{
	char body[128];

	snprintf(body, sizeof(body), "Status: %s\r\nReason: %s\r\nDuration: %.3f\r\n",
		convai_status_name(status), convai_reason_name(reason), secs);
	event_emit(chan, agent, agent_id, conversation_id, "ElevenLabsConvAIEnd", body);
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
void convai_event_stats(struct convai_call *c)
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
		"BytesDown: %" PRIu64 "\r\nBacklogDropped: %" PRIu64 "\r\nUpFlushes: %" PRIu64 "\r\n"
		"Rephases: %" PRIu64 "\r\n",
		convai_stat_get(s, CONVAI_STAT_FRAMES_PLAYED), convai_stat_get(s, CONVAI_STAT_UNDERRUNS),
		convai_stat_get(s, CONVAI_STAT_LATE_TICKS), convai_stat_get(s, CONVAI_STAT_FRAMES_UP),
		convai_stat_get(s, CONVAI_STAT_UP_OVERFLOWS), convai_ring_skipped(s->down),
		convai_stat_get(s, CONVAI_STAT_INTERRUPTIONS), convai_stat_get(s, CONVAI_STAT_BYTES_UP),
		convai_stat_get(s, CONVAI_STAT_BYTES_DOWN), convai_stat_get(s, CONVAI_STAT_BACKLOG_DROPPED),
		convai_stat_get(s, CONVAI_STAT_UP_FLUSHES), convai_stat_get(s, CONVAI_STAT_REPHASES));
	for (i = 0; i < CONVAI_HIST_MAX; i++) {
		hist_summary(&body, names[i], s->hist[i]);
	}
	convai_call_event(c, "ElevenLabsConvAIStats", ast_str_buffer(body));
}

/* --- the ElevenLabsConvAIToolResult action: an external handler answers a tool call ---------- */

struct tool_result {
	const char *channel;
	const struct convai_cmd_tool_result *rec;
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
	r->queued = !convai_call_post(c, CONVAI_CMD_TOOL_RESULT, r->rec, sizeof(*r->rec));
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
	return p != id && p - id < CONVAI_ID_BYTES;
}

static int action_tool_result(struct mansession *s, const struct message *m)
{
	const char *channel = astman_get_header(m, "Channel");
	const char *id = astman_get_header(m, "ToolCallID");
	const char *result = astman_get_header(m, "Result");
	const char *is_error = astman_get_header(m, "IsError");
	struct convai_cmd_tool_result rec = { .is_error = ast_true(is_error) };
	struct tool_result r = { .channel = channel, .rec = &rec };

	if (ast_strlen_zero(channel) || !plain_id(id)) {
		astman_send_error(s, m, "Channel and ToolCallID are required");
		return 0;
	}
	if (strlen(result) >= sizeof(rec.result)) {
		astman_send_error(s, m, "Result is too long");
		return 0;
	}
	ast_copy_string(rec.tool_call_id, id, sizeof(rec.tool_call_id));
	ast_copy_string(rec.result, result, sizeof(rec.result));
	convai_calls_foreach(post_tool_result, &r);
	if (!r.found) {
		astman_send_error(s, m, "No conversation on that channel");
	} else if (!r.queued) {
		astman_send_error(s, m, "The call has too many tool results queued");
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
