/*
 * app_elevenlabs_convai -- elevenlabs.conf: parse, validate, the snapshot, reload.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * The configuration is one immutable ao2 snapshot, replaced whole by a reload: a call keeps
 * the agent it started with. Every error names file, line, section and key.
 */

#include "asterisk.h"

#include <sys/stat.h>

#include "asterisk/astobj2.h"
#include "asterisk/config.h"
#include "asterisk/logger.h"
#include "asterisk/paths.h"
#include "asterisk/strings.h"
#include "asterisk/utils.h"

#include "convai_private.h"

#ifndef CONVAI_DEFAULT_PYTHON_DIR
#define CONVAI_DEFAULT_PYTHON_DIR "/usr/lib/asterisk-elevenlabs-convai/python"
#endif

#define BUFFER_MS_DEFAULT 240
#define MAX_DURATION_DEFAULT 3600

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

int convai_config_is_disabled(struct convai_config *cfg, const char *name)
{
	struct ast_variable *v;

	for (v = cfg->disabled; v; v = v->next) {
		if (!strcasecmp(v->name, name)) {
			return 1;
		}
	}
	return 0;
}

struct convai_agent *convai_config_find_agent(struct convai_config *cfg, const char *name)
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

/* --- client tools and transfer targets ------------------------------------------------------ */

static const char *tool_actions[] = {
	[CONVAI_TOOL_TRANSFER] = "transfer", [CONVAI_TOOL_HANGUP] = "hangup",
	[CONVAI_TOOL_DTMF] = "dtmf", [CONVAI_TOOL_SET_VARIABLE] = "set_variable",
	[CONVAI_TOOL_AMI] = "ami",
};

const char *convai_tool_action_name(enum convai_tool_action action)
{
	return tool_actions[action];
}

const struct convai_target *convai_agent_target(const struct convai_agent *a, const char *name)
{
	int i;

	for (i = 0; i < a->n_targets; i++) {
		if (!strcasecmp(a->targets[i].name, name)) {
			return &a->targets[i];
		}
	}
	return NULL;
}

/* Letters, digits and the characters in extra; at least one, shorter than max. */
static int is_word(const char *s, const char *extra, size_t max)
{
	const char *p;

	for (p = s; *p; p++) {
		if (!isalnum((unsigned char) *p) && !strchr(extra, *p)) {
			return 0;
		}
	}
	return p != s && (size_t) (p - s) < max;
}

/* Printable, without spaces or the characters in bad: safe in a dial string or a goto. */
static int is_token(const char *s, const char *bad, size_t max)
{
	const char *p;

	for (p = s; *p; p++) {
		if ((unsigned char) *p <= ' ' || (unsigned char) *p == 0x7f || strchr(bad, *p)) {
			return 0;
		}
	}
	return p != s && (size_t) (p - s) < max;
}

/* "name: rest" -> name (checked) and rest, both stripped; -1 with the error logged. */
static int split_named(struct ast_variable *v, const char *cat, char *buf, size_t max,
	char **name, char **rest)
{
	char *colon = strchr(buf, ':');

	if (!colon) {
		CONF_ERR(v, cat, "'%s' is not 'name: ...'", v->value);
		return -1;
	}
	*colon = '\0';
	*name = ast_strip(buf);
	*rest = ast_strip(colon + 1);
	if (!is_word(*name, "_-", max)) {
		CONF_ERR(v, cat, "'%s' is not a name of letters, digits, _ and - (at most %zu)",
			*name, max - 1);
		return -1;
	}
	return 0;
}

static int tool_option(struct ast_variable *v, const char *cat, struct convai_tool *t,
	char *opt)
{
	char *eq = strchr(opt, '=');
	char *key = opt, *val;

	if (!eq) {
		CONF_ERR(v, cat, "tool %s: option '%s' is not key=value", t->name, opt);
		return -1;
	}
	*eq = '\0';
	key = ast_strip(key);
	val = ast_strip(eq + 1);
	if (!strcasecmp(key, "timeout") && t->action == CONVAI_TOOL_AMI) {
		if (ast_parse_arg(val, PARSE_INT32 | PARSE_IN_RANGE, &t->timeout, 1, 120)) {
			CONF_ERR(v, cat, "tool %s: timeout '%s' is not 1 to 120 seconds", t->name, val);
			return -1;
		}
	} else if (!strcasecmp(key, "param")
		&& (t->action == CONVAI_TOOL_TRANSFER || t->action == CONVAI_TOOL_DTMF)) {
		if (!is_word(val, "_", sizeof(t->param))) {
			CONF_ERR(v, cat, "tool %s: param '%s' is not a parameter name", t->name, val);
			return -1;
		}
		ast_copy_string(t->param, val, sizeof(t->param));
	} else if (!strcasecmp(key, "variables") && t->action == CONVAI_TOOL_SET_VARIABLE) {
		char *names = ast_strdupa(val), *name;

		while ((name = strsep(&names, "|"))) {
			name = ast_strip(name);
			if (!isalpha((unsigned char) *name) || !is_word(name, "_", 41)) {
				CONF_ERR(v, cat, "tool %s: variable '%s' is not a name of letters, digits and "
					"_ (at most 40)", t->name, name);
				return -1;
			}
		}
		if (strlen(val) >= sizeof(t->variables)) {
			CONF_ERR(v, cat, "tool %s: variables are longer than %zu characters", t->name,
				sizeof(t->variables) - 1);
			return -1;
		}
		ast_copy_string(t->variables, val, sizeof(t->variables));
	} else {
		CONF_ERR(v, cat, "tool %s: option '%s' does not apply to action %s", t->name, key,
			tool_actions[t->action]);
		return -1;
	}
	return 0;
}

/* tool = <name>: <action>[, option=value ...] */
static int parse_tool(struct convai_agent *a, struct ast_variable *v, const char *cat)
{
	char *buf = ast_strdupa(v->value), *name, *rest, *action, *opt;
	struct convai_tool *t;
	size_t i;
	int j;

	if (split_named(v, cat, buf, sizeof(t->name), &name, &rest)) {
		return -1;
	}
	for (j = 0; j < a->n_tools; j++) {
		if (!strcmp(a->tools[j].name, name)) {
			CONF_ERR(v, cat, "tool %s is configured twice", name);
			return -1;
		}
	}
	if (a->n_tools == CONVAI_MAX_TOOLS) {
		CONF_ERR(v, cat, "more than %d tools", CONVAI_MAX_TOOLS);
		return -1;
	}
	t = &a->tools[a->n_tools];
	memset(t, 0, sizeof(*t));
	ast_copy_string(t->name, name, sizeof(t->name));
	action = ast_strip(strsep(&rest, ","));
	for (i = 0; i < ARRAY_LEN(tool_actions); i++) {
		if (!strcasecmp(action, tool_actions[i])) {
			break;
		}
	}
	if (i == ARRAY_LEN(tool_actions)) {
		CONF_ERR(v, cat, "tool %s: '%s' is not an action (transfer, hangup, dtmf, set_variable, "
			"ami)", name, action);
		return -1;
	}
	t->action = i;
	t->timeout = 20;   /* ElevenLabs' own default response_timeout_secs */
	ast_copy_string(t->param, i == CONVAI_TOOL_DTMF ? "digits" : "destination", sizeof(t->param));
	while ((opt = strsep(&rest, ","))) {
		if (tool_option(v, cat, t, opt)) {
			return -1;
		}
	}
	if (t->action == CONVAI_TOOL_SET_VARIABLE && ast_strlen_zero(t->variables)) {
		CONF_ERR(v, cat, "tool %s: set_variable needs variables=name|name...", name);
		return -1;
	}
	a->n_tools++;
	return 0;
}

static int target_option(struct ast_variable *v, const char *cat, struct convai_target *t,
	char *opt)
{
	char *eq = strchr(opt, '=');
	char *key = opt, *val;

	if (!eq) {
		CONF_ERR(v, cat, "transfer target %s: '%s' is not key=value", t->name, opt);
		return -1;
	}
	*eq = '\0';
	key = ast_strip(key);
	val = ast_strip(eq + 1);
	if (!strcasecmp(key, "refer") && t->mode == CONVAI_XFER_BLIND) {
		if (strncasecmp(val, "sip:", 4) && strncasecmp(val, "sips:", 5)) {
			CONF_ERR(v, cat, "transfer target %s: refer '%s' is not a sip: URI", t->name, val);
			return -1;
		}
		if (!is_token(val, "\"<>", sizeof(t->refer))) {
			CONF_ERR(v, cat, "transfer target %s: refer '%s' has spaces or quotes", t->name, val);
			return -1;
		}
		ast_copy_string(t->refer, val, sizeof(t->refer));
	} else if (!strcasecmp(key, "timeout") && t->mode == CONVAI_XFER_WARM) {
		if (ast_parse_arg(val, PARSE_INT32 | PARSE_IN_RANGE, &t->timeout, 5, 300)) {
			CONF_ERR(v, cat, "transfer target %s: timeout '%s' is not 5 to 300 seconds", t->name,
				val);
			return -1;
		}
	} else if (!strcasecmp(key, "whisper") && t->mode == CONVAI_XFER_WARM) {
		if (!is_word(val, "_-/.", sizeof(t->whisper)) || strstr(val, "..")) {
			CONF_ERR(v, cat, "transfer target %s: whisper '%s' is not a sound file name", t->name,
				val);
			return -1;
		}
		ast_copy_string(t->whisper, val, sizeof(t->whisper));
	} else {
		CONF_ERR(v, cat, "transfer target %s: option '%s' does not apply to a %s transfer",
			t->name, key, t->mode == CONVAI_XFER_BLIND ? "blind" : "warm");
		return -1;
	}
	return 0;
}

/* blind, context,exten,priority: each part a plain token (a dialplan name or a label) */
static int target_location(struct ast_variable *v, const char *cat, struct convai_target *t,
	char **rest)
{
	const char *what[] = { "context", "extension", "priority" };
	char *part[3];
	int i;

	for (i = 0; i < 3; i++) {
		part[i] = *rest ? ast_strip(strsep(rest, ",")) : NULL;
		if (ast_strlen_zero(part[i]) || !is_token(part[i], ",;|()[]$\"'\\", 80)) {
			CONF_ERR(v, cat, "transfer target %s: blind needs context,extension,priority; the "
				"%s is missing or has spaces or special characters", t->name, what[i]);
			return -1;
		}
	}
	snprintf(t->location, sizeof(t->location), "%s,%s,%s", part[0], part[1], part[2]);
	return 0;
}

/* transfer_target = <name>: blind, <context>,<exten>,<priority>[, refer=<sip URI>]
 * transfer_target = <name>: warm, <Tech/resource>[, timeout=<s>][, whisper=<sound>] */
static int parse_target(struct convai_agent *a, struct ast_variable *v, const char *cat)
{
	char *buf = ast_strdupa(v->value), *name, *rest, *mode, *opt;
	struct convai_target *t;

	if (split_named(v, cat, buf, sizeof(t->name), &name, &rest)) {
		return -1;
	}
	if (convai_agent_target(a, name)) {
		CONF_ERR(v, cat, "transfer target %s is configured twice", name);
		return -1;
	}
	if (a->n_targets == CONVAI_MAX_TARGETS) {
		CONF_ERR(v, cat, "more than %d transfer targets", CONVAI_MAX_TARGETS);
		return -1;
	}
	t = &a->targets[a->n_targets];
	memset(t, 0, sizeof(*t));
	ast_copy_string(t->name, name, sizeof(t->name));
	t->timeout = 25;
	mode = ast_strip(strsep(&rest, ","));
	if (!strcasecmp(mode, "blind")) {
		t->mode = CONVAI_XFER_BLIND;
		if (target_location(v, cat, t, &rest)) {
			return -1;
		}
	} else if (!strcasecmp(mode, "warm")) {
		char *dial = rest ? ast_strip(strsep(&rest, ",")) : NULL;
		char *slash = dial ? strchr(dial, '/') : NULL;

		t->mode = CONVAI_XFER_WARM;
		if (!slash || slash == dial || !slash[1] || !is_token(dial, "&,;|()$\"'\\",
				sizeof(t->dial))) {
			CONF_ERR(v, cat, "transfer target %s: warm needs one dial string Tech/resource "
				"(no spaces, & or special characters)", name);
			return -1;
		}
		ast_copy_string(t->dial, dial, sizeof(t->dial));
	} else {
		CONF_ERR(v, cat, "transfer target %s: '%s' is neither blind nor warm", name, mode);
		return -1;
	}
	while ((opt = strsep(&rest, ","))) {
		if (target_option(v, cat, t, opt)) {
			return -1;
		}
	}
	a->n_targets++;
	return 0;
}

static int parse_endpoint(struct convai_agent *a, struct ast_variable *v, const char *cat)
{
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
}

static int parse_send_caller(struct convai_agent *a, struct ast_variable *v, const char *cat)
{
	return parse_bool(v, cat, &a->send_caller_number);
}

static int parse_buffer_ms(struct convai_agent *a, struct ast_variable *v, const char *cat)
{
	if (parse_int(v, cat, CONVAI_BUFFER_MS_MIN, CONVAI_BUFFER_MS_MAX, &a->buffer_ms)) {
		return -1;
	}
	if (a->buffer_ms % 20) {
		CONF_ERR(v, cat, "%d is not a multiple of 20 ms", a->buffer_ms);
		return -1;
	}
	return 0;
}

static int parse_on_end(struct convai_agent *a, struct ast_variable *v, const char *cat)
{
	if (strcasecmp(v->value, "hangup") && strcasecmp(v->value, "continue")) {
		CONF_ERR(v, cat, "'%s' is neither 'hangup' nor 'continue'", v->value);
		return -1;
	}
	a->hangup_on_end = !strcasecmp(v->value, "hangup");
	return 0;
}

static int parse_max_duration(struct convai_agent *a, struct ast_variable *v, const char *cat)
{
	return parse_int(v, cat, 0, 86400, &a->max_duration);
}

static int parse_dynamic_variable(struct convai_agent *a, struct ast_variable *v,
	const char *cat)
{
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

/* A key with a parser of its own. */
#define FN_KEY(key, fn) { key, fn, 0, 0 }
/* A string key: copied into the agent's field at that offset, of that size. */
#define STR_KEY(key, field) \
	{ key, NULL, offsetof(struct convai_agent, field), sizeof(((struct convai_agent *) 0)->field) }

/* Every key of an agent's section: a parser, or a string field. */
static const struct {
	const char *key;
	int (*parse)(struct convai_agent *a, struct ast_variable *v, const char *cat);
	size_t offset;
	size_t size;
} agent_keys[] = {
	STR_KEY("elevenlabs_api_key", api_key),
	FN_KEY("elevenlabs_get_signed_url_endpoint", parse_endpoint),
	STR_KEY("elevenlabs_agent_id", agent_id),
	FN_KEY("elevenlabs_send_caller_number", parse_send_caller),
	FN_KEY("elevenlabs_audio_frames_buffer_ms", parse_buffer_ms),
	FN_KEY("on_end", parse_on_end),
	FN_KEY("max_duration", parse_max_duration),
	STR_KEY("first_message", first_message),
	STR_KEY("language", language),
	STR_KEY("voice_id", voice_id),
	STR_KEY("prompt", prompt),
	FN_KEY("dynamic_variable", parse_dynamic_variable),
	FN_KEY("tool", parse_tool),
	FN_KEY("transfer_target", parse_target),
};

static int parse_agent_key(struct convai_agent *a, struct ast_variable *v, const char *cat)
{
	size_t i;

	for (i = 0; i < ARRAY_LEN(agent_keys); i++) {
		if (strcasecmp(v->name, agent_keys[i].key)) {
			continue;
		}
		return agent_keys[i].parse ? agent_keys[i].parse(a, v, cat)
			: copy_str(v, cat, (char *) a + agent_keys[i].offset, agent_keys[i].size);
	}
	CONF_WARN(v, cat, "unknown key, ignored");
	return 0;
}

/* The line of "[cat]" in file (relative to the config dir), or 0: Asterisk's config API does
 * not say where a section starts, and an error about a missing key should name it. With
 * prefix, "[cat..." is enough (Asterisk cuts section names to 79 characters). */
static int section_line(const char *file, const char *cat, int prefix)
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
			found = *p == '[' && !strncasecmp(p + 1, cat, n) && (prefix || p[1 + n] == ']');
		}
		at_start = strchr(buf, '\n') != NULL;
	}
	fclose(f);
	return found ? lineno : 0;
}

/* A transfer tool with nothing to transfer to refuses every call: say so once, at load. */
static void warn_unusable_tools(struct convai_agent *a, const char *file, const char *cat)
{
	int i;

	for (i = 0; i < a->n_tools; i++) {
		if (a->tools[i].action == CONVAI_TOOL_TRANSFER && !a->n_targets) {
			ast_log(LOG_WARNING, LOG_PREFIX "%s: [%s] tool: %s transfers, but the section has no "
				"transfer_target; every transfer will be refused\n", file, cat, a->tools[i].name);
		}
	}
}

/* A section name too long for an agent: say so, cut at a character boundary. */
static void log_long_section(const char *cat, size_t max)
{
	int line = section_line(CONFIG_FILE, cat, 1);
	int cut = 32;

	while (cut > 0 && ((unsigned char) cat[cut] & 0xC0) == 0x80) {
		cut--;   /* not inside a UTF-8 character */
	}
	if (line) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s line %d: [%.*s...]: the section name is longer "
			"than %zu characters\n", CONFIG_FILE, line, cut, cat, max);
	} else {   /* in an #include'd file */
		ast_log(LOG_ERROR, LOG_PREFIX "%s: [%.*s...]: the section name is longer than %zu "
			"characters\n", CONFIG_FILE, cut, cat, max);
	}
}

/* The keys an agent cannot do without. \retval -1 one is missing (logged with its line) */
static int check_required(const struct convai_agent *a, const char *file, const char *cat)
{
	const struct { const char *key; const char *value; } required[] = {
		{ "elevenlabs_api_key", a->api_key },
		{ "elevenlabs_get_signed_url_endpoint", a->endpoint },
		{ "elevenlabs_agent_id", a->agent_id },
	};
	int bad = 0;
	size_t i;

	for (i = 0; i < ARRAY_LEN(required); i++) {
		int line;

		if (!ast_strlen_zero(required[i].value)) {
			continue;
		}
		line = section_line(file, cat, 0);
		if (line) {
			ast_log(LOG_ERROR, LOG_PREFIX "%s line %d: [%s] %s: missing or empty; it is "
				"required\n", file, line, cat, required[i].key);
		} else {
			ast_log(LOG_ERROR, LOG_PREFIX "%s: [%s] %s: missing or empty; it is required\n",
				file, cat, required[i].key);
		}
		bad = -1;
	}
	return bad;
}

static struct convai_agent *parse_agent(struct ast_config *raw, const char *cat)
{
	RAII_VAR(struct convai_agent *, a, ao2_alloc_options(sizeof(*a), agent_destroy,
		AO2_ALLOC_OPT_LOCK_NOLOCK), ao2_cleanup);
	struct ast_variable *v;
	const char *file = CONFIG_FILE;
	int bad = 0;

	if (!a) {
		return NULL;
	}
	if (strlen(cat) >= sizeof(a->name)) {
		log_long_section(cat, sizeof(a->name) - 1);
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
	if (check_required(a, file, cat) || bad) {
		return NULL;
	}
	warn_unusable_tools(a, file, cat);
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

	if (convai_config_find_agent(cfg, cat)) {
		ast_log(LOG_WARNING, LOG_PREFIX "%s: [%s] appears more than once; only the first "
			"is used\n", CONFIG_FILE, cat);
		return;
	}
	a = parse_agent(raw, cat);
	if (!a) {
		cfg->problems++;
	}
	if (!a && old && (a = convai_config_find_agent(old, cat))) {
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

int convai_config_load(int reload)
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
		convai_runtime_set_debug(cfg->debug);
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

struct convai_config *convai_config_get(void)
{
	return ao2_global_obj_ref(global_config);
}

void convai_config_release(void)
{
	ao2_global_obj_release(global_config);
}
