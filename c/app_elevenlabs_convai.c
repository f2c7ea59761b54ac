/*
 * app_elevenlabs_convai -- a live conversation between a caller and an ElevenLabs
 * Conversational AI agent.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * This file owns everything that touches Asterisk: the application and its media loop, the
 * configuration snapshot, the CLI and the manager events. The protocol runs in Python
 * (python/convai) on the embedded runtime started by pyhost.c; the two meet only through the
 * rings and eventfds declared in convai_shared.h. No Asterisk thread ever takes the GIL.
 */

/*** MODULEINFO
	<support_level>extended</support_level>
 ***/

#include "asterisk.h"

#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <pthread.h>
#include <unistd.h>

#include "asterisk/app.h"
#include "asterisk/astobj2.h"
#include "asterisk/channel.h"
#include "asterisk/cli.h"
#include "asterisk/config.h"
#include "asterisk/format_cache.h"
#include "asterisk/frame.h"
#include "asterisk/json.h"
#include "asterisk/linkedlists.h"
#include "asterisk/logger.h"
#include "asterisk/manager.h"
#include "asterisk/module.h"
#include "asterisk/paths.h"
#include "asterisk/pbx.h"
#include "asterisk/strings.h"
#include "asterisk/ulaw.h"
#include "asterisk/utils.h"

#include "convai_shared.h"
#include "metrics.h"
#include "pyhost.h"

/*** DOCUMENTATION
	<application name="ElevenLabsConvAI" language="en_US" module="app_elevenlabs_convai">
		<synopsis>
			Talk to an ElevenLabs Conversational AI agent.
		</synopsis>
		<syntax>
			<parameter name="agent" required="true">
				<para>The agent's section in <filename>elevenlabs.conf</filename>.</para>
			</parameter>
			<parameter name="options">
				<optionlist>
					<option name="c">
						<para>Continue in the dialplan when the conversation ends, instead of
						hanging up. Overrides the agent's <literal>on_end</literal> setting.</para>
					</option>
					<option name="h">
						<para>Hang up when the conversation ends (the default).</para>
					</option>
				</optionlist>
			</parameter>
		</syntax>
		<description>
			<para>Answers the channel if needed and connects the caller to the agent: caller
			audio streams up to the agent, the agent's speech is played to the caller in exact
			20 ms frames, and the caller can interrupt it. DTMF digits the caller presses are
			passed to the agent. When the conversation ends (the agent ends the call, the
			maximum duration is reached, the service closes the connection) the agent's queued
			audio is played out first, then the channel is hung up, or the dialplan continues
			with option <literal>c</literal>. When the call cannot be set up (unknown agent,
			signed URL or WebSocket failure) the dialplan always continues, so it can fall back
			to a queue or a human.</para>
			<para>This application sets the following channel variables:</para>
			<variablelist>
				<variable name="ELEVENLABS_STATUS">
					<value name="COMPLETED">The conversation ended normally.</value>
					<value name="HANGUP">The caller hung up.</value>
					<value name="FAILED">The conversation could not start or broke off.</value>
				</variable>
				<variable name="ELEVENLABS_END_REASON">
					<para>Why it ended: <literal>completed</literal>, <literal>agent_ended_call</literal>,
					<literal>max_duration</literal>, <literal>timeout</literal>,
					<literal>policy_violation</literal>, <literal>server_error</literal>,
					<literal>network_loss</literal>, <literal>caller_hangup</literal>,
					<literal>signed_url_failed</literal>, <literal>connect_failed</literal>,
					<literal>unsupported_format</literal>, <literal>unknown_agent</literal>,
					<literal>runtime_unavailable</literal>, <literal>start_timeout</literal>,
					<literal>shutdown</literal>, <literal>message_too_big</literal>.</para>
				</variable>
				<variable name="ELEVENLABS_CONVERSATION_ID">
					<para>The ElevenLabs conversation id, when one was assigned.</para>
				</variable>
			</variablelist>
		</description>
		<see-also>
			<ref type="filename">elevenlabs.conf</ref>
		</see-also>
	</application>
	<managerEvent language="en_US" name="ElevenLabsConvAIStart" module="app_elevenlabs_convai">
		<managerEventInstance class="EVENT_FLAG_CALL">
			<synopsis>Raised when a conversation with an agent has started.</synopsis>
			<syntax>
				<parameter name="Channel"><para>The channel talking to the agent.</para></parameter>
				<parameter name="Uniqueid"><para>The channel's unique id.</para></parameter>
				<parameter name="Agent"><para>The agent's section name in <filename>elevenlabs.conf</filename>.</para></parameter>
				<parameter name="AgentID"><para>The ElevenLabs agent id the call uses (<literal>elevenlabs_agent_id</literal>
				when the call started; empty when the agent is not configured).</para></parameter>
				<parameter name="ConversationID"><para>The ElevenLabs conversation id; empty until
				the conversation has started.</para></parameter>
				<parameter name="InputFormat"><para>Caller audio format sent to the agent.</para></parameter>
				<parameter name="OutputFormat"><para>Agent audio format played to the caller.</para></parameter>
			</syntax>
		</managerEventInstance>
	</managerEvent>
	<managerEvent language="en_US" name="ElevenLabsConvAIInterruption" module="app_elevenlabs_convai">
		<managerEventInstance class="EVENT_FLAG_CALL">
			<synopsis>Raised when the caller interrupts the agent.</synopsis>
			<syntax>
				<parameter name="Channel"><para>The channel talking to the agent.</para></parameter>
				<parameter name="Uniqueid"><para>The channel's unique id.</para></parameter>
				<parameter name="Agent"><para>The agent's section name in <filename>elevenlabs.conf</filename>.</para></parameter>
				<parameter name="AgentID"><para>The ElevenLabs agent id the call uses (<literal>elevenlabs_agent_id</literal>
				when the call started; empty when the agent is not configured).</para></parameter>
				<parameter name="ConversationID"><para>The ElevenLabs conversation id; empty until
				the conversation has started.</para></parameter>
				<parameter name="EventID"><para>The interruption's event id: older agent audio is dropped.</para></parameter>
			</syntax>
		</managerEventInstance>
	</managerEvent>
	<managerEvent language="en_US" name="ElevenLabsConvAIToolCall" module="app_elevenlabs_convai">
		<managerEventInstance class="EVENT_FLAG_CALL">
			<synopsis>Raised when the agent calls a client tool.</synopsis>
			<syntax>
				<parameter name="Channel"><para>The channel talking to the agent.</para></parameter>
				<parameter name="Uniqueid"><para>The channel's unique id.</para></parameter>
				<parameter name="Agent"><para>The agent's section name in <filename>elevenlabs.conf</filename>.</para></parameter>
				<parameter name="AgentID"><para>The ElevenLabs agent id the call uses (<literal>elevenlabs_agent_id</literal>
				when the call started; empty when the agent is not configured).</para></parameter>
				<parameter name="ConversationID"><para>The ElevenLabs conversation id; empty until
				the conversation has started.</para></parameter>
				<parameter name="ToolName"/>
				<parameter name="ToolCallID"/>
				<parameter name="Parameters"><para>The tool's parameters as JSON.</para></parameter>
			</syntax>
		</managerEventInstance>
	</managerEvent>
	<managerEvent language="en_US" name="ElevenLabsConvAIStats" module="app_elevenlabs_convai">
		<managerEventInstance class="EVENT_FLAG_CALL">
			<synopsis>Raised at the end of a conversation with its media statistics.</synopsis>
			<syntax>
				<parameter name="Channel"><para>The channel talking to the agent.</para></parameter>
				<parameter name="Uniqueid"><para>The channel's unique id.</para></parameter>
				<parameter name="Agent"><para>The agent's section name in <filename>elevenlabs.conf</filename>.</para></parameter>
				<parameter name="AgentID"><para>The ElevenLabs agent id the call uses (<literal>elevenlabs_agent_id</literal>
				when the call started; empty when the agent is not configured).</para></parameter>
				<parameter name="ConversationID"><para>The ElevenLabs conversation id; empty until
				the conversation has started.</para></parameter>
				<parameter name="FramesPlayed"><para>20 ms frames of agent audio written.</para></parameter>
				<parameter name="Underruns"><para>Ticks with agent audio waiting in Python but none in the ring.</para></parameter>
				<parameter name="LateTicks"><para>Timer ticks the channel thread was late for (caught up).</para></parameter>
				<parameter name="FramesUp"><para>Caller frames queued for the agent.</para></parameter>
				<parameter name="UpOverflows"><para>Caller frames lost because the runtime fell behind.</para></parameter>
				<parameter name="FramesDropped"><para>Agent frames dropped by interruptions.</para></parameter>
				<parameter name="Interruptions"/>
				<parameter name="BytesUp"/>
				<parameter name="BytesDown"/>
				<parameter name="PlayoutP50Us"><para>Deviation of the interval between writes from 20 ms;
				also P99Us, MaxUs, Count and Hist (sparse <literal>bucket:count</literal> list) for
				Playout, FirstFrame (agent audio received to first frame written), BargeIn
				(interruption received to audio cut) and Uplink (caller chunk complete to handed to
				the WebSocket session).</para></parameter>
			</syntax>
		</managerEventInstance>
	</managerEvent>
	<managerEvent language="en_US" name="ElevenLabsConvAIEnd" module="app_elevenlabs_convai">
		<managerEventInstance class="EVENT_FLAG_CALL">
			<synopsis>Raised when a conversation with an agent has ended, or failed to start.</synopsis>
			<syntax>
				<parameter name="Channel"><para>The channel talking to the agent.</para></parameter>
				<parameter name="Uniqueid"><para>The channel's unique id.</para></parameter>
				<parameter name="Agent"><para>The agent's section name in <filename>elevenlabs.conf</filename>.</para></parameter>
				<parameter name="AgentID"><para>The ElevenLabs agent id the call uses (<literal>elevenlabs_agent_id</literal>
				when the call started; empty when the agent is not configured).</para></parameter>
				<parameter name="ConversationID"><para>The ElevenLabs conversation id; empty until
				the conversation has started.</para></parameter>
				<parameter name="Status"><para>COMPLETED, HANGUP or FAILED.</para></parameter>
				<parameter name="Reason"><para>As in <variable>ELEVENLABS_END_REASON</variable>.</para></parameter>
				<parameter name="Duration"><para>Seconds since the application started
				(<literal>0.000</literal> when the call failed before reaching the agent, e.g.
				<literal>unknown_agent</literal>).</para></parameter>
			</syntax>
		</managerEventInstance>
	</managerEvent>
 ***/

#define APP_NAME "ElevenLabsConvAI"
#define CONFIG_FILE "elevenlabs.conf"

#ifndef CONVAI_DEFAULT_PYTHON_DIR
#define CONVAI_DEFAULT_PYTHON_DIR "/usr/lib/asterisk-elevenlabs-convai/python"
#endif

#define BUFFER_MS_DEFAULT 240
#define BUFFER_MS_MIN 20
#define BUFFER_MS_MAX 2000
#define MAX_DURATION_DEFAULT 3600
/* Safety net only: Python gives up first, with the real cause. Its worst case before the
 * metadata is 3 signed-URL attempts of 10 s (aiohttp rounds each up to a whole second) with
 * 0.5 s + 1 s backoff, 10 s WebSocket handshake, 10 s for the metadata: about 54 s. */
#define START_TIMEOUT_MS 60000
#define DRAIN_MAX_MS 30000
#define PREBUFFER_FRAMES 3       /* 60 ms, absorbed at once when a chunk arrives */
#define CATCHUP_MAX 3            /* frames written for one wake-up after a stall */
#define FADE_MS 8
#define UP_SLACK_FRAMES 3        /* caller audio may lag the clock this much before we fill */

/* --- configuration snapshot ------------------------------------------------------------- */

struct convai_agent {
	char name[64];
	char api_key[256];
	char endpoint[512];
	char agent_id[128];
	int send_caller_number;
	int buffer_ms;
	int hangup_on_end;
	int max_duration;
	char first_message[512];
	char language[16];
	char voice_id[64];
	char prompt[1024];
	struct ast_variable *dynamic_variables;   /* name = template with ${VARS} */
};

struct convai_config {
	int debug;
	char python_path[1024];
	int problems;   /* sections disabled or kept at their last good settings by errors */
	struct ast_variable *disabled;   /* names of the sections disabled by errors */
	AST_VECTOR(, struct convai_agent *) agents;
};

static AO2_GLOBAL_OBJ_STATIC(global_config);

static void agent_destroy(void *obj)
{
	struct convai_agent *agent = obj;

	ast_variables_destroy(agent->dynamic_variables);
}

static void config_destroy(void *obj)
{
	struct convai_config *cfg = obj;

	AST_VECTOR_CALLBACK_VOID(&cfg->agents, ao2_ref, -1);
	AST_VECTOR_FREE(&cfg->agents);
	ast_variables_destroy(cfg->disabled);
}

static int config_is_disabled(struct convai_config *cfg, const char *name)
{
	struct ast_variable *v;

	for (v = cfg->disabled; v; v = v->next) {
		if (!strcasecmp(v->name, name)) {
			return 1;
		}
	}
	return 0;
}

static struct convai_agent *config_find_agent(struct convai_config *cfg, const char *name)
{
	size_t i;

	for (i = 0; i < AST_VECTOR_SIZE(&cfg->agents); i++) {
		struct convai_agent *agent = AST_VECTOR_GET(&cfg->agents, i);

		if (!strcasecmp(agent->name, name)) {
			return agent;
		}
	}
	return NULL;
}

/* Every line the module logs starts with this, Python's lines too (convai/host.py). */
#define LOG_PREFIX "elevenlabs: "

/* One problem in the file: always name file, line, section and key. */
#define CONF_ERR(v, cat, fmt, ...) \
	ast_log(LOG_ERROR, LOG_PREFIX "%s line %d: [%s] %s: " fmt "\n", \
		S_OR((v)->file, CONFIG_FILE), (v)->lineno, (cat), (v)->name, ##__VA_ARGS__)
#define CONF_WARN(v, cat, fmt, ...) \
	ast_log(LOG_WARNING, LOG_PREFIX "%s line %d: [%s] %s: " fmt "\n", \
		S_OR((v)->file, CONFIG_FILE), (v)->lineno, (cat), (v)->name, ##__VA_ARGS__)

static int parse_int(struct ast_variable *v, const char *cat, int min, int max, int *out)
{
	int n;

	if (ast_parse_arg(v->value, PARSE_INT32, &n)) {
		CONF_ERR(v, cat, "'%s' is not a whole number", v->value);
		return -1;
	}
	if (n < min || n > max) {
		CONF_ERR(v, cat, "%d is out of range (%d to %d)", n, min, max);
		return -1;
	}
	*out = n;
	return 0;
}

static int parse_bool(struct ast_variable *v, const char *cat, int *out)
{
	if (!ast_true(v->value) && !ast_false(v->value)) {
		CONF_ERR(v, cat, "'%s' is not yes/no/true/false", v->value);
		return -1;
	}
	*out = ast_true(v->value);
	return 0;
}

static int copy_str(struct ast_variable *v, const char *cat, char *dst, size_t len)
{
	if (strlen(v->value) >= len) {
		CONF_ERR(v, cat, "value is longer than %zu characters", len - 1);
		return -1;
	}
	ast_copy_string(dst, v->value, len);
	return 0;
}

static int parse_agent_key(struct convai_agent *a, struct ast_variable *v, const char *cat)
{
	if (!strcasecmp(v->name, "elevenlabs_api_key")) {
		return copy_str(v, cat, a->api_key, sizeof(a->api_key));
	} else if (!strcasecmp(v->name, "elevenlabs_get_signed_url_endpoint")) {
		const char *host = !strncasecmp(v->value, "https://", 8) ? v->value + 8
			: !strncasecmp(v->value, "http://", 7) ? v->value + 7 : NULL;

		if (!host) {
			CONF_ERR(v, cat, "'%.64s' is not an http:// or https:// URL", v->value);
			return -1;
		}
		if (ast_strlen_zero(host) || *host == '/' || strpbrk(v->value, " \t")) {
			CONF_ERR(v, cat, "'%.64s' has no host name or contains spaces", v->value);
			return -1;
		}
		return copy_str(v, cat, a->endpoint, sizeof(a->endpoint));
	} else if (!strcasecmp(v->name, "elevenlabs_agent_id")) {
		return copy_str(v, cat, a->agent_id, sizeof(a->agent_id));
	} else if (!strcasecmp(v->name, "elevenlabs_send_caller_number")) {
		return parse_bool(v, cat, &a->send_caller_number);
	} else if (!strcasecmp(v->name, "elevenlabs_audio_frames_buffer_ms")) {
		if (parse_int(v, cat, BUFFER_MS_MIN, BUFFER_MS_MAX, &a->buffer_ms)) {
			return -1;
		}
		if (a->buffer_ms % 20) {
			CONF_ERR(v, cat, "%d is not a multiple of 20 ms", a->buffer_ms);
			return -1;
		}
		return 0;
	} else if (!strcasecmp(v->name, "on_end")) {
		if (strcasecmp(v->value, "hangup") && strcasecmp(v->value, "continue")) {
			CONF_ERR(v, cat, "'%s' is neither 'hangup' nor 'continue'", v->value);
			return -1;
		}
		a->hangup_on_end = !strcasecmp(v->value, "hangup");
		return 0;
	} else if (!strcasecmp(v->name, "max_duration")) {
		return parse_int(v, cat, 0, 86400, &a->max_duration);
	} else if (!strcasecmp(v->name, "first_message")) {
		return copy_str(v, cat, a->first_message, sizeof(a->first_message));
	} else if (!strcasecmp(v->name, "language")) {
		return copy_str(v, cat, a->language, sizeof(a->language));
	} else if (!strcasecmp(v->name, "voice_id")) {
		return copy_str(v, cat, a->voice_id, sizeof(a->voice_id));
	} else if (!strcasecmp(v->name, "prompt")) {
		return copy_str(v, cat, a->prompt, sizeof(a->prompt));
	} else if (!strcasecmp(v->name, "dynamic_variable")) {
		char *name = ast_strdupa(v->value);
		char *eq = strchr(name, '=');
		struct ast_variable *dv;
		const char *p;

		if (!eq) {
			CONF_ERR(v, cat, "'%s' is not name=value", v->value);
			return -1;
		}
		*eq = '\0';
		name = ast_strip(name);
		for (p = name; *p && (isalnum((unsigned char) *p) || *p == '_'); p++) {
		}
		if (ast_strlen_zero(name) || *p) {
			CONF_ERR(v, cat, "'%s' is not name=value with a name of letters, digits and _",
				v->value);
			return -1;
		}
		dv = ast_variable_new(name, ast_skip_blanks(eq + 1), v->file);
		if (!dv) {
			return -1;
		}
		ast_variable_list_append(&a->dynamic_variables, dv);
		return 0;
	}
	CONF_WARN(v, cat, "unknown key, ignored");
	return 0;
}

/* The line of "[cat]" in file (relative to the config dir), or 0: Asterisk's config API does
 * not say where a section starts, and an error about a missing key should name it. */
static int section_line(const char *file, const char *cat)
{
	char path[PATH_MAX], buf[256];
	size_t n = strlen(cat);
	int lineno = 0, at_start = 1, found = 0;
	FILE *f;

	if (*file == '/') {
		ast_copy_string(path, file, sizeof(path));
	} else {
		snprintf(path, sizeof(path), "%s/%s", ast_config_AST_CONFIG_DIR, file);
	}
	if (!(f = fopen(path, "r"))) {
		return 0;
	}
	while (!found && fgets(buf, sizeof(buf), f)) {
		if (at_start) {
			const char *p = ast_skip_blanks(buf);

			lineno++;
			found = *p == '[' && !strncasecmp(p + 1, cat, n) && p[1 + n] == ']';
		}
		at_start = strchr(buf, '\n') != NULL;
	}
	fclose(f);
	return found ? lineno : 0;
}

static struct convai_agent *parse_agent(struct ast_config *raw, const char *cat)
{
	RAII_VAR(struct convai_agent *, a, ao2_alloc_options(sizeof(*a), agent_destroy,
		AO2_ALLOC_OPT_LOCK_NOLOCK), ao2_cleanup);
	struct ast_variable *v;
	const char *file = CONFIG_FILE;
	int bad = 0;
	size_t i;
	const struct { const char *key; const char *value; } required[] = {
		{ "elevenlabs_api_key", a ? a->api_key : "" },
		{ "elevenlabs_get_signed_url_endpoint", a ? a->endpoint : "" },
		{ "elevenlabs_agent_id", a ? a->agent_id : "" },
	};

	if (!a) {
		return NULL;
	}
	if (strlen(cat) >= sizeof(a->name)) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s: [%.32s...]: the section name is longer than %zu "
			"characters\n", CONFIG_FILE, cat, sizeof(a->name) - 1);
		return NULL;
	}
	ast_copy_string(a->name, cat, sizeof(a->name));
	a->buffer_ms = BUFFER_MS_DEFAULT;
	a->hangup_on_end = 1;
	a->max_duration = MAX_DURATION_DEFAULT;
	for (v = ast_variable_browse(raw, cat); v; v = v->next) {
		bad |= parse_agent_key(a, v, cat) != 0;
		file = S_OR(v->file, file);   /* the section's own lines come last */
	}
	for (i = 0; i < ARRAY_LEN(required); i++) {
		if (ast_strlen_zero(required[i].value)) {
			int line = section_line(file, cat);

			if (line) {
				ast_log(LOG_ERROR, LOG_PREFIX "%s line %d: [%s] %s: missing or empty; it is "
					"required\n", file, line, cat, required[i].key);
			} else {
				ast_log(LOG_ERROR, LOG_PREFIX "%s: [%s] %s: missing or empty; it is required\n",
					file, cat, required[i].key);
			}
			bad = 1;
		}
	}
	if (bad) {
		return NULL;
	}
	ao2_ref(a, +1);
	return a;
}

static void parse_general(struct convai_config *cfg, struct ast_config *raw)
{
	struct ast_variable *v;

	for (v = ast_variable_browse(raw, "general"); v; v = v->next) {
		if (!strcasecmp(v->name, "debug")) {
			cfg->problems += parse_bool(v, "general", &cfg->debug) != 0;
		} else if (!strcasecmp(v->name, "python_path")) {
			cfg->problems += copy_str(v, "general", cfg->python_path,
				sizeof(cfg->python_path)) != 0;
		} else {
			CONF_WARN(v, "general", "unknown key, ignored");
		}
	}
}

/* A section that fails to parse keeps its last good settings, if it had any. */
static void add_agent(struct convai_config *cfg, struct convai_config *old,
	struct ast_config *raw, const char *cat)
{
	struct convai_agent *a;

	if (config_find_agent(cfg, cat)) {
		ast_log(LOG_WARNING, LOG_PREFIX "%s: [%s] appears more than once; only the first "
			"is used\n", CONFIG_FILE, cat);
		return;
	}
	a = parse_agent(raw, cat);
	if (!a) {
		cfg->problems++;
	}
	if (!a && old && (a = config_find_agent(old, cat))) {
		ast_log(LOG_WARNING, LOG_PREFIX "%s: [%s] has errors; keeping its last good "
			"configuration until they are fixed\n", CONFIG_FILE, cat);
		ao2_ref(a, +1);
	} else if (!a) {
		struct ast_variable *name = ast_variable_new(cat, "", CONFIG_FILE);

		ast_log(LOG_ERROR, LOG_PREFIX "%s: [%s] has errors; agent disabled\n", CONFIG_FILE, cat);
		if (name) {
			ast_variable_list_append(&cfg->disabled, name);
		}
		return;
	}
	if (AST_VECTOR_APPEND(&cfg->agents, a)) {
		ao2_ref(a, -1);
	}
}

static struct convai_config *config_parse(struct ast_config *raw, struct convai_config *old)
{
	struct convai_config *cfg = ao2_alloc_options(sizeof(*cfg), config_destroy,
		AO2_ALLOC_OPT_LOCK_NOLOCK);
	const char *cat = NULL;

	if (!cfg || AST_VECTOR_INIT(&cfg->agents, 4)) {
		ao2_cleanup(cfg);
		return NULL;
	}
	ast_copy_string(cfg->python_path, CONVAI_DEFAULT_PYTHON_DIR, sizeof(cfg->python_path));
	if (!raw) {
		return cfg;
	}
	parse_general(cfg, raw);
	while ((cat = ast_category_browse(raw, cat))) {
		struct ast_category *c = ast_category_get(raw, cat, NULL);

		if (!strcasecmp(cat, "general") || (c && ast_category_is_template(c))) {
			continue;
		}
		add_agent(cfg, old, raw, cat);
	}
	return cfg;
}

static struct convai_host host;

static void warn_if_world_readable(void)
{
	char path[PATH_MAX];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", ast_config_AST_CONFIG_DIR, CONFIG_FILE);
	if (!stat(path, &st) && (st.st_mode & S_IROTH)) {
		ast_log(LOG_WARNING, LOG_PREFIX "%s is readable by every user (mode %04o) but holds "
			"API keys; chmod 640 it\n", path, (unsigned) (st.st_mode & 07777));
	}
}

/*!
 * \retval 0 loaded (see the snapshot's problems) or unchanged
 * \retval -1 the file is broken: the running snapshot stays (at load: no agents)
 */
static int load_config(int reload)
{
	struct ast_flags flags = { reload ? CONFIG_FLAG_FILEUNCHANGED : 0 };
	RAII_VAR(struct convai_config *, old, ao2_global_obj_ref(global_config), ao2_cleanup);
	RAII_VAR(struct convai_config *, cfg, NULL, ao2_cleanup);
	struct ast_config *raw = ast_config_load(CONFIG_FILE, flags);
	int broken = raw == CONFIG_STATUS_FILEINVALID;   /* at load: run with no agents */

	if (raw == CONFIG_STATUS_FILEUNCHANGED) {
		return 0;
	}
	if (broken && old) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s cannot be parsed (see above); keeping the running "
			"configuration\n", CONFIG_FILE);
		return -1;
	}
	if (broken) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s cannot be parsed (see above); no agents configured "
			"until it is fixed and reloaded\n", CONFIG_FILE);
		raw = NULL;
	} else if (!raw) {
		ast_log(LOG_NOTICE, LOG_PREFIX "%s not found; no agents configured\n", CONFIG_FILE);
	}
	cfg = config_parse(raw, old);
	if (raw) {
		ast_config_destroy(raw);
		warn_if_world_readable();
	}
	if (!cfg) {
		return -1;
	}
	if (old && strcmp(old->python_path, cfg->python_path)) {
		ast_log(LOG_NOTICE, LOG_PREFIX "%s: python_path changed; the new one is used when "
			"Asterisk restarts\n", CONFIG_FILE);
	}
	ao2_global_obj_replace_unref(global_config, cfg);
	/* A reload keeps a run-time `elevenlabs debug on|off` unless the file's setting changed. */
	if (!old || old->debug != cfg->debug) {
		atomic_store(&host.debug, cfg->debug);
		if (host.wake_efd >= 0) {
			eventfd_write(host.wake_efd, 1);
		}
	}
	if (cfg->problems) {
		ast_log(LOG_WARNING, LOG_PREFIX "%s %s with %d problem(s) (see above); %zu agent(s) "
			"configured\n", CONFIG_FILE, old ? "reloaded" : "loaded", cfg->problems,
			AST_VECTOR_SIZE(&cfg->agents));
	} else {
		ast_verb(2, LOG_PREFIX "%s %s: %zu agent(s) configured\n", CONFIG_FILE,
			old ? "reloaded" : "loaded", AST_VECTOR_SIZE(&cfg->agents));
	}
	return 0;
}

/* --- sessions: memory shared with Python ------------------------------------------------- */

static ast_mutex_t pending_lock;
static struct convai_session *pending_head;
static struct convai_session **pending_tail = &pending_head;
static _Atomic uint32_t next_session_id;
static int runtime_up;

static struct convai_ring *ring_new(uint32_t slots, uint32_t slot_bytes)
{
	struct convai_ring *r = ast_calloc(1, convai_ring_size(slots, slot_bytes));

	if (r) {
		convai_ring_init(r, slots, slot_bytes);
	}
	return r;
}

static void session_free(struct convai_session *s)
{
	if (s->up_efd >= 0) {
		close(s->up_efd);
	}
	if (s->down_efd >= 0) {
		close(s->down_efd);
	}
	ast_free(s->up);
	ast_free(s->down);
	ast_free(s->to_c);
	ast_free(s->to_py);
	ast_free(s);
}

/* Called by the app thread and, through host.release_session, by Python. */
static void session_release(struct convai_session *s)
{
	if (s && atomic_fetch_sub(&s->refs, 1) == 1) {
		session_free(s);
	}
}

static struct convai_session *session_new(void)
{
	struct convai_session *s = ast_calloc(1, sizeof(*s));

	if (!s) {
		return NULL;
	}
	s->magic = CONVAI_SESSION_MAGIC;
	s->id = atomic_fetch_add(&next_session_id, 1) + 1;
	atomic_init(&s->refs, 2);
	s->up_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	s->down_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	s->up = ring_new(CONVAI_UP_SLOTS, CONVAI_FRAME_MAX);
	s->down = ring_new(CONVAI_DOWN_SLOTS, CONVAI_FRAME_MAX);
	s->to_c = ring_new(CONVAI_CMD_SLOTS, CONVAI_CMD_BYTES);
	s->to_py = ring_new(CONVAI_CMD_SLOTS, CONVAI_CMD_BYTES);
	if (s->up_efd < 0 || s->down_efd < 0 || !s->up || !s->down || !s->to_c || !s->to_py) {
		session_free(s);
		return NULL;
	}
	return s;
}

static void session_submit(struct convai_session *s)
{
	ast_mutex_lock(&pending_lock);
	*pending_tail = s;
	pending_tail = &s->next_pending;
	ast_mutex_unlock(&pending_lock);
	eventfd_write(host.wake_efd, 1);
}

/* Python: the next session to start, or NULL. Holds the lock for a pointer swap only. */
static struct convai_session *session_take(void)
{
	struct convai_session *s;

	ast_mutex_lock(&pending_lock);
	s = pending_head;
	if (s) {
		pending_head = s->next_pending;
		if (!pending_head) {
			pending_tail = &pending_head;
		}
		s->next_pending = NULL;
	}
	ast_mutex_unlock(&pending_lock);
	return s;
}

/* App thread: withdraw a session Python never took. Returns 1 if it was still pending. */
static int session_withdraw(struct convai_session *s)
{
	struct convai_session **pp;
	int found = 0;

	ast_mutex_lock(&pending_lock);
	for (pp = &pending_head; *pp; pp = &(*pp)->next_pending) {
		if (*pp == s) {
			*pp = s->next_pending;
			found = 1;
			break;
		}
	}
	pending_tail = &pending_head;
	while (*pending_tail) {
		pending_tail = &(*pending_tail)->next_pending;
	}
	ast_mutex_unlock(&pending_lock);
	return found;
}

static void python_log(int level, const char *file, int line, const char *func,
	unsigned int callid, const char *msg)
{
	if (level == __LOG_VERBOSE) {
		/* Python's own file and line, and the call's id, as for the other levels. */
		if (VERBOSITY_ATLEAST(3)) {
			__ast_verbose_callid(file, line, func, 3, callid, "%s\n", msg);
		}
	} else if (callid) {
		ast_log_callid(level, file, line, func, callid, "%s\n", msg);
	} else {
		ast_log(level, file, line, func, "%s\n", msg);
	}
}

/* --- the call ------------------------------------------------------------------------------ */

enum call_status { CALL_RUNNING, CALL_COMPLETED, CALL_HANGUP, CALL_FAILED };

static const char *status_names[] = {
	[CALL_RUNNING] = "RUNNING", [CALL_COMPLETED] = "COMPLETED",
	[CALL_HANGUP] = "HANGUP", [CALL_FAILED] = "FAILED",
};

struct convai_call {
	struct ast_channel *chan;
	struct convai_session *sess;
	struct convai_agent *agent;
	struct timeval start;
	int tfd;
	int started;
	int draining;
	struct timeval drain_start;
	enum call_status status;
	char reason[64];
	enum call_status final_status;  /* what END said, applied once drained */
	char final_reason[64];
	char conversation_id[96];
	char in_format[16];
	char out_format[16];
	struct ast_format *write_fmt;
	struct ast_format *read_fmt;
	uint32_t frame_bytes;       /* agent audio, per 20 ms */
	uint32_t frame_samples;
	uint32_t up_frame_bytes;    /* caller audio, per 20 ms */
	int playing;
	int prebuffer_ticks;
	uint32_t seen_below;
	uint32_t last_played_id;
	uint32_t last_write_us;
	int up_deficit;             /* 20 ms ticks minus caller frames received */
	AST_LIST_ENTRY(convai_call) list;
	unsigned char silence[CONVAI_FRAME_MAX];
	unsigned char out[AST_FRIENDLY_OFFSET + CONVAI_FRAME_MAX];
};

static AST_RWLIST_HEAD_STATIC(live_calls, convai_call);

static void call_set_end(struct convai_call *c, enum call_status status, const char *reason)
{
	if (c->status == CALL_RUNNING) {
		c->status = status;
		ast_copy_string(c->reason, reason, sizeof(c->reason));
	}
}

static void call_notify_python(struct convai_call *c, int type, const char *text)
{
	if (!convai_ring_push(c->sess->to_py, type, text, strlen(text))) {
		eventfd_write(c->sess->up_efd, 1);
	}
}

static int format_for(const char *name, struct ast_format **fmt, uint32_t *bytes)
{
	if (!strcmp(name, "ulaw_8000")) {
		*fmt = ast_format_ulaw;
		*bytes = 160;
	} else if (!strcmp(name, "pcm_8000")) {
		*fmt = ast_format_slin;
		*bytes = 320;
	} else if (!strcmp(name, "pcm_16000")) {
		*fmt = ast_format_slin16;
		*bytes = 640;
	} else {
		return -1;
	}
	return 0;
}

/* Every ElevenLabsConvAI* manager event starts with these fields (see the DOCUMENTATION). */
static void emit_event(struct ast_channel *chan, const char *agent, const char *agent_id,
	const char *conversation_id, const char *event, const char *body)
{
	ast_manager_event(chan, EVENT_FLAG_CALL, event,
		"Channel: %s\r\nUniqueid: %s\r\nAgent: %s\r\nAgentID: %s\r\nConversationID: %s\r\n%s",
		ast_channel_name(chan), ast_channel_uniqueid(chan), agent, agent_id, conversation_id,
		body);
}

static void call_emit_event(struct convai_call *c, const char *event, const char *body)
{
	emit_event(c->chan, c->agent->name, c->agent->agent_id, c->conversation_id, event, body);
}

/* STARTED: "conversation_id\tinput_format\toutput_format" */
static void call_on_started(struct convai_call *c, char *text)
{
	char *conv = strsep(&text, "\t");
	char *in = strsep(&text, "\t");
	char *out = text;
	uint32_t up_bytes;
	/* The first tick at once, not 20 ms on: the greeting often reaches the ring before this
	 * command does, and would otherwise wait a whole extra frame (bench/README.md). */
	struct itimerspec its = { { 0, 20000000 }, { 0, 1 } };

	if (c->started || !conv || !in || !out
		|| format_for(in, &c->read_fmt, &up_bytes) || format_for(out, &c->write_fmt, &c->frame_bytes)) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: the agent asked for unsupported audio formats\n",
			ast_channel_name(c->chan), c->agent->name);
		call_set_end(c, CALL_FAILED, "unsupported_format");
		return;
	}
	c->up_frame_bytes = up_bytes;
	c->frame_samples = c->write_fmt == ast_format_ulaw ? 160 : c->frame_bytes / 2;
	memset(c->silence, c->write_fmt == ast_format_ulaw ? 0xff : 0, sizeof(c->silence));
	if (ast_set_read_format(c->chan, c->read_fmt) || ast_set_write_format(c->chan, c->write_fmt)) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: cannot set the channel to %s/%s\n",
			ast_channel_name(c->chan), c->agent->name, in, out);
		call_set_end(c, CALL_FAILED, "unsupported_format");
		return;
	}
	AST_RWLIST_WRLOCK(&live_calls);
	ast_copy_string(c->conversation_id, conv, sizeof(c->conversation_id));
	ast_copy_string(c->in_format, in, sizeof(c->in_format));
	ast_copy_string(c->out_format, out, sizeof(c->out_format));
	c->started = 1;
	AST_RWLIST_UNLOCK(&live_calls);
	pbx_builtin_setvar_helper(c->chan, "ELEVENLABS_CONVERSATION_ID", conv);
	/* Absolute 20 ms clock for agent audio; its expiration count is what keeps us exact. */
	timerfd_settime(c->tfd, 0, &its, NULL);
	ast_verb(3, LOG_PREFIX "%s [%s]: conversation %s started with agent [%s] (%s in, %s out)\n",
		ast_channel_name(c->chan), c->agent->name, conv, c->agent->name, in, out);
	{
		char body[64];

		snprintf(body, sizeof(body), "InputFormat: %s\r\nOutputFormat: %s\r\n", in, out);
		call_emit_event(c, "ElevenLabsConvAIStart", body);
	}
}

/* END: "STATUS\treason\tdetail" */
static void call_on_end(struct convai_call *c, char *text)
{
	char *status = strsep(&text, "\t");
	char *reason = strsep(&text, "\t");
	enum call_status st = CALL_FAILED;

	if (c->draining) {
		return;   /* already ending (max_duration): that result stands */
	}
	if (status && !strcmp(status, "COMPLETED")) {
		st = CALL_COMPLETED;
	} else if (status && !strcmp(status, "HANGUP")) {
		st = CALL_HANGUP;
	}
	if (!c->started || st == CALL_FAILED) {
		/* Nothing worth draining: a failed setup or a broken conversation. */
		call_set_end(c, st, S_OR(reason, "server_error"));
		return;
	}
	/* The loop ends once the agent's queued audio has played out: no cut-off goodbye. */
	c->draining = 1;
	c->drain_start = ast_tvnow();
	c->final_status = st;
	ast_copy_string(c->final_reason, S_OR(reason, "completed"), sizeof(c->final_reason));
}

/* EVENT: "Name\r\nKey: value\r\n..." */
static void call_on_event(struct convai_call *c, char *text)
{
	char *name = strsep(&text, "\r\n");

	if (!ast_strlen_zero(name) && !strncmp(name, "ElevenLabsConvAI", 16)) {
		call_emit_event(c, name, S_OR(ast_skip_blanks(text), ""));
	}
}

static void call_on_setvar(struct convai_call *c, char *text)
{
	char *eq = strchr(text, '=');

	if (eq && eq != text && !strncmp(text, "ELEVENLABS_", 11)) {
		*eq = '\0';
		pbx_builtin_setvar_helper(c->chan, text, eq + 1);
	}
}

static void call_on_commands(struct convai_call *c)
{
	char text[CONVAI_CMD_BYTES + 1];
	eventfd_t ignored;
	uint32_t type;
	int len;

	eventfd_read(c->sess->down_efd, &ignored);
	while ((len = convai_ring_pop(c->sess->to_c, &type, text, CONVAI_CMD_BYTES)) >= 0) {
		text[len] = '\0';
		switch (type) {
		case CONVAI_CMD_STARTED:
			call_on_started(c, text);
			break;
		case CONVAI_CMD_END:
			call_on_end(c, text);
			break;
		case CONVAI_CMD_EVENT:
			call_on_event(c, text);
			break;
		case CONVAI_CMD_SETVAR:
			call_on_setvar(c, text);
			break;
		case CONVAI_CMD_FLUSH:
			atomic_store(&c->sess->down->head, atomic_load(&c->sess->down->tail));
			c->playing = 0;
			break;
		default:
			ast_log(LOG_WARNING, LOG_PREFIX "%s [%s]: unknown command %u from the Python "
				"runtime\n", ast_channel_name(c->chan), c->agent->name, type);
		}
	}
}

/* --- media: agent audio out, one frame per timer tick -------------------------------------- */

/* How far each write strays from the 20 ms grid: what the caller's jitter buffer sees. */
static void call_note_write(struct convai_call *c)
{
	uint32_t now = convai_now_us();

	if (c->last_write_us) {
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
	if (!c->playing || c->last_played_id >= below) {
		return 0;
	}
	c->playing = 0;
	c->prebuffer_ticks = 0;
	convai_hist_add(c->sess, CONVAI_HIST_BARGE_IN,
		convai_now_us() - (uint32_t) convai_stat_get(c->sess, CONVAI_STAT_INTERRUPT_STAMP));
	if (s && s->event_id < below) {
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
	if (c->up_deficit <= UP_SLACK_FRAMES || c->draining) {
		return;
	}
	memset(silence, c->read_fmt == ast_format_ulaw ? 0xff : 0, c->up_frame_bytes);
	while (c->up_deficit > UP_SLACK_FRAMES) {
		call_push_up(c, silence, c->up_frame_bytes, now);
	}
}

static void call_on_tick(struct convai_call *c)
{
	uint64_t expirations = 0;

	if (read(c->tfd, &expirations, sizeof(expirations)) != sizeof(expirations)) {
		return;
	}
	if (expirations > 1) {
		convai_stat_add(c->sess, CONVAI_STAT_LATE_TICKS, expirations - 1);
	}
	call_fill_uplink(c, expirations);
	/* Catch up after a stall, but never burst more than a few frames at once. */
	for (expirations = MIN(expirations, CATCHUP_MAX); expirations; expirations--) {
		call_play_one(c);
	}
	if (c->draining && !c->playing && !convai_ring_count(c->sess->down)
		&& !convai_stat_get(c->sess, CONVAI_STAT_BACKLOG_FRAMES)) {
		call_set_end(c, c->final_status, c->final_reason);
	}
}

/* --- media: caller audio up ------------------------------------------------------------------ */

/* Queue caller audio for Python, split into 20 ms slots; wake Python once per chunk. */
static void call_push_up(struct convai_call *c, const unsigned char *p, uint32_t len, uint32_t now)
{
	uint32_t pushed = 0;
	int ticks = MAX(1, (int) ((len + c->up_frame_bytes / 2) / c->up_frame_bytes));

	while (len) {
		uint32_t n = MIN(len, c->up_frame_bytes);

		if (convai_ring_push_stamped(c->sess->up, 0, now, p, n)) {
			convai_stat_add(c->sess, CONVAI_STAT_UP_OVERFLOWS, 1);
			break;
		}
		p += n;
		len -= n;
		pushed++;
	}
	/* Counted even when the ring is full, so the silence fill can never spin. */
	c->up_deficit = MAX(c->up_deficit - ticks, -UP_SLACK_FRAMES);
	convai_stat_add(c->sess, CONVAI_STAT_FRAMES_UP, pushed);
	if (atomic_fetch_add(&c->sess->up_unsignalled, pushed) + pushed >= c->sess->up_batch_frames) {
		atomic_store(&c->sess->up_unsignalled, 0);
		eventfd_write(c->sess->up_efd, 1);
	}
}

static void call_on_voice(struct convai_call *c, struct ast_frame *f)
{
	if (!c->started || c->draining || ast_format_cmp(f->subclass.format, c->read_fmt)
		!= AST_FORMAT_CMP_EQUAL) {
		return;
	}
	call_push_up(c, f->data.ptr, f->datalen, convai_now_us());
}

static void call_on_dtmf(struct convai_call *c, struct ast_frame *f)
{
	char digit[2] = { (char) f->subclass.integer, '\0' };

	if (c->started && !c->draining) {
		ast_debug(1, LOG_PREFIX "%s [%s]: DTMF '%s' passed to the agent\n",
			ast_channel_name(c->chan), c->agent->name, digit);
		call_notify_python(c, CONVAI_CMD_DTMF, digit);
	}
}

/* Returns -1 when the channel has gone. */
static int call_on_channel(struct convai_call *c)
{
	struct ast_frame *f = ast_read(c->chan);

	if (!f) {
		call_set_end(c, CALL_HANGUP, "caller_hangup");
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
	call_notify_python(c, CONVAI_CMD_HANGUP, "");
	c->draining = 1;
	c->drain_start = ast_tvnow();
	c->final_status = CALL_COMPLETED;
	ast_copy_string(c->final_reason, "max_duration", sizeof(c->final_reason));
}

static void call_loop(struct convai_call *c)
{
	int fds[2] = { c->tfd, c->sess->down_efd };
	int64_t max_ms = c->agent->max_duration ? (int64_t) c->agent->max_duration * 1000 : -1;

	while (c->status == CALL_RUNNING) {
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
		} else if (ms < 0) {
			call_set_end(c, CALL_HANGUP, "caller_hangup");
		}
		if (!c->started && elapsed > START_TIMEOUT_MS) {
			ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: the agent did not start within %d s\n",
				ast_channel_name(c->chan), c->agent->name, START_TIMEOUT_MS / 1000);
			call_set_end(c, CALL_FAILED, "start_timeout");
		} else if (max_ms > 0 && elapsed > max_ms && !c->draining) {
			ast_log(LOG_NOTICE, LOG_PREFIX "%s [%s]: max_duration of %d s reached\n",
				ast_channel_name(c->chan), c->agent->name, c->agent->max_duration);
			call_end_at_max_duration(c);
		} else if (c->draining && ast_tvdiff_ms(ast_tvnow(), c->drain_start) > DRAIN_MAX_MS) {
			call_set_end(c, c->final_status, c->final_reason);
		}
	}
}

/* --- the application -------------------------------------------------------------------------- */

static void fill_str(char *dst, size_t len, const char *src)
{
	ast_copy_string(dst, S_OR(src, ""), len);
}

/* Dynamic variables (with ${VAR} substituted now) and overrides, as JSON for Python. */
static void session_fill_extra(struct convai_session *s, struct ast_channel *chan,
	struct convai_agent *a)
{
	RAII_VAR(struct ast_json *, extra, ast_json_object_create(), ast_json_unref);
	struct ast_json *vars = ast_json_object_create();
	struct ast_json *agent = ast_json_object_create();
	struct ast_variable *v;
	char *json;

	if (!extra || !vars || !agent) {
		ast_json_unref(vars);
		ast_json_unref(agent);
		return;
	}
	for (v = a->dynamic_variables; v; v = v->next) {
		char value[512];

		pbx_substitute_variables_helper(chan, v->value, value, sizeof(value) - 1);
		ast_json_object_set(vars, v->name, ast_json_string_create(value));
	}
	if (!ast_strlen_zero(a->first_message)) {
		ast_json_object_set(agent, "first_message", ast_json_string_create(a->first_message));
	}
	if (!ast_strlen_zero(a->language)) {
		ast_json_object_set(agent, "language", ast_json_string_create(a->language));
	}
	if (!ast_strlen_zero(a->prompt)) {
		ast_json_object_set(agent, "prompt",
			ast_json_pack("{s: s}", "prompt", a->prompt));
	}
	ast_json_object_set(extra, "dynamic_variables", vars);
	ast_json_object_set(extra, "agent", agent);
	if (!ast_strlen_zero(a->voice_id)) {
		ast_json_object_set(extra, "voice_id", ast_json_string_create(a->voice_id));
	}
	json = ast_json_dump_string(extra);
	if (json && strlen(json) < sizeof(s->extra_json)) {
		strcpy(s->extra_json, json);   /* length checked */
	} else {
		ast_log(LOG_WARNING, LOG_PREFIX "%s [%s]: dynamic variables and overrides are too long; "
			"not sent\n", ast_channel_name(chan), a->name);
	}
	ast_json_free(json);
}

static void session_fill(struct convai_session *s, struct ast_channel *chan,
	struct convai_agent *a)
{
	ast_channel_lock(chan);
	fill_str(s->channel, sizeof(s->channel), ast_channel_name(chan));
	fill_str(s->uniqueid, sizeof(s->uniqueid), ast_channel_uniqueid(chan));
	fill_str(s->exten, sizeof(s->exten), ast_channel_exten(chan));
	if (ast_channel_caller(chan)->id.number.valid) {
		fill_str(s->caller_number, sizeof(s->caller_number),
			ast_channel_caller(chan)->id.number.str);
	}
	if (ast_channel_caller(chan)->id.name.valid) {
		fill_str(s->caller_name, sizeof(s->caller_name), ast_channel_caller(chan)->id.name.str);
	}
	s->callid = ast_channel_callid(chan);
	ast_channel_unlock(chan);
	fill_str(s->agent, sizeof(s->agent), a->name);
	fill_str(s->agent_id, sizeof(s->agent_id), a->agent_id);
	fill_str(s->api_key, sizeof(s->api_key), a->api_key);
	fill_str(s->endpoint, sizeof(s->endpoint), a->endpoint);
	s->send_caller_number = a->send_caller_number;
	s->buffer_ms = a->buffer_ms;
	s->up_batch_frames = MAX(1, a->buffer_ms / 20);
	session_fill_extra(s, chan, a);
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
static void call_emit_stats(struct convai_call *c)
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
	call_emit_event(c, "ElevenLabsConvAIStats", ast_str_buffer(body));
}

static void call_set_result(struct convai_call *c)
{
	char duration[32];
	char body[256];

	pbx_builtin_setvar_helper(c->chan, "ELEVENLABS_STATUS", status_names[c->status]);
	pbx_builtin_setvar_helper(c->chan, "ELEVENLABS_END_REASON", c->reason);
	pbx_builtin_setvar_helper(c->chan, "ELEVENLABS_CONVERSATION_ID", c->conversation_id);
	snprintf(duration, sizeof(duration), "%.3f", ast_tvdiff_ms(ast_tvnow(), c->start) / 1000.0);
	snprintf(body, sizeof(body), "Status: %s\r\nReason: %s\r\nDuration: %s\r\n",
		status_names[c->status], c->reason, duration);
	call_emit_stats(c);
	call_emit_event(c, "ElevenLabsConvAIEnd", body);
	convai_metrics_call_ended(status_names[c->status],
		convai_stat_get(c->sess, CONVAI_STAT_INTERRUPTIONS),
		convai_stat_get(c->sess, CONVAI_STAT_UNDERRUNS), c->sess->hist[CONVAI_HIST_FIRST_FRAME]);
	if (c->status == CALL_FAILED) {
		ast_log(LOG_WARNING, LOG_PREFIX "%s [%s]: conversation %s with agent [%s] failed: %s "
			"after %s s\n", ast_channel_name(c->chan), c->agent->name,
			S_OR(c->conversation_id, "(none)"), c->agent->name, c->reason, duration);
	} else {
		ast_log(LOG_NOTICE, LOG_PREFIX "%s [%s]: conversation %s with agent [%s] ended: %s (%s) "
			"after %s s\n", ast_channel_name(c->chan), c->agent->name,
			S_OR(c->conversation_id, "(none)"), c->agent->name, status_names[c->status],
			c->reason, duration);
	}
}

/* The call never reached the agent: the result variables and an End event; the dialplan
 * goes on. */
static int fail_early(struct ast_channel *chan, const char *agent, const char *reason)
{
	char body[128];

	pbx_builtin_setvar_helper(chan, "ELEVENLABS_STATUS", "FAILED");
	pbx_builtin_setvar_helper(chan, "ELEVENLABS_END_REASON", reason);
	pbx_builtin_setvar_helper(chan, "ELEVENLABS_CONVERSATION_ID", "");
	snprintf(body, sizeof(body), "Status: FAILED\r\nReason: %s\r\nDuration: 0.000\r\n", reason);
	emit_event(chan, S_OR(agent, ""), "", "", "ElevenLabsConvAIEnd", body);
	convai_metrics_call_failed_early();
	return 0;
}

enum {
	OPT_CONTINUE = (1 << 0),
	OPT_HANGUP = (1 << 1),
};

AST_APP_OPTIONS(convai_opts, {
	AST_APP_OPTION('c', OPT_CONTINUE),
	AST_APP_OPTION('h', OPT_HANGUP),
});

static void call_run(struct convai_call *c)
{
	RAII_VAR(struct ast_format *, old_read, ao2_bump(ast_channel_readformat(c->chan)), ao2_cleanup);
	RAII_VAR(struct ast_format *, old_write, ao2_bump(ast_channel_writeformat(c->chan)), ao2_cleanup);

	AST_RWLIST_WRLOCK(&live_calls);
	AST_RWLIST_INSERT_TAIL(&live_calls, c, list);
	AST_RWLIST_UNLOCK(&live_calls);
	convai_metrics_call_started();

	session_submit(c->sess);
	call_loop(c);

	if (c->status == CALL_HANGUP || ast_check_hangup(c->chan)) {
		call_set_end(c, CALL_HANGUP, "caller_hangup");
	}
	/* Tell Python the call is over (a no-op if it already knows), then let go. */
	call_notify_python(c, CONVAI_CMD_HANGUP, "");
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

static int convai_exec(struct ast_channel *chan, const char *data)
{
	RAII_VAR(struct convai_config *, cfg, ao2_global_obj_ref(global_config), ao2_cleanup);
	struct ast_flags opts = { 0 };
	struct convai_call *c;
	int hangup, res;
	char *parse;
	AST_DECLARE_APP_ARGS(args,
		AST_APP_ARG(agent);
		AST_APP_ARG(options);
	);

	parse = ast_strdupa(S_OR(data, ""));
	AST_STANDARD_APP_ARGS(args, parse);
	if (ast_strlen_zero(args.agent)) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s: %s requires an agent: %s(agent[,options]); "
			"ELEVENLABS_STATUS=FAILED\n", ast_channel_name(chan), APP_NAME, APP_NAME);
		return fail_early(chan, "", "unknown_agent");
	}
	if (!ast_strlen_zero(args.options)) {
		ast_app_parse_options(convai_opts, &opts, NULL, args.options);
	}
	if (!cfg || !config_find_agent(cfg, args.agent)) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: agent [%s] %s; ELEVENLABS_STATUS=FAILED\n",
			ast_channel_name(chan), args.agent, args.agent,
			cfg && config_is_disabled(cfg, args.agent)
				? "is disabled: its section in " CONFIG_FILE " has errors (see the last (re)load)"
				: "is not configured in " CONFIG_FILE);
		return fail_early(chan, args.agent, "unknown_agent");
	}
	if (!runtime_up || convai_host_stopping(&host)) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: the Python runtime is not running; "
			"ELEVENLABS_STATUS=FAILED\n", ast_channel_name(chan), args.agent);
		return fail_early(chan, args.agent, "runtime_unavailable");
	}
	if (ast_channel_state(chan) != AST_STATE_UP && ast_answer(chan)) {
		return -1;
	}
	c = ast_calloc(1, sizeof(*c));
	if (!c || !(c->sess = session_new())) {
		ast_free(c);
		return fail_early(chan, args.agent, "runtime_unavailable");
	}
	c->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (c->tfd < 0) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: cannot create a timer: %s\n",
			ast_channel_name(chan), args.agent, strerror(errno));
		session_release(c->sess);
		session_release(c->sess);   /* Python's reference too: it never saw the session */
		ast_free(c);
		return fail_early(chan, args.agent, "runtime_unavailable");
	}
	c->chan = chan;
	c->agent = ao2_bump(config_find_agent(cfg, args.agent));
	c->start = ast_tvnow();
	session_fill(c->sess, chan, c->agent);
	ast_verb(3, LOG_PREFIX "%s [%s]: connecting to agent [%s] (agent ID %s)\n",
		ast_channel_name(chan), c->agent->name, c->agent->name, c->agent->agent_id);

	call_run(c);
	call_set_result(c);

	hangup = c->agent->hangup_on_end;
	if (ast_test_flag(&opts, OPT_CONTINUE)) {
		hangup = 0;
	} else if (ast_test_flag(&opts, OPT_HANGUP)) {
		hangup = 1;
	}
	res = c->status == CALL_HANGUP || (c->status == CALL_COMPLETED && hangup) ? -1 : 0;

	if (session_withdraw(c->sess)) {
		session_release(c->sess);   /* Python's reference: it never took the session */
	}
	session_release(c->sess);
	close(c->tfd);
	ao2_ref(c->agent, -1);
	ast_free(c);
	return res;
}

/* --- CLI ------------------------------------------------------------------------------------------ */

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
	atomic_store(&host.debug, !strcasecmp(a->argv[2], "on"));
	eventfd_write(host.wake_efd, 1);   /* Python re-reads the flag */
	ast_cli(a->fd, "ElevenLabs debug %s\n", atomic_load(&host.debug) ? "enabled" : "disabled");
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
	if (load_config(0)) {
		ast_cli(a->fd, "Reload of %s failed; see the log. The running configuration stays.\n",
			CONFIG_FILE);
		return CLI_FAILURE;
	}
	cfg = ao2_global_obj_ref(global_config);
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
	cfg = ao2_global_obj_ref(global_config);
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
		atomic_load(&host.debug) ? "on" : "off", S_OR(convai_pyhost_version(), "not running"));
	return CLI_SUCCESS;
}

static void cli_show_call_row(int fd, struct convai_call *c)
{
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
}

static char *cli_show_calls(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct convai_call *c;
	int n = 0;

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
	AST_RWLIST_RDLOCK(&live_calls);
	AST_RWLIST_TRAVERSE(&live_calls, c, list) {
		cli_show_call_row(a->fd, c);
		n++;
	}
	AST_RWLIST_UNLOCK(&live_calls);
	ast_cli(a->fd, "%d active conversation(s)\n", n);
	return CLI_SUCCESS;
}

static char *complete_call_channel(const char *word, int state)
{
	struct convai_call *c;
	size_t len = strlen(word);
	int which = 0;
	char *ret = NULL;

	AST_RWLIST_RDLOCK(&live_calls);
	AST_RWLIST_TRAVERSE(&live_calls, c, list) {
		if (!strncasecmp(word, ast_channel_name(c->chan), len) && ++which > state) {
			ret = ast_strdup(ast_channel_name(c->chan));
			break;
		}
	}
	AST_RWLIST_UNLOCK(&live_calls);
	return ret;
}

static void cli_show_call_detail(int fd, struct convai_call *c)
{
	struct convai_session *s = c->sess;

	ast_cli(fd, "Channel:          %s\n", ast_channel_name(c->chan));
	ast_cli(fd, "Uniqueid:         %s\n", ast_channel_uniqueid(c->chan));
	ast_cli(fd, "Agent:            %s (agent ID %s)\n", c->agent->name, c->agent->agent_id);
	ast_cli(fd, "Conversation ID:  %s\n", S_OR(c->conversation_id, "(connecting)"));
	ast_cli(fd, "Duration:         %.1f s (max_duration %d s)\n",
		ast_tvdiff_ms(ast_tvnow(), c->start) / 1000.0, c->agent->max_duration);
	ast_cli(fd, "Audio in/out:     %s / %s\n", S_OR(c->in_format, "-"), S_OR(c->out_format, "-"));
	ast_cli(fd, "State:            %s%s\n", c->playing ? "agent speaking" : "listening",
		c->draining ? ", ending (playing out)" : "");
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
	ast_cli(fd, "Bytes up/down:    %" PRIu64 " / %" PRIu64 "\n",
		convai_stat_get(s, CONVAI_STAT_BYTES_UP), convai_stat_get(s, CONVAI_STAT_BYTES_DOWN));
}

static char *cli_show_call(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct convai_call *c;
	int found = 0;

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
	AST_RWLIST_RDLOCK(&live_calls);
	AST_RWLIST_TRAVERSE(&live_calls, c, list) {
		if (!strcasecmp(ast_channel_name(c->chan), a->argv[3])) {
			cli_show_call_detail(a->fd, c);
			found = 1;
			break;
		}
	}
	AST_RWLIST_UNLOCK(&live_calls);
	if (!found) {
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
	atomic_store(&host.stall_ms, ms);
	eventfd_write(host.wake_efd, 1);
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

/* --- module ----------------------------------------------------------------------------------------- */

static int stop_runtime(void)
{
	if (!runtime_up) {
		return 0;
	}
	atomic_store(&host.stop, 1);
	eventfd_write(host.wake_efd, 1);
	if (convai_pyhost_join(3000)) {
		ast_log(LOG_WARNING, LOG_PREFIX "the Python runtime did not stop within 3 s; leaving it\n");
		return -1;
	}
	runtime_up = 0;
	return 0;
}

static int unload_module(void)
{
	convai_metrics_unregister();
	ast_cli_unregister_multiple(convai_cli, ARRAY_LEN(convai_cli));
	ast_unregister_application(APP_NAME);
	stop_runtime();
	ao2_global_obj_release(global_config);
	/* The wake fd stays open if Python is still running: it may still poll it. */
	if (!runtime_up && host.wake_efd >= 0) {
		close(host.wake_efd);
		host.wake_efd = -1;
	}
	ast_mutex_destroy(&pending_lock);
	return 0;
}

static int start_runtime(void)
{
	RAII_VAR(struct convai_config *, cfg, ao2_global_obj_ref(global_config), ao2_cleanup);
	char err[512];
	struct timeval t0 = ast_tvnow();

	host.magic = CONVAI_HOST_MAGIC;
	host.abi_version = CONVAI_ABI_VERSION;
	host.log = python_log;
	host.take_session = session_take;
	host.release_session = session_release;
	host.wake_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (host.wake_efd < 0) {
		ast_log(LOG_ERROR, LOG_PREFIX "cannot create an eventfd: %s\n", strerror(errno));
		return -1;
	}
	if (convai_pyhost_start(&host, cfg->python_path, 30000, err, sizeof(err))) {
		ast_log(LOG_ERROR, LOG_PREFIX "ElevenLabsConvAI not loaded: the Python runtime is "
			"unavailable (python_path %s): %s\n", cfg->python_path, err);
		close(host.wake_efd);
		host.wake_efd = -1;
		return -1;
	}
	runtime_up = 1;
	ast_verb(2, LOG_PREFIX "Python %s runtime up in %" PRIi64 " ms\n",
		convai_pyhost_version(), ast_tvdiff_ms(ast_tvnow(), t0));
	return 0;
}

static int load_module(void)
{
	ast_mutex_init(&pending_lock);
	host.wake_efd = -1;
	if (load_config(0) || start_runtime()) {
		ao2_global_obj_release(global_config);
		ast_mutex_destroy(&pending_lock);
		return AST_MODULE_LOAD_DECLINE;
	}
	if (ast_register_application_xml(APP_NAME, convai_exec)
		|| ast_cli_register_multiple(convai_cli, ARRAY_LEN(convai_cli))) {
		unload_module();
		return AST_MODULE_LOAD_DECLINE;
	}
	if (convai_metrics_register()) {
		ast_verb(2, LOG_PREFIX "Prometheus metrics registered\n");
	}
	/* An embedded interpreter cannot be started twice: stay loaded until shutdown. */
	ast_module_shutdown_ref(AST_MODULE_SELF);
	return AST_MODULE_LOAD_SUCCESS;
}

static int reload_module(void)
{
	return load_config(1) ? -1 : 0;
}

AST_MODULE_INFO(ASTERISK_GPL_KEY, AST_MODFLAG_LOAD_ORDER, "ElevenLabs Conversational AI",
	.support_level = AST_MODULE_SUPPORT_EXTENDED,
	.load = load_module,
	.unload = unload_module,
	.reload = reload_module,
	.load_pri = AST_MODPRI_DEFAULT,
	.optional_modules = "res_prometheus",
);
