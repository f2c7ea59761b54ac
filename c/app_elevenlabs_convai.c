/*
 * app_elevenlabs_convai -- a live conversation between a caller and an ElevenLabs
 * Conversational AI agent.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * The glue, as apps/app_audiosocket.c: the documentation, the application's entry point and
 * load/unload. The rest of the Asterisk side is split by concern (see convai_private.h):
 * config.c, runtime.c, call.c, transfer.c, events.c and cli.c. The protocol runs in Python (python/convai).
 */

/*** MODULEINFO
	<support_level>extended</support_level>
 ***/

#include "asterisk.h"

#include "asterisk/app.h"
#include "asterisk/astobj2.h"
#include "asterisk/channel.h"
#include "asterisk/logger.h"
#include "asterisk/module.h"
#include "asterisk/strings.h"
#include "asterisk/utils.h"

#include "convai_private.h"
#include "metrics.h"

/*** DOCUMENTATION
	<application name="ElevenLabsConvAI" language="en_US" module="app_elevenlabs_convai">
		<since>
			<version>app_elevenlabs_convai 0.1.0</version>
		</since>
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
					<value name="TRANSFER">The agent transferred the caller: a blind transfer
					continues in the dialplan at the target (or the caller was REFERred); a warm
					transfer bridged the caller with the target, and the app returns when the
					bridge ends.</value>
				</variable>
				<variable name="ELEVENLABS_END_REASON">
					<para>Why it ended: <literal>completed</literal>, <literal>agent_ended_call</literal>,
					<literal>max_duration</literal>, <literal>timeout</literal>,
					<literal>policy_violation</literal>, <literal>server_error</literal>,
					<literal>network_loss</literal>, <literal>caller_hangup</literal>,
					<literal>signed_url_failed</literal>, <literal>connect_failed</literal>,
					<literal>unsupported_format</literal>, <literal>unknown_agent</literal>,
					<literal>runtime_unavailable</literal>, <literal>start_timeout</literal>,
					<literal>shutdown</literal> (Asterisk is stopping), <literal>message_too_big</literal>,
					<literal>transfer</literal>.</para>
				</variable>
				<variable name="ELEVENLABS_TRANSFER_TARGET">
					<para>With <literal>ELEVENLABS_STATUS=TRANSFER</literal>: the name of the
					<literal>transfer_target</literal> the agent transferred the caller to.</para>
				</variable>
				<variable name="ELEVENLABS_VAR_name">
					<para>What the agent's <literal>set_variable</literal> tool saved, one
					variable per allow-listed name.</para>
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
			<since>
				<version>app_elevenlabs_convai 0.1.0</version>
			</since>
			<synopsis>Raised when a conversation with an agent has started.</synopsis>
			<syntax>
				<!-- convai: common fields (every ElevenLabsConvAI* event starts with them; c/extract_docs.py
				     copies them where an event says "convai: the common fields") -->
				<parameter name="Channel"><para>The channel talking to the agent.</para></parameter>
				<parameter name="Uniqueid"><para>The channel's unique id.</para></parameter>
				<parameter name="Agent"><para>The agent's section name in <filename>elevenlabs.conf</filename>.</para></parameter>
				<parameter name="AgentID"><para>The ElevenLabs agent id the call uses (<literal>elevenlabs_agent_id</literal>
				when the call started; empty when the agent is not configured).</para></parameter>
				<parameter name="ConversationID"><para>The ElevenLabs conversation id; empty until
				the conversation has started.</para></parameter>
				<!-- convai: end of the common fields -->
				<parameter name="InputFormat"><para>Caller audio format sent to the agent.</para></parameter>
				<parameter name="OutputFormat"><para>Agent audio format played to the caller.</para></parameter>
			</syntax>
		</managerEventInstance>
	</managerEvent>
	<managerEvent language="en_US" name="ElevenLabsConvAIInterruption" module="app_elevenlabs_convai">
		<managerEventInstance class="EVENT_FLAG_CALL">
			<since>
				<version>app_elevenlabs_convai 0.1.0</version>
			</since>
			<synopsis>Raised when the caller interrupts the agent.</synopsis>
			<syntax>
				<!-- convai: the common fields -->
				<parameter name="EventID"><para>The interruption's event id: older agent audio is dropped.</para></parameter>
			</syntax>
		</managerEventInstance>
	</managerEvent>
	<managerEvent language="en_US" name="ElevenLabsConvAIToolCall" module="app_elevenlabs_convai">
		<managerEventInstance class="EVENT_FLAG_CALL">
			<since>
				<version>app_elevenlabs_convai 0.1.0</version>
			</since>
			<synopsis>Raised when the agent calls a client tool.</synopsis>
			<syntax>
				<!-- convai: the common fields -->
				<parameter name="ToolName"><para>As the agent sent it; like every value the server
				chooses, control characters are replaced by spaces before it reaches AMI.</para></parameter>
				<parameter name="ToolCallID"/>
				<parameter name="Parameters"><para>The tool's parameters as JSON (cut to 599 bytes).</para></parameter>
				<parameter name="Handler"><para>Who answers it: <literal>module</literal> (a tool the
				module carries out), <literal>ami</literal> (waits for
				<literal>ElevenLabsConvAIToolResult</literal>) or <literal>none</literal> (not
				configured: answered with an error at once).</para></parameter>
			</syntax>
		</managerEventInstance>
	</managerEvent>
	<managerEvent language="en_US" name="ElevenLabsConvAIStats" module="app_elevenlabs_convai">
		<managerEventInstance class="EVENT_FLAG_CALL">
			<since>
				<version>app_elevenlabs_convai 0.1.0</version>
			</since>
			<synopsis>Raised at the end of a conversation with its media statistics.</synopsis>
			<syntax>
				<!-- convai: the common fields -->
				<parameter name="FramesPlayed"><para>20 ms frames of agent audio written.</para></parameter>
				<parameter name="Underruns"><para>Ticks with agent audio waiting in Python but none in the ring.</para></parameter>
				<parameter name="LateTicks"><para>Timer ticks the channel thread was late for (caught up).</para></parameter>
				<parameter name="FramesUp"><para>Caller frames queued for the agent.</para></parameter>
				<parameter name="UpOverflows"><para>Caller frames lost because the runtime fell behind.</para></parameter>
				<parameter name="FramesDropped"><para>Agent frames dropped by interruptions.</para></parameter>
				<parameter name="Interruptions"/>
				<parameter name="BytesUp"/>
				<parameter name="BytesDown"/>
				<parameter name="BacklogDropped"><para>Agent frames refused because the call already
				queued the most agent audio it may (about 61 s: the ring and 60 s beyond it).</para></parameter>
				<parameter name="UpFlushes"><para>Ends of the caller's speech, each of which sent the
				caller's partial audio chunk to the agent at once.</para></parameter>
				<parameter name="Rephases"><para>Utterances of the agent whose first frame was
				written as soon as it arrived, the 20 ms clock re-phased to it.</para></parameter>
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
			<since>
				<version>app_elevenlabs_convai 0.1.0</version>
			</since>
			<synopsis>Raised when a conversation with an agent has ended, or failed to start.</synopsis>
			<syntax>
				<!-- convai: the common fields -->
				<parameter name="Status"><para>COMPLETED, HANGUP, FAILED or TRANSFER.</para></parameter>
				<parameter name="Reason"><para>As in <variable>ELEVENLABS_END_REASON</variable>.</para></parameter>
				<parameter name="Duration"><para>Seconds since the application started
				(<literal>0.000</literal> when the call failed before reaching the agent, e.g.
				<literal>unknown_agent</literal>).</para></parameter>
			</syntax>
		</managerEventInstance>
	</managerEvent>
	<managerEvent language="en_US" name="ElevenLabsConvAITransferStarted" module="app_elevenlabs_convai">
		<managerEventInstance class="EVENT_FLAG_CALL">
			<since>
				<version>app_elevenlabs_convai 0.2.0</version>
			</since>
			<synopsis>Raised when the module starts a transfer the agent asked for (blind: accepted; warm: the target is being called).</synopsis>
			<syntax>
				<!-- convai: the common fields -->
				<!-- convai: transfer fields (every ElevenLabsConvAITransfer* event has them; c/extract_docs.py
				     copies them where an event says "convai: the transfer fields") -->
				<parameter name="Target"><para>The <literal>transfer_target</literal> name.</para></parameter>
				<parameter name="Mode"><para><literal>blind</literal>, <literal>refer</literal> or <literal>warm</literal>.</para></parameter>
				<parameter name="ToolCallID"><para>The agent's tool call.</para></parameter>
				<parameter name="Seconds"><para>Since the agent asked for the transfer.</para></parameter>
				<parameter name="RingSeconds"><para>Warm: when the target started ringing, since the
				agent asked (absent if it never rang).</para></parameter>
				<!-- convai: end of the transfer fields -->
			</syntax>
		</managerEventInstance>
	</managerEvent>
	<managerEvent language="en_US" name="ElevenLabsConvAITransferAnswered" module="app_elevenlabs_convai">
		<managerEventInstance class="EVENT_FLAG_CALL">
			<since>
				<version>app_elevenlabs_convai 0.2.0</version>
			</since>
			<synopsis>Raised when a warm transfer's target answered (the caller is bridged to it next), or the caller's phone accepted a SIP REFER.</synopsis>
			<syntax>
				<!-- convai: the common fields -->
				<!-- convai: the transfer fields -->
			</syntax>
		</managerEventInstance>
	</managerEvent>
	<managerEvent language="en_US" name="ElevenLabsConvAITransferFailed" module="app_elevenlabs_convai">
		<managerEventInstance class="EVENT_FLAG_CALL">
			<since>
				<version>app_elevenlabs_convai 0.2.0</version>
			</since>
			<synopsis>Raised when a transfer failed: no answer, busy, the target hung up, a REFER was rejected, or the call ended first.</synopsis>
			<syntax>
				<!-- convai: the common fields -->
				<!-- convai: the transfer fields -->
				<parameter name="Reason"><para>Why, e.g. <literal>no answer after 25 s</literal>.</para></parameter>
			</syntax>
		</managerEventInstance>
	</managerEvent>
	<managerEvent language="en_US" name="ElevenLabsConvAISystemTool" module="app_elevenlabs_convai">
		<managerEventInstance class="EVENT_FLAG_CALL">
			<since>
				<version>app_elevenlabs_convai 0.2.0</version>
			</since>
			<synopsis>Raised when one of the agent's system tools ran on the ElevenLabs side (end_call, transfer_to_number, voicemail_detection, play_keypad_touch_tone): informational, a WebSocket call gets no telephony effect from them.</synopsis>
			<syntax>
				<!-- convai: the common fields -->
				<parameter name="ToolName"/>
				<parameter name="ToolCallID"/>
				<parameter name="IsError"><para><literal>true</literal> or <literal>false</literal>.</para></parameter>
			</syntax>
		</managerEventInstance>
	</managerEvent>
	<manager name="ElevenLabsConvAIToolResult" language="en_US" module="app_elevenlabs_convai">
		<since>
			<version>app_elevenlabs_convai 0.2.0</version>
		</since>
		<synopsis>
			Answer a client tool call of an agent (an external tool handler).
		</synopsis>
		<syntax>
			<parameter name="ActionID">
				<para>ActionID for this transaction. Will be returned.</para>
			</parameter>
			<parameter name="Channel" required="true">
				<para>The channel of the conversation (from <literal>ElevenLabsConvAIToolCall</literal>).</para>
			</parameter>
			<parameter name="ToolCallID" required="true">
				<para>The <literal>ToolCallID</literal> of the <literal>ElevenLabsConvAIToolCall</literal> event.</para>
			</parameter>
			<parameter name="Result">
				<para>The result text the agent reads (JSON is fine).</para>
			</parameter>
			<parameter name="IsError">
				<para><literal>true</literal> when the tool failed.</para>
			</parameter>
		</syntax>
		<description>
			<para>Tools configured with <literal>tool = name: ami</literal> wait for this answer
			up to their <literal>timeout</literal>; then the agent gets a timeout error.</para>
		</description>
	</manager>
 ***/

enum {
	OPT_CONTINUE = (1 << 0),
	OPT_HANGUP = (1 << 1),
};

AST_APP_OPTIONS(convai_opts, {
	AST_APP_OPTION('c', OPT_CONTINUE),
	AST_APP_OPTION('h', OPT_HANGUP),
});

/* The agent of the section \a name, or NULL with the reason logged. */
static struct convai_agent *exec_agent(struct ast_channel *chan, struct convai_config *cfg,
	const char *name)
{
	struct convai_agent *agent = cfg ? convai_config_find_agent(cfg, name) : NULL;

	if (!agent) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: agent [%s] %s; ELEVENLABS_STATUS=FAILED\n",
			ast_channel_name(chan), name, name, cfg && convai_config_is_disabled(cfg, name)
				? "is disabled: its section in " CONFIG_FILE " has errors (see the last (re)load)"
				: "is not configured in " CONFIG_FILE);
	}
	return agent;
}

/* What the application returns once the call is over: -1 hangs the channel up. */
static int exec_result(struct convai_call *c, const struct ast_flags *opts)
{
	int hangup = c->agent->hangup_on_end;

	if (ast_test_flag(opts, OPT_CONTINUE)) {
		hangup = 0;
	} else if (ast_test_flag(opts, OPT_HANGUP)) {
		hangup = 1;
	}
	switch (c->status) {
	case CONVAI_STATUS_HANGUP:
		return -1;
	case CONVAI_STATUS_COMPLETED:
		return hangup ? -1 : 0;
	case CONVAI_STATUS_TRANSFER:
		return c->transfer_res;   /* 0: continue at the blind target; -1: bridged or REFERred */
	default:
		return 0;   /* FAILED: the dialplan goes on to its fallback */
	}
}

static int convai_exec(struct ast_channel *chan, const char *data)
{
	RAII_VAR(struct convai_config *, cfg, convai_config_get(), ao2_cleanup);
	struct convai_agent *agent;
	struct ast_flags opts = { 0 };
	struct convai_call *c;
	int res;
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
		return convai_fail_early(chan, "", CONVAI_REASON_UNKNOWN_AGENT);
	}
	if (!ast_strlen_zero(args.options)) {
		ast_app_parse_options(convai_opts, &opts, NULL, args.options);
	}
	if (!(agent = exec_agent(chan, cfg, args.agent))) {
		return convai_fail_early(chan, args.agent, CONVAI_REASON_UNKNOWN_AGENT);
	}
	if (!convai_runtime_available()) {
		ast_log(LOG_ERROR, LOG_PREFIX "%s [%s]: the Python runtime is not running; "
			"ELEVENLABS_STATUS=FAILED\n", ast_channel_name(chan), args.agent);
		return convai_fail_early(chan, args.agent, CONVAI_REASON_RUNTIME_UNAVAILABLE);
	}
	if (ast_channel_state(chan) != AST_STATE_UP && ast_answer(chan)) {
		return -1;
	}
	if (!(c = convai_call_new(chan, agent))) {
		return convai_fail_early(chan, args.agent, CONVAI_REASON_RUNTIME_UNAVAILABLE);
	}
	ast_verb(3, LOG_PREFIX "%s [%s]: connecting to agent [%s] (agent ID %s)\n",
		ast_channel_name(chan), agent->name, agent->name, agent->agent_id);
	convai_call_run(c);
	res = exec_result(c, &opts);
	convai_call_destroy(c);
	return res;
}

static int unload_module(void)
{
	convai_manager_unregister();
	convai_metrics_unregister();
	convai_cli_unregister();
	ast_unregister_application(APP_NAME);
	convai_runtime_cleanup();
	convai_config_release();
	return 0;
}

static int start_runtime(void)
{
	RAII_VAR(struct convai_config *, cfg, convai_config_get(), ao2_cleanup);

	return convai_runtime_start(cfg->python_path);
}

static int load_module(void)
{
	convai_runtime_init();
	if (convai_config_load(0) || start_runtime()) {
		convai_config_release();
		convai_runtime_cleanup();
		return AST_MODULE_LOAD_DECLINE;
	}
	if (ast_register_application_xml(APP_NAME, convai_exec) || convai_cli_register()
		|| convai_manager_register()) {
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
	return convai_config_load(1) ? -1 : 0;
}

AST_MODULE_INFO(ASTERISK_GPL_KEY, AST_MODFLAG_LOAD_ORDER, "ElevenLabs Conversational AI",
	.support_level = AST_MODULE_SUPPORT_EXTENDED,
	.load = load_module,
	.unload = unload_module,
	.reload = reload_module,
	.load_pri = AST_MODPRI_DEFAULT,
	.optional_modules = "res_prometheus",
);
