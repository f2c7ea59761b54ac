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
