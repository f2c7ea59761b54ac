"""Property tests of the config parser (C, in Asterisk): random elevenlabs.conf files and
values, each applied with a real `elevenlabs reload`.

Properties, for every file hypothesis makes:
- Asterisk stays up and its CLI answers (within 2 s) after the reload;
- every problem our module logs names the file and the line, and that line of the file really
  holds the key it names, in the section it names; a summary line about a section
  ("[x] has errors; ...") only follows such a line for that section;
- the reload reports problems exactly when such a line was logged;
- `elevenlabs show agents` lists exactly the sections the parser accepted.

Examples are real reloads (about 0.1 s each), so the count is modest (CONVAI_FUZZ_EXAMPLES,
default 100); the database of failing examples is kept off (each run starts fresh), and a
failure is shrunk to a minimal file that hypothesis prints.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from asterisk import Asterisk
from convai_fixtures import DIALPLAN_AGENT_100, TEST_KEY, write_elevenlabs_conf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("CONVAI_FUZZ_EXAMPLES", "100"))
KEYS = [
    "elevenlabs_api_key",
    "elevenlabs_get_signed_url_endpoint",
    "elevenlabs_agent_id",
    "elevenlabs_send_caller_number",
    "elevenlabs_audio_frames_buffer_ms",
    "on_end",
    "max_duration",
    "first_message",
    "language",
    "voice_id",
    "prompt",
    "dynamic_variable",
]
GOOD = {
    "elevenlabs_api_key": TEST_KEY,
    "elevenlabs_get_signed_url_endpoint": "http://127.0.0.1:9/v1/convai/conversation/get-signed-url",
    "elevenlabs_agent_id": "agent_fuzz",
}

# Text that survives Asterisk's line reader as one value: no line breaks or NUL, and no ';'
# (a comment) so the line number of what is left is still the line we wrote.
value_chars = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters="\n\r\x00;\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
)
values = st.one_of(
    st.text(value_chars, max_size=40),
    st.sampled_from(["yes", "no", "true", "sometimes", "hangup", "continue", "", " "]),
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(["20", "33", "2000", "2020", "0", "-20", "100000000000000000000"]),
    st.sampled_from(["http://", "https://x", "ftp://h/p", "http:// spaces", "https://h/p"]),
    st.sampled_from(["a=b", "=b", "bad name=x", "ok_1=", "a"]),
    st.text(value_chars, min_size=200, max_size=2000),
)
names = st.one_of(
    st.sampled_from(["sales", "Support", "a", "agent_1", "general2"]),
    st.text(st.characters(whitelist_categories=("Ll", "Nd")), min_size=1, max_size=12),
    st.text(st.characters(whitelist_categories=("Ll",)), min_size=70, max_size=90),
)
key_names = st.one_of(
    st.sampled_from(KEYS),
    st.text(st.characters(whitelist_categories=("Ll",)), min_size=1, max_size=10),
)


@st.composite
def sections(draw: st.DrawFn) -> list[str]:
    name = draw(names)
    lines = [f"[{name}]"]
    if draw(st.booleans()):
        lines += [f"{k} = {v}" for k, v in GOOD.items() if draw(st.booleans())]
    for _ in range(draw(st.integers(0, 6))):
        lines.append(f"{draw(key_names)} = {draw(values)}")
    if draw(st.integers(0, 9)) == 0:
        lines.append(draw(st.sampled_from(["no equals sign here", "=value without a key"])))
    return lines


@st.composite
def conf_files(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        lines += draw(sections())
        if draw(st.booleans()):
            lines.append("; a comment")
    return "\n".join(lines) + "\n"


PROBLEM = re.compile(
    r"\] (ERROR|WARNING)\[[^\]]*\] [\w./]+: elevenlabs: (?P<file>\S+?)(?: line (?P<line>\d+))?: "
    r"(?P<rest>.*)$"
)


def _check_reload(ast: Asterisk, text: str, header_lines: int) -> None:
    mark = ast.log_mark()
    t0 = time.monotonic()
    out = ast.cli("elevenlabs reload", timeout=5)
    assert time.monotonic() - t0 < 2.0, "the reload took over 2 s"
    t0 = time.monotonic()
    ast.cli("core show uptime", timeout=5)
    assert time.monotonic() - t0 < 2.0
    m = re.search(r"reloaded(?: with (\d+) problem\(s\))?", out)
    assert m, out
    reported = int(m.group(1) or 0)
    # The reload logs synchronously; give the logger thread a moment to write it all.
    deadline = time.monotonic() + 2
    while "agent(s) configured" not in ast.log_text()[mark:] and time.monotonic() < deadline:
        time.sleep(0.02)
    file_lines = text.splitlines()
    named: list[tuple[int, str, str]] = []
    for raw in ast.log_text()[mark:].splitlines():
        p = PROBLEM.search(raw)
        if not p or "elevenlabs.conf" not in p.group("file"):
            continue
        rest = p.group("rest")
        if p.group("line"):
            n = int(p.group("line"))
            assert 1 <= n <= len(file_lines), (raw, len(file_lines))
            long_name = re.match(r"\[(?P<head>[^\]]*)\.\.\.\]: the section name is longer", rest)
            if long_name:
                assert file_lines[n - 1].startswith("[" + long_name.group("head")), raw
                named.append((n, _section_of(file_lines, n), ""))
                continue
            mm = re.match(r"\[(?P<sec>[^\]]*)\] (?P<key>[^:]+): ", rest)
            assert mm, f"a problem without [section] key: {raw}"
            sec, key = mm.group("sec"), mm.group("key")
            where = file_lines[n - 1]
            if (
                key
                in (
                    "elevenlabs_api_key",
                    "elevenlabs_agent_id",
                    "elevenlabs_get_signed_url_endpoint",
                )
                and "missing or empty" in rest
            ):
                assert where.strip() == f"[{sec}]" or where.split("=")[0].strip() == key, (
                    raw,
                    where,
                )
            else:
                assert where.split("=")[0].strip().lower() == key.lower(), (raw, where)
            assert _section_of(file_lines, n) == sec, (raw, _section_of(file_lines, n))
            if p.group(1) == "ERROR":
                named.append((n, sec, key))
        elif re.match(r"\[[^\]]*\] (has errors|appears more than once)", rest):
            sec = re.match(r"\[([^\]]*)\]", rest).group(1)  # type: ignore[union-attr]
            if "has errors" in rest:
                # (Asterisk itself cuts section names to 79 bytes, even inside a character.)
                assert any(s == sec or s[:30] == sec[:30] for _, s, _ in named), (
                    f"no line-naming error for {raw}"
                )
        elif re.search(r"reloaded with \d+ problem|is readable by every user", rest):
            continue
        else:
            raise AssertionError(f"a problem that names no line: {raw}")
    # The reload's own count of problems is zero exactly when no line-naming error was logged.
    assert (reported > 0) == bool(named), (reported, named, out)


def _section_of(lines: list[str], n: int) -> str:
    for line in reversed(lines[: n - 1] if not lines[n - 1].startswith("[") else lines[:n]):
        m = re.match(r"\[([^\]]*)\]", line)
        if m:
            return m.group(1)
    return ""


def test_random_config_files_never_hurt_and_every_error_names_its_line(
    convai_asterisk: Callable[..., Asterisk], convai_python_dir: Path
) -> None:
    ast = convai_asterisk(agents={"sim": dict(GOOD)}, dialplan=DIALPLAN_AGENT_100)
    header = f"[general]\ndebug = no\npython_path = {convai_python_dir}\n"
    count = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(conf_files())
    def one(body: str) -> None:
        nonlocal count
        count += 1
        text = header + body
        write_elevenlabs_conf(ast, text)
        _check_reload(ast, text, header.count("\n"))

    one()
    assert ast.is_running()
    print(f"{count} random elevenlabs.conf files reloaded; Asterisk up, every problem on its line")
