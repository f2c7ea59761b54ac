/*
 * app_elevenlabs_convai -- the Asterisk side of the runtime: the host block, session memory.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * The protocol runs in Python (python/convai) on the embedded runtime started by pyhost.c; the
 * two meet only through the host block, the session blocks, the rings and the eventfds declared
 * in convai_shared.h. No Asterisk thread ever takes the GIL.
 */

#include "asterisk.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include "asterisk/channel.h"
#include "asterisk/json.h"
#include "asterisk/lock.h"
#include "asterisk/logger.h"
#include "asterisk/pbx.h"
#include "asterisk/strings.h"
#include "asterisk/utils.h"

#include "convai_private.h"
#include "pyhost.h"

static struct convai_host host;

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
	if (s->down_efd >= 0) {
		close(s->down_efd);
	}
	ast_free(s->up);
	ast_free(s->down);
	ast_free(s->to_c);
	ast_free(s->to_py);
	s->magic = 0;   /* so a late use is more likely to show as a bad magic than as garbage */
	ast_free(s);
}

/* Called by the app thread and, through host.release_session, by Python. */
void convai_session_release(struct convai_session *s)
{
	if (!s) {
		return;
	}
	if (s->magic != CONVAI_SESSION_MAGIC) {
		ast_log(LOG_ERROR, LOG_PREFIX "session %p released with a bad magic %#x; leaked\n",
			(void *) s, s->magic);
		return;
	}
	if (atomic_fetch_sub(&s->refs, 1) == 1) {
		session_free(s);
	}
}

/* Up ring slots for a call sending \a buffer_ms chunks: two chunks and at least
 * CONVAI_UP_SLOTS_MIN (convai_shared.h), a power of two. */
static uint32_t up_ring_slots(int buffer_ms)
{
	uint32_t want = MAX(CONVAI_UP_SLOTS_MIN, 2u * (uint32_t) MAX(1, buffer_ms / 20));
	uint32_t slots = CONVAI_UP_SLOTS_MIN;

	while (slots < want) {
		slots <<= 1;
	}
	return slots;
}

static struct convai_session *session_alloc(int buffer_ms)
{
	struct convai_session *s = ast_calloc(1, sizeof(*s));

	if (!s) {
		return NULL;
	}
	s->magic = CONVAI_SESSION_MAGIC;
	s->id = atomic_fetch_add(&next_session_id, 1) + 1;
	atomic_init(&s->refs, 2);
	s->down_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	s->up = ring_new(up_ring_slots(buffer_ms), CONVAI_FRAME_MAX);
	s->down = ring_new(CONVAI_DOWN_SLOTS, CONVAI_FRAME_MAX);
	s->to_c = ring_new(CONVAI_CMD_SLOTS, CONVAI_CMD_BYTES);
	s->to_py = ring_new(CONVAI_CMD_SLOTS, CONVAI_CMD_BYTES);
	if (s->down_efd < 0 || !s->up || !s->down || !s->to_c || !s->to_py) {
		session_free(s);
		return NULL;
	}
	return s;
}

void convai_session_notify(struct convai_session *s)
{
	if (convai_session_mark_ready(&host, s)) {
		eventfd_write(host.wake_efd, 1);
	}
}

void convai_session_submit(struct convai_session *s)
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
int convai_session_withdraw(struct convai_session *s)
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

static void fill_str(char *dst, size_t len, const char *src)
{
	ast_copy_string(dst, S_OR(src, ""), len);
}

/* The agent's client tools and the names of its transfer targets, for convai/tools.py.
 * Where a target leads (its dialplan location or dial string) never leaves C. */
static void session_fill_tools(struct ast_json *extra, struct convai_agent *a)
{
	struct ast_json *tools = ast_json_array_create();
	struct ast_json *targets = ast_json_array_create();
	int i;

	for (i = 0; tools && i < a->n_tools; i++) {
		const struct convai_tool *t = &a->tools[i];
		struct ast_json *vars = ast_json_array_create();
		char *names = ast_strdupa(t->variables), *name;

		while (vars && (name = strsep(&names, "|"))) {
			if (!ast_strlen_zero(ast_strip(name))) {
				ast_json_array_append(vars, ast_json_string_create(ast_strip(name)));
			}
		}
		ast_json_array_append(tools, ast_json_pack("{s: s, s: s, s: i, s: s, s: o}",
			"name", t->name, "action", convai_tool_action_name(t->action),
			"timeout", t->timeout, "param", t->param, "variables", vars ?: ast_json_array_create()));
	}
	for (i = 0; targets && i < a->n_targets; i++) {
		const struct convai_target *t = &a->targets[i];

		ast_json_array_append(targets, ast_json_pack("{s: s, s: s, s: i}", "name", t->name,
			"mode", t->mode == CONVAI_XFER_BLIND ? "blind" : "warm", "timeout", t->timeout));
	}
	ast_json_object_set(extra, "tools", tools ?: ast_json_array_create());
	ast_json_object_set(extra, "transfer_targets", targets ?: ast_json_array_create());
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
	session_fill_tools(extra, a);
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

/* How long the interpreter may take to start: 30 s, or CONVAI_PYTHON_START_MS from Asterisk's
 * environment (under valgrind CPython starts 20-50 times slower: scripts/memcheck.sh). */
static int start_timeout_ms(void)
{
	const char *env = getenv("CONVAI_PYTHON_START_MS");
	int ms;

	return env && sscanf(env, "%d", &ms) == 1 && ms > 0 ? ms : 30000;
}

int convai_runtime_start(const char *python_path)
{
	char err[512];
	struct timeval t0 = ast_tvnow();

	host.magic = CONVAI_HOST_MAGIC;
	host.abi_version = CONVAI_ABI_VERSION;
	host.log = python_log;
	host.take_session = session_take;
	host.release_session = convai_session_release;
	host.wake_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (host.wake_efd < 0) {
		ast_log(LOG_ERROR, LOG_PREFIX "cannot create an eventfd: %s\n", strerror(errno));
		return -1;
	}
	if (convai_pyhost_start(&host, python_path, start_timeout_ms(), err, sizeof(err))) {
		ast_log(LOG_ERROR, LOG_PREFIX "ElevenLabsConvAI not loaded: the Python runtime is "
			"unavailable (python_path %s): %s\n", python_path, err);
		close(host.wake_efd);
		host.wake_efd = -1;
		return -1;
	}
	runtime_up = 1;
	ast_verb(2, LOG_PREFIX "Python %s runtime up in %" PRIi64 " ms\n",
		convai_pyhost_version(), ast_tvdiff_ms(ast_tvnow(), t0));
	return 0;
}

struct convai_session *convai_session_new(struct ast_channel *chan, struct convai_agent *a)
{
	struct convai_session *s = session_alloc(a->buffer_ms);

	if (s) {
		session_fill(s, chan, a);
	}
	return s;
}

void convai_runtime_init(void)
{
	ast_mutex_init(&pending_lock);
	host.wake_efd = -1;
}

void convai_runtime_cleanup(void)
{
	stop_runtime();
	/* The wake fd stays open if Python is still running: it may still poll it. */
	if (!runtime_up && host.wake_efd >= 0) {
		close(host.wake_efd);
		host.wake_efd = -1;
	}
	ast_mutex_destroy(&pending_lock);
}

int convai_runtime_available(void)
{
	return runtime_up && !convai_host_stopping(&host);
}

void convai_runtime_set_debug(int on)
{
	atomic_store(&host.debug, on);
	if (host.wake_efd >= 0) {
		eventfd_write(host.wake_efd, 1);   /* Python re-reads the flag */
	}
}

int convai_runtime_debug(void)
{
	return atomic_load(&host.debug);
}

void convai_runtime_stall(int ms)
{
	atomic_store(&host.stall_ms, ms);
	eventfd_write(host.wake_efd, 1);
}
