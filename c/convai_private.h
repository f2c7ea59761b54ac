/*
 * app_elevenlabs_convai -- the API between the module's Asterisk-side files.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * As res/res_pjsip/include/res_pjsip_private.h: one file per concern, and this header says what
 * each offers the others. Include it after "asterisk.h". Nothing here is exported from the .so.
 *
 *   app_elevenlabs_convai.c  glue: XML docs, the application, load/unload/reload
 *   config.c                 elevenlabs.conf: parse, validate, the ao2 snapshot, reload
 *   runtime.c                the host block, session memory shared with Python, start/stop
 *   call.c                   one call: the media loop, agent audio out, caller audio up, the end
 *   events.c                 AMI events and the per-call statistics
 *   cli.c                    the `elevenlabs ...` CLI commands
 */
#ifndef CONVAI_PRIVATE_H
#define CONVAI_PRIVATE_H

#include <sys/time.h>

#include "asterisk/frame.h"
#include "asterisk/linkedlists.h"
#include "asterisk/lock.h"
#include "asterisk/vector.h"

#include "convai_shared.h"

#define APP_NAME "ElevenLabsConvAI"
#define CONFIG_FILE "elevenlabs.conf"

/* Every line the module logs starts with this, Python's lines too (convai/host.py). */
#define LOG_PREFIX "elevenlabs: "

struct ast_channel;
struct ast_format;
struct ast_variable;
struct convai_transfer;
struct convai_agent;

/* --- config.c ------------------------------------------------------------------------------ */

#define CONVAI_MAX_TOOLS 16
#define CONVAI_MAX_TARGETS 16

/*! \brief What a client tool does (`tool = name: action, ...`). */
enum convai_tool_action {
	CONVAI_TOOL_TRANSFER,
	CONVAI_TOOL_HANGUP,
	CONVAI_TOOL_DTMF,
	CONVAI_TOOL_SET_VARIABLE,
	CONVAI_TOOL_AMI,
};

/*! \brief One client tool of an agent, under the name the ElevenLabs tool has. */
struct convai_tool {
	char name[64];
	enum convai_tool_action action;
	int timeout;             /* ami: seconds to wait for ElevenLabsConvAIToolResult */
	char param[32];          /* transfer/dtmf: the parameter holding the target / digits */
	char variables[256];     /* set_variable: the names the agent may set, '|' separated */
};

enum convai_transfer_mode { CONVAI_XFER_BLIND, CONVAI_XFER_WARM };

/*! \brief A named transfer target (`transfer_target = name: mode, ...`): the allow-list. */
struct convai_target {
	char name[32];
	enum convai_transfer_mode mode;
	char location[256];      /* blind: context,exten,priority */
	char refer[256];         /* blind: SIP URI to REFER a PJSIP caller to, instead */
	char dial[256];          /* warm: Tech/resource */
	int timeout;             /* warm: seconds the target may ring */
	char whisper[128];       /* warm: sound played to the person who answers, before the bridge */
};

/*! \brief "transfer", "hangup", "dtmf", "set_variable", "ami" */
const char *convai_tool_action_name(enum convai_tool_action action);

/*! \brief The agent's transfer target of that name (case-insensitive), or NULL. */
const struct convai_target *convai_agent_target(const struct convai_agent *a, const char *name);

/*! \brief One agent's section of elevenlabs.conf, immutable once parsed (an ao2 object). */
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
	int n_tools;
	struct convai_tool tools[CONVAI_MAX_TOOLS];
	int n_targets;
	struct convai_target targets[CONVAI_MAX_TARGETS];
};

/*! \brief The running configuration: replaced whole by a reload, never changed in place. */
struct convai_config {
	int debug;
	char python_path[1024];
	int problems;   /* sections disabled or kept at their last good settings by errors */
	struct ast_variable *disabled;   /* names of the sections disabled by errors */
	AST_VECTOR(, struct convai_agent *) agents;
};

/*!
 * \brief Load or reload elevenlabs.conf into the snapshot.
 * \param reload nonzero: skip an unchanged file
 * \retval 0 loaded (see the snapshot's problems) or unchanged
 * \retval -1 the file is broken: the running snapshot stays (at load: no agents)
 */
int convai_config_load(int reload);

/*! \brief The running snapshot with a reference (ao2_cleanup it), or NULL before the first load. */
struct convai_config *convai_config_get(void);

/*! \brief Drop the snapshot (unload). */
void convai_config_release(void);

/*! \brief The agent of that section (case-insensitive), not referenced; NULL if none. */
struct convai_agent *convai_config_find_agent(struct convai_config *cfg, const char *name);

/*! \brief Whether the section exists but was disabled by errors at the last (re)load. */
int convai_config_is_disabled(struct convai_config *cfg, const char *name);

/* --- runtime.c ------------------------------------------------------------------------------ */

/*! \brief Set up the pending list and the host block; before anything else at load. */
void convai_runtime_init(void);

/*! \brief Start the embedded Python runtime. \retval 0 up, -1 not (logged). */
int convai_runtime_start(const char *python_path);

/*! \brief Stop the runtime (up to 3 s) and free what it no longer uses; at unload. */
void convai_runtime_cleanup(void);

/*! \brief Whether new calls can be served: the runtime is up and not shutting down. */
int convai_runtime_available(void);

/*! \brief Switch the protocol debug log; Python picks it up at once. */
void convai_runtime_set_debug(int on);
int convai_runtime_debug(void);

/*! \brief Test hook: block the Python loop for \a ms once (`elevenlabs test stall`). */
void convai_runtime_stall(int ms);

/*!
 * \brief A session for a new call on \a chan with agent \a a: the rings, the eventfds and a
 * copy of the settings Python needs. It holds two references: the app thread's and Python's.
 */
struct convai_session *convai_session_new(struct ast_channel *chan, struct convai_agent *a);

/*! \brief Hand the session to Python (it takes it on its next wake-up). */
void convai_session_submit(struct convai_session *s);

/*!
 * \brief Tell Python the session has caller audio or a command for it: listed on the host's
 * ready list, and the host's eventfd written if it was not listed yet. Any channel thread.
 */
void convai_session_notify(struct convai_session *s);

/*! \brief Take back a session Python never took. \retval 1 it was still pending */
int convai_session_withdraw(struct convai_session *s);

/*! \brief Drop one reference; the last one frees the session. */
void convai_session_release(struct convai_session *s);

/* --- call.c --------------------------------------------------------------------------------- */

/*!
 * \brief The phases of a call, on the channel's thread. call.c's call_enter() is the only
 * place they change, and it allows only these moves:
 *
 *   CONNECTING --STARTED--> TALKING --END with play_out, max_duration--> DRAINING --played out--> DONE
 *   CONNECTING, TALKING --hangup, failure, END without play_out, start timeout, a warm
 *                          transfer answered--> DONE
 *   DRAINING --hangup, 30 s cap--> DONE
 *
 * The outcome (status, reason) is fixed on entering DRAINING or DONE. A transfer under way
 * (transfer.c) does not change the phase: it ends the call through these moves (status
 * TRANSFER). A phase of its own would slot in after TALKING, with a row in phase_moves.
 */
enum call_phase {
	CALL_CONNECTING,   /* waiting for Python's STARTED: signed URL, WebSocket, metadata */
	CALL_TALKING,      /* media both ways */
	CALL_DRAINING,     /* the conversation is over; the agent's last words play out */
	CALL_DONE,         /* the loop leaves; the outcome is final */
	CALL_PHASE_MAX
};

/*! \brief "connecting", "talking", "ending (playing out)", "done" */
const char *convai_call_phase_name(enum call_phase phase);

/*! \brief One conversation, owned by the channel's thread; the CLI reads it under the list lock. */
struct convai_call {
	struct ast_channel *chan;
	struct convai_session *sess;
	struct convai_agent *agent;
	struct timeval start;
	int tfd;
	enum call_phase phase;
	enum convai_status status;  /* the outcome, once DRAINING or DONE */
	enum convai_reason reason;
	struct timeval drain_start;
	char conversation_id[CONVAI_ID_BYTES];
	const char *in_format;      /* names from convai_format(), NULL until TALKING */
	const char *out_format;
	struct ast_format *write_fmt;
	struct ast_format *read_fmt;
	uint32_t frame_bytes;       /* agent audio, per 20 ms */
	uint32_t frame_samples;
	uint32_t up_frame_bytes;    /* caller audio, per 20 ms */
	unsigned char up_silence;   /* the byte of silent caller audio */
	int playing;                /* media, not lifecycle: the agent's audio is under way */
	int prebuffer_ticks;
	uint32_t seen_below;
	uint32_t last_played_id;
	uint32_t last_write_us;
	int rephased;               /* the next write starts a new 20 ms grid: no playout sample */
	int tick_uncounted;         /* the next tick came early (a re-phase): not caller time */
	int up_deficit;             /* 20 ms ticks minus caller frames received */
	int up_speaking;            /* the caller's energy check: speech under way */
	int up_quiet;               /* quiet frames since the caller's last speech frame */
	int wake_efd;               /* other threads (AMI, the transfer dialler) -> this loop: the
	                             * session's down_efd, shared with Python's commands */
	ast_mutex_t inbox_lock;     /* serialises the AMI threads that push into inbox */
	struct convai_ring *inbox;  /* command records from other threads, for Python, via this one */
	struct convai_transfer *xfer;   /* the transfer under way (transfer.c), or NULL */
	int transfer_res;           /* the app's return value after a transfer */
	char dtmf_out[72];          /* digits the agent is sending, and where we are in them */
	int dtmf_pos;
	int dtmf_ticks;             /* ticks left of the current tone, pause or gap */
	int dtmf_tone;              /* a tone is on */
	uint64_t dtmf_sent;
	AST_LIST_ENTRY(convai_call) list;
	unsigned char silence[CONVAI_FRAME_MAX];
	unsigned char out[AST_FRIENDLY_OFFSET + CONVAI_FRAME_MAX];
};

/*!
 * \brief Set up a call on \a chan with agent \a agent (referenced here).
 * \retval NULL out of memory or fds (logged); nothing to undo
 */
struct convai_call *convai_call_new(struct ast_channel *chan, struct convai_agent *agent);

/*!
 * \brief Run the conversation to its end on the channel's thread, then set the result
 * variables and raise the end events. c->status holds the outcome afterwards.
 */
void convai_call_run(struct convai_call *c);

/*! \brief Free the call after its run; Python's reference to the session is let go too. */
void convai_call_destroy(struct convai_call *c);

/*! \brief The call never reached the agent: result variables, an End event. Returns 0. */
int convai_fail_early(struct ast_channel *chan, const char *agent, enum convai_reason reason);

/*! \brief Call \a cb for each live call under the list's read lock until it returns nonzero. */
int convai_calls_foreach(int (*cb)(struct convai_call *c, void *arg), void *arg);

/*!
 * \brief Queue a command record for Python from any thread (the AMI action): the call's own
 * thread forwards it, so the command ring keeps its single producer.
 * \retval 0 queued, -1 the inbox is full
 */
int convai_call_post(struct convai_call *c, uint32_t type, const void *rec, uint32_t len);

/*! \brief Send Python a command record (from the call's thread). */
void convai_call_send(struct convai_call *c, uint32_t type, const void *rec, uint32_t len);

/*! \brief Set or clear the call's transfer under the list lock (the CLI reads it). */
void convai_call_set_transfer(struct convai_call *c, struct convai_transfer *x);

/* --- transfer.c ----------------------------------------------------------------------------- */

/*! \brief "accepted", "dialing", "ringing", "answered", "failed" (enum convai_xfer_state is
 * in convai_shared.h: Python hears it). */
const char *convai_xfer_state_name(enum convai_xfer_state state);

/*!
 * \brief The agent's transfer tool named \a target: look it up, check it, start it (a warm
 * transfer dials on a thread of its own). Python hears how it goes (TRANSFER_STATE).
 */
void convai_transfer_request(struct convai_call *c, const char *tool_call_id, const char *target);

/*!
 * \brief The dialler's news, on the call's thread (wake_efd): report it, or give up.
 * \retval 1 the target answered: end the conversation (convai_transfer_finish() bridges)
 */
int convai_transfer_poll(struct convai_call *c);

/*!
 * \brief After the conversation: carry out the transfer (a blind goto or REFER, or the warm
 * bridge), or cancel one still ringing. Sets c->transfer_res.
 */
void convai_transfer_finish(struct convai_call *c);

/*! \brief Whether a blind transfer was accepted (END TRANSFER then carries it out). */
int convai_transfer_blind_accepted(struct convai_call *c);

/*! \brief A line for `elevenlabs show call`, or "" (under the list lock). */
void convai_transfer_describe(struct convai_call *c, char *buf, size_t len);

/* --- events.c ------------------------------------------------------------------------------- */

/*!
 * \brief Copy \a src (at most \a size - 1 bytes) into \a dst, control characters (CR, LF, tab,
 * ...) replaced by spaces: what Python or the network sent becomes safe for a channel
 * variable, a log line or an AMI header. Returns \a dst.
 */
char *convai_clean(char *dst, const char *src, size_t size);

/*!
 * \brief An ElevenLabsConvAI* event for a live call: the common fields (cleaned), then \a body,
 * which the caller builds in C from typed, cleaned values (it is not cleaned again).
 */
void convai_call_event(struct convai_call *c, const char *event, const char *body);

/*! \brief ElevenLabsConvAISystemTool, every field cleaned. */
void convai_event_system_tool(struct convai_call *c, const struct convai_cmd_system_tool *cmd);

/*! \brief ElevenLabsConvAIStart, once the call is TALKING. */
void convai_event_start(struct convai_call *c);

/*! \brief ElevenLabsConvAIInterruption. */
void convai_event_interruption(struct convai_call *c, uint32_t event_id);

/*! \brief ElevenLabsConvAIToolCall, every field cleaned. */
void convai_event_tool_call(struct convai_call *c, const struct convai_cmd_tool_call *cmd);

/*! \brief ElevenLabsConvAIStats: the call's media counters and histograms. */
void convai_event_stats(struct convai_call *c);

/*! \brief ElevenLabsConvAIEnd; also for a call that never reached the agent (\a secs 0). */
void convai_event_end(struct ast_channel *chan, const char *agent, const char *agent_id,
	const char *conversation_id, enum convai_status status, enum convai_reason reason,
	double secs);

/*! \brief The ElevenLabsConvAIToolResult manager action. */
int convai_manager_register(void);
void convai_manager_unregister(void);

/* --- cli.c ---------------------------------------------------------------------------------- */

int convai_cli_register(void);
void convai_cli_unregister(void);

#endif /* CONVAI_PRIVATE_H */
