/*
 * app_elevenlabs_convai -- the `elevenlabs ...` CLI commands.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * API keys are never shown whole, nor the query string of an endpoint.
 */

#include "asterisk.h"

#include "asterisk/astobj2.h"
#include "asterisk/channel.h"
#include "asterisk/cli.h"
#include "asterisk/strings.h"
#include "asterisk/utils.h"

#include "convai_private.h"
#include "pyhost.h"

static const char *redact(const char *key, char *buf, size_t len)
{
	size_t n = strlen(key);

	/* Short keys are shown as stars only (the same rule as redact_key() in session.py). */
	snprintf(buf, len, "****%s", n >= 16 ? key + n - 4 : "");
	return buf;
}

/* An endpoint as shown by the CLI: a query string could carry a secret, so it is hidden. */
static const char *redact_endpoint(const char *url, char *buf, size_t len)
{
	const char *q = strchr(url, '?');

	if (!q) {
		return url;
	}
	snprintf(buf, len, "%.*s?<redacted>", (int) MIN((size_t) (q - url), len), url);
	return buf;
}

static char *cli_debug(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	static const char * const choices[] = { "on", "off", NULL };

	switch (cmd) {
	case CLI_INIT:
		e->command = "elevenlabs debug";
		e->usage =
			"Usage: elevenlabs debug {on|off}\n"
			"       Turn the detailed protocol log (VAD scores, interruptions, events) on or off.\n"
			"       The setting lasts until changed here or by debug= in elevenlabs.conf.\n";
		return NULL;
	case CLI_GENERATE:
		return a->pos == 2 ? ast_cli_complete(a->word, choices, a->n) : NULL;
	}
	if (a->argc != 3 || (strcasecmp(a->argv[2], "on") && strcasecmp(a->argv[2], "off"))) {
		return CLI_SHOWUSAGE;
	}
	convai_runtime_set_debug(!strcasecmp(a->argv[2], "on"));
	ast_cli(a->fd, "ElevenLabs debug %s\n", convai_runtime_debug() ? "enabled" : "disabled");
	return CLI_SUCCESS;
}

static char *cli_reload(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	RAII_VAR(struct convai_config *, cfg, NULL, ao2_cleanup);

	switch (cmd) {
	case CLI_INIT:
		e->command = "elevenlabs reload";
		e->usage =
			"Usage: elevenlabs reload\n"
			"       Reload elevenlabs.conf. New calls use the new settings; calls under way keep theirs.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc != e->args) {
		return CLI_SHOWUSAGE;
	}
	if (convai_config_load(0)) {
		ast_cli(a->fd, "Reload of %s failed; see the log. The running configuration stays.\n",
			CONFIG_FILE);
		return CLI_FAILURE;
	}
	cfg = convai_config_get();
	if (cfg && cfg->problems) {
		ast_cli(a->fd, "%s reloaded with %d problem(s); see the log. %zu agent(s) configured; "
			"sections with errors keep their last good settings or are disabled.\n",
			CONFIG_FILE, cfg->problems, AST_VECTOR_SIZE(&cfg->agents));
		return CLI_SUCCESS;
	}
	ast_cli(a->fd, "%s reloaded: %zu agent(s) configured\n", CONFIG_FILE,
		cfg ? AST_VECTOR_SIZE(&cfg->agents) : 0);
	return CLI_SUCCESS;
}

static char *cli_show_agents(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	RAII_VAR(struct convai_config *, cfg, NULL, ao2_cleanup);
	size_t i;

	switch (cmd) {
	case CLI_INIT:
		e->command = "elevenlabs show agents";
		e->usage =
			"Usage: elevenlabs show agents\n"
			"       List the configured agents. API keys are shown by their last 4 characters.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc != e->args) {
		return CLI_SHOWUSAGE;
	}
	cfg = convai_config_get();
	if (!cfg) {
		return CLI_FAILURE;
	}
	ast_cli(a->fd, "%-20s %-34s %-9s %-6s %-9s %-8s %-6s %s\n", "Agent", "Agent ID", "API key",
		"Caller", "Buffer ms", "On end", "Max s", "Signed URL endpoint");
	for (i = 0; i < AST_VECTOR_SIZE(&cfg->agents); i++) {
		struct convai_agent *ag = AST_VECTOR_GET(&cfg->agents, i);
		char key[16], url[sizeof(ag->endpoint) + 16];

		ast_cli(a->fd, "%-20s %-34s %-9s %-6s %-9d %-8s %-6d %s\n", ag->name, ag->agent_id,
			redact(ag->api_key, key, sizeof(key)), AST_CLI_YESNO(ag->send_caller_number),
			ag->buffer_ms, ag->hangup_on_end ? "hangup" : "continue", ag->max_duration,
			redact_endpoint(ag->endpoint, url, sizeof(url)));
	}
	ast_cli(a->fd, "%zu agent(s); debug %s; Python %s\n", AST_VECTOR_SIZE(&cfg->agents),
		convai_runtime_debug() ? "on" : "off", S_OR(convai_pyhost_version(), "not running"));
	return CLI_SUCCESS;
}

struct cli_calls {
	int fd;
	int n;
};

static int cli_show_call_row(struct convai_call *c, void *arg)
{
	struct cli_calls *out = arg;
	int fd = out->fd;
	struct convai_session *s = c->sess;
	uint32_t queued = convai_ring_count(s->down) + convai_stat_get(s, CONVAI_STAT_BACKLOG_FRAMES);
	int64_t secs = ast_tvdiff_ms(ast_tvnow(), c->start) / 1000;

	ast_cli(fd, "%-32s %-14s %-34s %02d:%02d:%02d %-9s %9u %8" PRIu64 " %4" PRIu64 " %7.1f %5"
		PRIu64 " %10" PRIu64 " %10" PRIu64 "\n",
		ast_channel_name(c->chan), c->agent->name, S_OR(c->conversation_id, "(connecting)"),
		(int) (secs / 3600), (int) (secs / 60 % 60), (int) (secs % 60),
		S_OR(c->out_format, "-"), queued * 20,
		convai_stat_get(s, CONVAI_STAT_LAST_EVENT_ID), convai_stat_get(s, CONVAI_STAT_INTERRUPTIONS),
		convai_stat_get(s, CONVAI_STAT_PING_RTT_US) / 1000.0,
		convai_stat_get(s, CONVAI_STAT_UNDERRUNS), convai_stat_get(s, CONVAI_STAT_BYTES_UP),
		convai_stat_get(s, CONVAI_STAT_BYTES_DOWN));
	out->n++;
	return 0;
}

static char *cli_show_calls(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct cli_calls out = { .fd = a->fd };

	switch (cmd) {
	case CLI_INIT:
		e->command = "elevenlabs show calls";
		e->usage =
			"Usage: elevenlabs show calls\n"
			"       List the conversations under way.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc != e->args) {
		return CLI_SHOWUSAGE;
	}
	ast_cli(a->fd, "%-32s %-14s %-34s %-8s %-9s %9s %8s %4s %7s %5s %10s %10s\n", "Channel",
		"Agent", "Conversation", "Duration", "Format", "Queued ms", "Event ID", "Intr", "RTT ms",
		"Under", "Bytes up", "Bytes down");
	convai_calls_foreach(cli_show_call_row, &out);
	ast_cli(a->fd, "%d active conversation(s)\n", out.n);
	return CLI_SUCCESS;
}

struct cli_complete {
	const char *word;
	size_t len;
	int state;
	int which;
	char *ret;
};

static int complete_one(struct convai_call *c, void *arg)
{
	struct cli_complete *q = arg;

	if (!strncasecmp(q->word, ast_channel_name(c->chan), q->len) && ++q->which > q->state) {
		q->ret = ast_strdup(ast_channel_name(c->chan));
		return 1;
	}
	return 0;
}

static char *complete_call_channel(const char *word, int state)
{
	struct cli_complete q = { .word = word, .len = strlen(word), .state = state };

	convai_calls_foreach(complete_one, &q);
	return q.ret;
}

struct cli_call {
	int fd;
	const char *channel;
};

/* The agent's client tools, the transfer under way and the DTMF it sent. */
static void cli_show_call_tools(int fd, struct convai_call *c)
{
	char xfer[512];
	int i;

	ast_cli(fd, "Client tools:     ");
	for (i = 0; i < c->agent->n_tools; i++) {
		ast_cli(fd, "%s%s (%s)", i ? ", " : "", c->agent->tools[i].name,
			convai_tool_action_name(c->agent->tools[i].action));
	}
	ast_cli(fd, "%s\n", c->agent->n_tools ? "" : "(none)");
	ast_cli(fd, "Transfer targets: ");
	for (i = 0; i < c->agent->n_targets; i++) {
		ast_cli(fd, "%s%s (%s)", i ? ", " : "", c->agent->targets[i].name,
			c->agent->targets[i].mode == CONVAI_XFER_BLIND ? "blind" : "warm");
	}
	ast_cli(fd, "%s\n", c->agent->n_targets ? "" : "(none)");
	convai_transfer_describe(c, xfer, sizeof(xfer));
	ast_cli(fd, "Transfer:         %s\n", S_OR(xfer, "(none)"));
	ast_cli(fd, "DTMF sent:        %" PRIu64 " digit(s)%s\n", c->dtmf_sent,
		c->dtmf_out[0] ? " (sending)" : "");
}

static int cli_show_call_detail(struct convai_call *c, void *arg)
{
	const struct cli_call *q = arg;
	struct convai_session *s = c->sess;
	int fd = q->fd;

	if (strcasecmp(ast_channel_name(c->chan), q->channel)) {
		return 0;
	}

	ast_cli(fd, "Channel:          %s\n", ast_channel_name(c->chan));
	ast_cli(fd, "Uniqueid:         %s\n", ast_channel_uniqueid(c->chan));
	ast_cli(fd, "Agent:            %s (agent ID %s)\n", c->agent->name, c->agent->agent_id);
	ast_cli(fd, "Conversation ID:  %s\n", S_OR(c->conversation_id, "(connecting)"));
	ast_cli(fd, "Duration:         %.1f s (max_duration %d s)\n",
		ast_tvdiff_ms(ast_tvnow(), c->start) / 1000.0, c->agent->max_duration);
	ast_cli(fd, "Audio in/out:     %s / %s\n", S_OR(c->in_format, "-"), S_OR(c->out_format, "-"));
	ast_cli(fd, "State:            %s%s%s\n", c->playing ? "agent speaking" : "listening",
		c->phase == CALL_TALKING ? "" : ", ", c->phase == CALL_TALKING ? ""
		: convai_call_phase_name(c->phase));
	ast_cli(fd, "Queued audio:     %u ms (ring %u, backlog %" PRIu64 " frames)\n",
		(unsigned) (convai_ring_count(s->down) + convai_stat_get(s, CONVAI_STAT_BACKLOG_FRAMES)) * 20,
		convai_ring_count(s->down), convai_stat_get(s, CONVAI_STAT_BACKLOG_FRAMES));
	ast_cli(fd, "Last event ID:    %" PRIu64 "\n", convai_stat_get(s, CONVAI_STAT_LAST_EVENT_ID));
	ast_cli(fd, "Interruptions:    %" PRIu64 " (frames dropped %" PRIu64 ")\n",
		convai_stat_get(s, CONVAI_STAT_INTERRUPTIONS), convai_ring_skipped(s->down));
	ast_cli(fd, "Ping RTT:         %.1f ms\n", convai_stat_get(s, CONVAI_STAT_PING_RTT_US) / 1000.0);
	ast_cli(fd, "Frames played:    %" PRIu64 "\n", convai_stat_get(s, CONVAI_STAT_FRAMES_PLAYED));
	ast_cli(fd, "Underruns:        %" PRIu64 "\n", convai_stat_get(s, CONVAI_STAT_UNDERRUNS));
	ast_cli(fd, "Late ticks:       %" PRIu64 "\n", convai_stat_get(s, CONVAI_STAT_LATE_TICKS));
	ast_cli(fd, "Caller frames:    %" PRIu64 " (lost %" PRIu64 ")\n",
		convai_stat_get(s, CONVAI_STAT_FRAMES_UP), convai_stat_get(s, CONVAI_STAT_UP_OVERFLOWS));
	ast_cli(fd, "Ends of speech:   %" PRIu64 "\n", convai_stat_get(s, CONVAI_STAT_UP_FLUSHES));
	ast_cli(fd, "Bytes up/down:    %" PRIu64 " / %" PRIu64 "\n",
		convai_stat_get(s, CONVAI_STAT_BYTES_UP), convai_stat_get(s, CONVAI_STAT_BYTES_DOWN));
	cli_show_call_tools(fd, c);
	return 1;
}

static char *cli_show_call(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct cli_call q = { .fd = a->fd };

	switch (cmd) {
	case CLI_INIT:
		e->command = "elevenlabs show call";
		e->usage =
			"Usage: elevenlabs show call <channel>\n"
			"       Show one conversation under way in detail.\n";
		return NULL;
	case CLI_GENERATE:
		return a->pos == 3 ? complete_call_channel(a->word, a->n) : NULL;
	}
	if (a->argc != 4) {
		return CLI_SHOWUSAGE;
	}
	q.channel = a->argv[3];
	if (!convai_calls_foreach(cli_show_call_detail, &q)) {
		ast_cli(a->fd, "No conversation on channel '%s'\n", a->argv[3]);
		return CLI_FAILURE;
	}
	return CLI_SUCCESS;
}

#ifdef TEST_FRAMEWORK
/* Resilience testing: playout must not falter while Python is busy. Test builds only. */
static char *cli_test_stall(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	int ms;

	switch (cmd) {
	case CLI_INIT:
		e->command = "elevenlabs test stall";
		e->usage =
			"Usage: elevenlabs test stall <ms>\n"
			"       Block the Python runtime's loop for <ms> (1-5000) once, as a slow callback\n"
			"       would. For resilience tests and benchmarks; calls must play on unharmed.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc != 4 || ast_parse_arg(a->argv[3], PARSE_INT32 | PARSE_IN_RANGE, &ms, 1, 5000)) {
		return CLI_SHOWUSAGE;
	}
	convai_runtime_stall(ms);
	ast_cli(a->fd, "Stalling the Python loop for %d ms\n", ms);
	return CLI_SUCCESS;
}
#endif

static struct ast_cli_entry convai_cli[] = {
	AST_CLI_DEFINE(cli_debug, "Turn ElevenLabs protocol debugging on or off"),
	AST_CLI_DEFINE(cli_reload, "Reload elevenlabs.conf"),
	AST_CLI_DEFINE(cli_show_agents, "List configured ElevenLabs agents"),
	AST_CLI_DEFINE(cli_show_calls, "List ElevenLabs conversations under way"),
	AST_CLI_DEFINE(cli_show_call, "Show one ElevenLabs conversation in detail"),
#ifdef TEST_FRAMEWORK
	AST_CLI_DEFINE(cli_test_stall, "Block the ElevenLabs Python loop (testing)"),
#endif
};

int convai_cli_register(void)
{
	return ast_cli_register_multiple(convai_cli, ARRAY_LEN(convai_cli));
}

void convai_cli_unregister(void)
{
	ast_cli_unregister_multiple(convai_cli, ARRAY_LEN(convai_cli));
}
