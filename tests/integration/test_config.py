"""elevenlabs.conf in a real Asterisk: validation messages, templates, #include, comments,
file permissions, a missing or unparseable file, and hot reload (live calls keep their config).

Every check reads what Asterisk really logged or printed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from asterisk import Asterisk, AsteriskFactory
from convai_fixtures import (
    DIALPLAN_BY_AGENT,
    TEST_KEY,
    agent,
    call_agent,
    live_calls,
    wait_for_conversation,
    wait_result,
    wait_until,
    write_elevenlabs_conf,
)

from convai.sim import Scenario, Simulator

# A conversation that ends by itself, quickly and normally.
SHORT = {"greeting": "Hello.", "end_after_turns": None, "close_after_s": 2.0}

LOG_LINE = re.compile(
    r"^\[[^\]]+\] (?P<level>[A-Z]+)\[\d+\](?:\[C-[0-9a-f]+\])? (?P<src>\S+): (?P<msg>.*)$"
)


class Conf:
    """elevenlabs.conf text built line by line, remembering where each key went."""

    def __init__(self, python_dir: Path, general: str = "debug = no") -> None:
        self.lines: list[str] = []
        self.at: dict[tuple[str, str], int] = {}
        self.section = ""
        self.sect("general")
        for line in general.splitlines():
            self.key(*[p.strip() for p in line.split("=", 1)])
        self.key("python_path", str(python_dir))

    def sect(self, name: str, suffix: str = "") -> Conf:
        self.lines += ["", f"[{name}]{suffix}"]
        self.section = name
        self.at.setdefault((name, ""), len(self.lines))  # the section's header
        return self

    def key(self, name: str, value: str) -> Conf:
        self.lines.append(f"{name} = {value}")
        self.at[(self.section, name)] = len(self.lines)
        return self

    def raw(self, line: str) -> Conf:
        self.lines.append(line)
        return self

    def agent(self, name: str, sim: Simulator, **keys: str) -> Conf:
        self.sect(name)
        for k, v in agent(sim, **keys).items():
            self.key(k, v)
        return self

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def module_lines(ast: Asterisk, since: int = 0, full: bool = False) -> list[tuple[str, str]]:
    """(level, message) of every line the module logged after ``since``."""
    out = []
    for line in ast.log_text(full)[since:].splitlines():
        m = LOG_LINE.match(line)
        if m and m["src"].startswith("convai/"):  # convai/call.c, convai/session.py, ...
            out.append((m["level"], m["msg"]))
    return out


def agents_table(ast: Asterisk) -> dict[str, list[str]]:
    """``elevenlabs show agents``: agent name -> the row's columns."""
    rows = {}
    for line in ast.cli("elevenlabs show agents").splitlines()[1:]:
        if line and not re.match(r"\d+ agent\(s\)", line):
            cols = line.split()
            rows[cols[0]] = cols
    return rows


def start(
    convai_asterisk: Callable[..., Asterisk],
    conf: Conf | str,
    configs: dict[str, str] | None = None,
) -> Asterisk:
    """An Asterisk (dialplan: DIALPLAN_BY_AGENT) whose elevenlabs.conf is exactly ``conf``."""
    files = dict(configs or {})
    files["elevenlabs.conf"] = conf if isinstance(conf, str) else conf.text()
    return convai_asterisk(agents={}, dialplan=DIALPLAN_BY_AGENT, configs=files)


# --- validation ---------------------------------------------------------------------------------


def test_every_error_names_file_line_section_and_key_and_disables_only_that_agent(
    simulator: Callable[..., Simulator],
    convai_asterisk: Callable[..., Asterisk],
    convai_python_dir: Path,
) -> None:
    sim = simulator(Scenario(**SHORT))
    c = Conf(convai_python_dir, general="debug = maybe\ncolour = blue")
    c.agent("good", sim)
    c.key("elevenlabs_shoe_size", "42")  # unknown: a warning, the agent still works
    # (section, key, value, what the error must say)
    bad = [
        ("bad_number", "elevenlabs_audio_frames_buffer_ms", "lots",
         r"'lots' is not a whole number"),
        ("out_of_range", "elevenlabs_audio_frames_buffer_ms", "5000",
         r"5000 is out of range \(20 to 2000\)"),
        ("not_multiple", "elevenlabs_audio_frames_buffer_ms", "250",
         r"250 is not a multiple of 20 ms"),
        ("bad_bool", "elevenlabs_send_caller_number", "perhaps",
         r"'perhaps' is not yes/no/true/false"),
        ("bad_scheme", "elevenlabs_get_signed_url_endpoint", "ftp://example.com/x",
         r"'ftp://example.com/x' is not an http:// or https:// URL"),
        ("no_host", "elevenlabs_get_signed_url_endpoint", "https:///v1/x",
         r"'https:///v1/x' has no host name or contains spaces"),
        ("too_long", "elevenlabs_agent_id", "a" * 200, r"value is longer than 127 characters"),
        ("bad_var", "dynamic_variable", "novalue", r"'novalue' is not name=value"),
        ("bad_var_name", "dynamic_variable", "bad name=x",
         r"'bad name=x' is not name=value with a name of letters, digits and _"),
        ("bad_on_end", "on_end", "sometimes", r"'sometimes' is neither 'hangup' nor 'continue'"),
        ("bad_max", "max_duration", "-5", r"-5 is out of range \(0 to 86400\)"),
    ]  # fmt: skip
    for section, key, value, _ in bad:
        c.agent(section, sim)
        c.key(key, value)
    c.sect("missing").key("elevenlabs_api_key", TEST_KEY)
    c.agent("empty_key", sim, elevenlabs_api_key="")
    long_name = "x" * 70
    c.agent(long_name, sim)
    c.sect("good").key("elevenlabs_agent_id", "agent_duplicate")  # a second [good]

    ast = start(convai_asterisk, c)
    lines = module_lines(ast)
    text = "\n".join(f"{lvl} {msg}" for lvl, msg in lines)
    print(text)

    def expect(level: str, regex: str) -> None:
        assert any(lvl == level and re.fullmatch(regex, msg) for lvl, msg in lines), (
            f"no {level} matching /{regex}/ in:\n{text}"
        )

    pre = r"elevenlabs: elevenlabs\.conf"
    expect(
        "ERROR",
        rf"{pre} line {c.at[('general', 'debug')]}: \[general\] debug: "
        r"'maybe' is not yes/no/true/false",
    )
    expect(
        "WARNING",
        rf"{pre} line {c.at[('general', 'colour')]}: \[general\] colour: "
        r"unknown key, ignored",
    )
    expect(
        "WARNING",
        rf"{pre} line {c.at[('good', 'elevenlabs_shoe_size')]}: \[good\] "
        r"elevenlabs_shoe_size: unknown key, ignored",
    )
    for section, key, _, why in bad:
        expect("ERROR", rf"{pre} line {c.at[(section, key)]}: \[{section}\] {key}: {why}")
        expect("ERROR", rf"{pre}: \[{section}\] has errors; agent disabled")
    # A missing key has no line of its own: the error names the section's.
    for key in ("elevenlabs_get_signed_url_endpoint", "elevenlabs_agent_id"):
        expect(
            "ERROR",
            rf"{pre} line {c.at[('missing', '')]}: \[missing\] {key}: missing or empty; "
            r"it is required",
        )
    expect(
        "ERROR",
        rf"{pre} line {c.at[('empty_key', '')]}: \[empty_key\] elevenlabs_api_key: missing or "
        r"empty; it is required",
    )
    long_at = c.at[(long_name, "")]
    expect(
        "ERROR",
        rf"{pre} line {long_at}: \[x{{32}}\.\.\.\]: the section name is longer than 63 characters",
    )
    expect("WARNING", rf"{pre}: \[good\] appears more than once; only the first is used")
    disabled = len(bad) + 3  # + missing, empty_key, the long name
    expect(
        "WARNING",
        rf"{pre} loaded with {disabled + 1} problem\(s\) \(see above\); "
        r"1 agent\(s\) configured",
    )
    # The API key never appears, not even in the errors about its section.
    assert TEST_KEY not in ast.log_text(full=True)

    # Only [good] is configured, with its first definition.
    table = agents_table(ast)
    assert list(table) == ["good"], table
    assert table["good"][1] == "agent_test"

    # It works; a broken agent fails its call with a clear line; so does an unknown one.
    mark = ast.log_mark()
    call_agent(ast, "good")
    assert wait_result(ast, "good", mark)["status"] == "COMPLETED"
    call_agent(ast, "bad_number")
    r = wait_result(ast, "bad_number", mark)
    assert (r["status"], r["reason"]) == ("FAILED", "unknown_agent"), r
    ast.wait_for_log(
        r"ERROR.*elevenlabs: \S+ \[bad_number\]: agent \[bad_number\] is disabled: its section "
        r"in elevenlabs\.conf has errors \(see the last \(re\)load\); ELEVENLABS_STATUS=FAILED",
        since=mark,
    )
    call_agent(ast, "nosuch")
    assert wait_result(ast, "nosuch", mark)["reason"] == "unknown_agent"
    ast.wait_for_log(
        r"ERROR.*elevenlabs: \S+ \[nosuch\]: agent \[nosuch\] is not configured in "
        r"elevenlabs\.conf; ELEVENLABS_STATUS=FAILED",
        since=mark,
    )
    ast.wait_no_channels()


def test_templates_includes_and_comments(
    simulator: Callable[..., Simulator],
    convai_asterisk: Callable[..., Asterisk],
    convai_python_dir: Path,
) -> None:
    sim = simulator(Scenario(**SHORT))
    main = [
        "; ElevenLabs agents -- a comment line",
        "[general]",
        "debug = no ; a comment after a value",
        f"python_path = {convai_python_dir}",
        "",
        ";-- a block comment: nothing in it counts",
        "[commented_out]",
        "elevenlabs_api_key = nothing",
        "--;",
        "[defaults](!)   ; a template, not an agent",
        f"elevenlabs_api_key = {TEST_KEY}",
        f"elevenlabs_get_signed_url_endpoint = {sim.signed_url_endpoint}",
        "elevenlabs_audio_frames_buffer_ms = 300",
        "elevenlabs_send_caller_number = yes",
        "max_duration = 600",
        "",
        "[badtemplate](!)",
        "elevenlabs_audio_frames_buffer_ms = 33",  # line 18: reported for [delta]
        "",
        '#include "elevenlabs-agents.conf"',
        "",
        "[delta](defaults,badtemplate)",
        "elevenlabs_agent_id = agent_delta",
    ]
    included = [
        "; agents, included from elevenlabs.conf",
        "[alpha](defaults)",
        "elevenlabs_agent_id = agent_alpha",
        "",
        "[beta](defaults)",
        "elevenlabs_agent_id = agent_beta",
        "elevenlabs_audio_frames_buffer_ms = 160 ; overrides the template",
        "on_end = continue",
        "",
        "[gamma](defaults)",
        "elevenlabs_agent_id = agent_gamma",
        "elevenlabs_audio_frames_buffer_ms = 150",  # line 12 of the included file
    ]
    ast = start(
        convai_asterisk,
        "\n".join(main) + "\n",
        configs={"elevenlabs-agents.conf": "\n".join(included) + "\n"},
    )
    os.chmod(ast.etc / "elevenlabs-agents.conf", 0o640)
    lines = module_lines(ast)
    text = "\n".join(f"{lvl} {msg}" for lvl, msg in lines)
    print(text)
    errors = [msg for lvl, msg in lines if lvl == "ERROR"]
    # The included file reports its own name and line; a template's error, the template's line.
    assert any(
        re.fullmatch(
            r"elevenlabs: (\S*/)?elevenlabs-agents\.conf line 12: \[gamma\] "
            r"elevenlabs_audio_frames_buffer_ms: 150 is not a multiple of 20 ms",
            e,
        )
        for e in errors
    ), text
    assert any(
        re.fullmatch(
            r"elevenlabs: (\S*/)?elevenlabs\.conf line 18: \[delta\] "
            r"elevenlabs_audio_frames_buffer_ms: 33 is not a multiple of 20 ms",
            e,
        )
        for e in errors
    ), text
    assert "elevenlabs: elevenlabs.conf: [gamma] has errors; agent disabled" in errors
    assert "elevenlabs: elevenlabs.conf: [delta] has errors; agent disabled" in errors
    assert len(errors) == 4, text  # nothing else is wrong: the comments were comments

    table = agents_table(ast)
    assert sorted(table) == ["alpha", "beta"], table  # no template, no commented-out section
    # Agent, Agent ID, API key, Caller, Buffer ms, On end, Max s, endpoint
    assert table["alpha"][1:8] == [
        "agent_alpha", "****" + TEST_KEY[-4:], "Yes", "300", "hangup", "600",
        sim.signed_url_endpoint,
    ], table  # fmt: skip
    assert table["beta"][1:8] == [
        "agent_beta", "****" + TEST_KEY[-4:], "Yes", "160", "continue", "600",
        sim.signed_url_endpoint,
    ], table  # fmt: skip

    # An agent from the included file takes calls, with the template's endpoint and key.
    mark = ast.log_mark()
    call_agent(ast, "beta")
    assert wait_result(ast, "beta", mark)["status"] == "COMPLETED"
    assert [r.agent_id for r in sim.signed_url_requests] == ["agent_beta"]
    assert sim.signed_url_requests[0].api_key


# --- the file itself ----------------------------------------------------------------------------


def test_warns_when_the_file_is_world_readable(
    simulator: Callable[..., Simulator],
    convai_asterisk: Callable[..., Asterisk],
    convai_python_dir: Path,
) -> None:
    sim = simulator()
    conf = Conf(convai_python_dir).agent("sim", sim).text()
    ast = start(convai_asterisk, conf)  # written 0640
    warning = r"WARNING.*elevenlabs: \S+/elevenlabs\.conf is readable by every user"
    assert not re.search(warning, ast.log_text()), ast.log_text()

    write_elevenlabs_conf(ast, conf, mode=0o644)
    mark = ast.log_mark()
    ast.cli("elevenlabs reload")
    m = ast.wait_for_log(warning + r" \(mode 0644\) but holds API keys; chmod 640 it", since=mark)
    assert str(ast.etc / "elevenlabs.conf") in m.group(0)

    write_elevenlabs_conf(ast, conf, mode=0o640)
    mark = ast.log_mark()
    assert "reloaded" in ast.cli("module reload app_elevenlabs_convai") + ast.cli(
        "elevenlabs reload"
    )
    ast.wait_for_log(r"elevenlabs\.conf reloaded: 1 agent\(s\) configured", since=mark)
    assert not re.search(warning, ast.log_text()[mark:])


def test_a_missing_file_means_no_agents_and_a_notice(
    simulator: Callable[..., Simulator],
    convai_asterisk: Callable[..., Asterisk],
    asterisk_factory: AsteriskFactory,
    convai_module: Path,
    convai_python_dir: Path,
) -> None:
    # Removed while running: the reload says so, every call fails cleanly, the module runs on.
    sim = simulator()
    ast = start(convai_asterisk, Conf(convai_python_dir).agent("sim", sim))
    (ast.etc / "elevenlabs.conf").unlink()
    mark = ast.log_mark()
    out = ast.cli("elevenlabs reload")
    assert "elevenlabs.conf reloaded: 0 agent(s) configured" in out, out
    ast.wait_for_log(
        r"NOTICE.*elevenlabs: elevenlabs\.conf not found; no agents configured", since=mark
    )
    assert "0 agent(s)" in ast.cli("elevenlabs show agents")
    call_agent(ast, "sim")
    r = wait_result(ast, "sim", mark)
    assert (r["status"], r["reason"]) == ("FAILED", "unknown_agent"), r
    assert "Running" in ast.cli("module show like elevenlabs")

    # Absent at load: the same NOTICE. (Without the file there is no python_path either, so
    # the runtime comes from the installed location: present in a package install, not in
    # this testbed, where the module then declines for that reason alone.)
    ast2 = asterisk_factory(configs={"extensions.conf": "[test]\n"}, extra_modules=[convai_module])
    text = ast2.log_text()
    assert re.search(r"NOTICE.*elevenlabs: elevenlabs\.conf not found; no agents configured", text)
    status = ast2.cli("module show like elevenlabs")
    if "Not Running" in status:
        errors = [msg for lvl, msg in module_lines(ast2) if lvl == "ERROR"]
        assert len(errors) == 1 and "Python runtime is unavailable" in errors[0], errors
    else:
        assert "0 agent(s)" in ast2.cli("elevenlabs show agents")


# --- hot reload ---------------------------------------------------------------------------------


def test_reload_applies_to_new_calls_while_a_live_call_keeps_its_settings(
    simulator: Callable[..., Simulator],
    convai_asterisk: Callable[..., Asterisk],
    convai_python_dir: Path,
) -> None:
    sim = simulator(Scenario(greeting="Hello."))  # the conversation goes on until hung up
    other = simulator(Scenario(greeting="Hello."))  # the endpoint after the second reload
    v1 = Conf(convai_python_dir).agent("sim", sim, elevenlabs_agent_id="agent_one").text()
    ast = start(convai_asterisk, v1)

    # Call 1 starts with agent_one, max_duration 3600.
    mark = ast.log_mark()
    call_agent(ast, "sim", wait_s=120)
    row1 = wait_for_conversation(ast, "sim")
    chan1 = row1["Channel"]
    assert [r.agent_id for r in sim.signed_url_requests] == ["agent_one"]

    # Reload 1 (elevenlabs reload): another agent id and a 3 s max_duration.
    v2 = Conf(convai_python_dir).agent(
        "sim", sim, elevenlabs_agent_id="agent_two", max_duration="3"
    )
    write_elevenlabs_conf(ast, v2.text())
    out = ast.cli("elevenlabs reload")
    assert "elevenlabs.conf reloaded: 1 agent(s) configured" in out, out
    assert "agent_two" in ast.cli("elevenlabs show agents")
    detail = ast.cli(f"elevenlabs show call {chan1}")
    print(detail)
    assert "Agent:            sim (agent ID agent_one)" in detail, detail
    assert "(max_duration 3600 s)" in detail, detail

    # Call 2 uses the new settings: agent_two, and it ends at its 3 s max_duration...
    call_agent(ast, "sim", wait_s=120)
    wait_until(lambda: len(sim.signed_url_requests) == 2, 15, "the second signed-URL request")
    assert sim.signed_url_requests[1].agent_id == "agent_two"
    r2 = wait_result(ast, "sim", mark, timeout=20)
    assert r2["chan"] != chan1
    assert (r2["status"], r2["reason"]) == ("COMPLETED", "max_duration"), r2
    # ...while call 1, older than 3 s, is still talking to agent_one.
    rows = {r["Channel"]: r for r in wait_until(lambda: live_calls(ast), 5, "live calls")}
    assert chan1 in rows and rows[chan1]["Conversation"] == row1["Conversation"], rows
    assert not sim.conversations[0].done

    # Reload 2 (module reload): another endpoint. Call 3 goes there; call 1 stays put.
    v3 = Conf(convai_python_dir).agent("sim", other, elevenlabs_agent_id="agent_three")
    write_elevenlabs_conf(ast, v3.text())
    mark = ast.log_mark()
    ast.cli("module reload app_elevenlabs_convai")
    ast.wait_for_log(r"elevenlabs\.conf reloaded: 1 agent\(s\) configured", since=mark)
    call_agent(ast, "sim", wait_s=120)
    wait_until(lambda: other.signed_url_requests, 15, "a signed-URL request to the new endpoint")
    assert [r.agent_id for r in other.signed_url_requests] == ["agent_three"]
    assert len(sim.signed_url_requests) == 2
    wait_until(lambda: len(live_calls(ast)) == 2, 15, "calls 1 and 3 under way")
    assert "(agent ID agent_one)" in ast.cli(f"elevenlabs show call {chan1}")
    assert not sim.conversations[0].done

    ast.cli(f"channel request hangup {chan1}")
    m = ast.wait_for_log(
        rf"RESULT agent=sim chan={re.escape(chan1)} status=(\S+) reason=(\S+)",
        since=mark,
        timeout=20,
    )
    assert m.groups() == ("HANGUP", "caller_hangup"), m.group(0)
    ast.cli("channel request hangup all")
    ast.wait_no_channels()
    assert wait_until(lambda: sim.conversations[0].done, 10, "call 1's conversation to end")


def test_a_reload_with_errors_keeps_the_last_good_config_of_broken_agents(
    simulator: Callable[..., Simulator],
    convai_asterisk: Callable[..., Asterisk],
    convai_python_dir: Path,
) -> None:
    sim = simulator(Scenario(**SHORT))
    good = Conf(convai_python_dir)
    good.agent("keep", sim, elevenlabs_agent_id="agent_keep_v1")
    good.agent("other", sim, elevenlabs_agent_id="agent_other_v1")
    ast = start(convai_asterisk, good)

    bad = Conf(convai_python_dir)
    bad.agent("keep", sim, elevenlabs_agent_id="agent_keep_v2")
    bad.key("elevenlabs_audio_frames_buffer_ms", "33")
    bad.agent("other", sim, elevenlabs_agent_id="agent_other_v2")
    bad.agent("fresh", sim, elevenlabs_send_caller_number="sometimes")
    write_elevenlabs_conf(ast, bad.text())
    mark = ast.log_mark()
    out = ast.cli("elevenlabs reload")
    print(out)
    assert (
        "elevenlabs.conf reloaded with 2 problem(s); see the log. 2 agent(s) configured; "
        "sections with errors keep their last good settings or are disabled." in out
    ), out
    buf_line = bad.at[("keep", "elevenlabs_audio_frames_buffer_ms")]
    ast.wait_for_log(
        rf"ERROR.*elevenlabs: elevenlabs\.conf line {buf_line}: \[keep\] "
        r"elevenlabs_audio_frames_buffer_ms: 33 is not a multiple of 20 ms",
        since=mark,
    )
    ast.wait_for_log(
        r"WARNING.*elevenlabs: elevenlabs\.conf: \[keep\] has errors; keeping its last good "
        r"configuration until they are fixed",
        since=mark,
    )
    ast.wait_for_log(
        r"ERROR.*elevenlabs: elevenlabs\.conf: \[fresh\] has errors; agent disabled", since=mark
    )
    ast.wait_for_log(
        r"WARNING.*elevenlabs: elevenlabs\.conf reloaded with 2 problem\(s\) \(see above\); "
        r"2 agent\(s\) configured",
        since=mark,
    )
    table = agents_table(ast)
    assert sorted(table) == ["keep", "other"], table
    assert table["keep"][1] == "agent_keep_v1"  # the last good settings
    assert table["other"][1] == "agent_other_v2"  # a good section takes its new settings

    call_agent(ast, "keep")
    assert wait_result(ast, "keep", mark)["status"] == "COMPLETED"
    assert [r.agent_id for r in sim.signed_url_requests] == ["agent_keep_v1"]
    call_agent(ast, "fresh")
    assert wait_result(ast, "fresh", mark)["reason"] == "unknown_agent"
    ast.wait_for_log(
        r"agent \[fresh\] is disabled: its section in elevenlabs\.conf has errors", since=mark
    )

    # Fixed: the next reload takes the new settings and says nothing about problems.
    bad.lines[buf_line - 1] = "elevenlabs_audio_frames_buffer_ms = 320"
    write_elevenlabs_conf(ast, bad.text().replace("sometimes", "no"))
    out = ast.cli("elevenlabs reload")
    assert "elevenlabs.conf reloaded: 3 agent(s) configured" in out, out
    table = agents_table(ast)
    assert table["keep"][1] == "agent_keep_v2" and table["keep"][4] == "320", table
    assert "fresh" in table


def test_an_unparseable_file_keeps_the_running_config(
    simulator: Callable[..., Simulator],
    convai_asterisk: Callable[..., Asterisk],
    convai_python_dir: Path,
) -> None:
    sim = simulator(Scenario(**SHORT))
    good = Conf(convai_python_dir).agent("sim", sim, elevenlabs_agent_id="agent_v1")
    ast = start(convai_asterisk, good)
    before = ast.cli("elevenlabs show agents")

    broken = Conf(convai_python_dir).agent("sim", sim, elevenlabs_agent_id="agent_v2")
    broken.raw("[unclosed")
    for cmd in ("elevenlabs reload", "module reload app_elevenlabs_convai"):
        write_elevenlabs_conf(ast, broken.text())  # changed: module reload skips unchanged files
        mark = ast.log_mark()
        out = ast.cli(cmd)
        print(f"{cmd}: {out}")
        if cmd == "elevenlabs reload":
            assert (
                "Reload of elevenlabs.conf failed; see the log. The running configuration stays."
                in out
            ), out
        # Asterisk's parser names the line; the module says what it does about it.
        ast.wait_for_log(
            r"WARNING.*parse error: no closing '\]', line \d+ of \S*elevenlabs\.conf", since=mark
        )
        ast.wait_for_log(
            r"ERROR.*elevenlabs: elevenlabs\.conf cannot be parsed \(see above\); keeping the "
            r"running configuration",
            since=mark,
        )
        time.sleep(0.2)
        assert ast.cli("elevenlabs show agents") == before
    mark = ast.log_mark()
    call_agent(ast, "sim")
    assert wait_result(ast, "sim", mark)["status"] == "COMPLETED"
    assert [r.agent_id for r in sim.signed_url_requests] == ["agent_v1"]
