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

static void call_event(struct convai_call *c, const char *event, const char *body)
{
	event_emit(c->chan, c->agent->name, c->agent->agent_id, c->conversation_id, event, body);
}

void convai_event_start(struct convai_call *c)
{
	char body[96];

	snprintf(body, sizeof(body), "InputFormat: %s\r\nOutputFormat: %s\r\n", c->in_format,
		c->out_format);
	call_event(c, "ElevenLabsConvAIStart", body);
}

void convai_event_interruption(struct convai_call *c, uint32_t event_id)
{
	char body[32];

	snprintf(body, sizeof(body), "EventID: %u\r\n", event_id);
	call_event(c, "ElevenLabsConvAIInterruption", body);
}

void convai_event_tool_call(struct convai_call *c, const struct convai_cmd_tool_call *cmd)
{
	char name[CONVAI_ID_BYTES], id[CONVAI_ID_BYTES], params[CONVAI_PARAMS_BYTES];
	char body[sizeof(name) + sizeof(id) + sizeof(params) + 48];

	snprintf(body, sizeof(body), "ToolName: %s\r\nToolCallID: %s\r\nParameters: %s\r\n",
		convai_clean(name, cmd->tool_name, sizeof(name)),
		convai_clean(id, cmd->tool_call_id, sizeof(id)),
		convai_clean(params, cmd->parameters, sizeof(params)));
	call_event(c, "ElevenLabsConvAIToolCall", body);
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
		"BytesDown: %" PRIu64 "\r\nBacklogDropped: %" PRIu64 "\r\n",
		convai_stat_get(s, CONVAI_STAT_FRAMES_PLAYED), convai_stat_get(s, CONVAI_STAT_UNDERRUNS),
		convai_stat_get(s, CONVAI_STAT_LATE_TICKS), convai_stat_get(s, CONVAI_STAT_FRAMES_UP),
		convai_stat_get(s, CONVAI_STAT_UP_OVERFLOWS), convai_ring_skipped(s->down),
		convai_stat_get(s, CONVAI_STAT_INTERRUPTIONS), convai_stat_get(s, CONVAI_STAT_BYTES_UP),
		convai_stat_get(s, CONVAI_STAT_BYTES_DOWN), convai_stat_get(s, CONVAI_STAT_BACKLOG_DROPPED));
	for (i = 0; i < CONVAI_HIST_MAX; i++) {
		hist_summary(&body, names[i], s->hist[i]);
	}
	call_event(c, "ElevenLabsConvAIStats", ast_str_buffer(body));
}
