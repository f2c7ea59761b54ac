"""The phase machine of a conversation (convai/lifecycle.py): pure, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convai import lifecycle as lc
from convai import protocol as p
from convai.lifecycle import Lifecycle, Phase, Status

R = p.EndReason


def test_the_normal_path() -> None:
    life = Lifecycle()
    assert life.phase is Phase.CONNECTING and life.live and not life.talked
    life.to(Phase.TALKING)
    assert life.live and life.talked
    assert life.end(R.COMPLETED, "server closed the connection with 1000")
    assert life.phase is Phase.CLOSING and not life.live
    life.close_code = 1000
    life.to(Phase.DONE)
    assert life.outcome() == lc.Outcome(
        Status.COMPLETED, R.COMPLETED, "server closed the connection with 1000", 1000, True
    )


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (Phase.CONNECTING, Phase.DONE),  # every end is decided first
        (Phase.TALKING, Phase.CONNECTING),
        (Phase.TALKING, Phase.TALKING),
        (Phase.CLOSING, Phase.TALKING),
        (Phase.DONE, Phase.CLOSING),
    ],
)
def test_moves_the_machine_does_not_have(start: Phase, target: Phase) -> None:
    life = Lifecycle()
    path = {
        Phase.CONNECTING: [],
        Phase.TALKING: [Phase.TALKING],
        Phase.CLOSING: [Phase.CLOSING],
        Phase.DONE: [Phase.CLOSING, Phase.DONE],
    }[start]
    for phase in path:
        if phase is Phase.CLOSING:
            life.end(R.COMPLETED, "x")
        else:
            life.to(phase)
    assert life.phase is start
    with pytest.raises(
        RuntimeError, match=f"no move from {start.name} to {target.name}|entered with end"
    ):
        life.to(target)


def test_closing_only_through_end() -> None:
    """Found by the property test below: to(CLOSING) made a CLOSING without a decision."""
    life = Lifecycle()
    with pytest.raises(RuntimeError, match="CLOSING is entered with end"):
        life.to(Phase.CLOSING)
    assert life.phase is Phase.CONNECTING and life.ending is None


def test_the_first_decision_stands() -> None:
    life = Lifecycle()
    life.to(Phase.TALKING)
    assert life.end(R.CALLER_HANGUP, "caller hung up", (1000, "caller hung up"))
    assert not life.end(R.SERVER_ERROR, "server closed the connection with 1011")
    life.close_code = 1011  # the close that followed fills in the code only
    out = life.outcome()
    assert (out.status, out.reason, out.detail, out.close_code) == (
        Status.HANGUP,
        R.CALLER_HANGUP,
        "caller hung up",
        1011,
    )
    assert life.ending == lc.Ending(R.CALLER_HANGUP, "caller hung up", (1000, "caller hung up"))


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (R.COMPLETED, Status.COMPLETED),
        (R.AGENT_ENDED_CALL, Status.COMPLETED),
        (R.MAX_DURATION, Status.COMPLETED),
        (R.CALLER_HANGUP, Status.HANGUP),
        (R.TRANSFER, Status.TRANSFER),
        (R.NETWORK_LOSS, Status.FAILED),
        (R.MESSAGE_TOO_BIG, Status.FAILED),
        (R.SHUTDOWN, Status.FAILED),
        (R.CONNECT_FAILED, Status.FAILED),
    ],
)
def test_status_of_each_reason(reason: p.EndReason, status: Status) -> None:
    assert lc.status_for(reason) is status


@pytest.mark.parametrize(
    ("talked", "reason", "play_out"),
    [
        (True, R.COMPLETED, True),
        (True, R.AGENT_ENDED_CALL, True),
        (True, R.MAX_DURATION, True),
        (True, R.NETWORK_LOSS, True),  # issue 11 (4): a reset does not cut received words
        (True, R.TRANSFER, True),
        (True, R.SERVER_ERROR, False),  # the server broke it off: the fallback at once
        (True, R.POLICY_VIOLATION, False),
        (True, R.TIMEOUT, False),
        (True, R.MESSAGE_TOO_BIG, False),
        (True, R.CALLER_HANGUP, False),  # no one to hear them
        (True, R.SHUTDOWN, False),  # Asterisk must stop promptly
        (False, R.NETWORK_LOSS, False),  # nothing was said
        (False, R.UNSUPPORTED_FORMAT, False),
    ],
)
def test_play_out_rule(talked: bool, reason: p.EndReason, play_out: bool) -> None:
    life = Lifecycle()
    if talked:
        life.to(Phase.TALKING)
    life.end(reason, "x")
    assert life.outcome().play_out is play_out


def outcome(**kw: object) -> tuple[p.EndReason, str]:
    args: dict[str, object] = {
        "rcvd": None,
        "sent": None,
        "we_closed_first": False,
        "error": None,
        "saw_end_call": False,
        "max_message_bytes": 16 * 2**20,
    }
    args.update(kw)
    return lc.close_outcome(**args)  # type: ignore[arg-type]


def test_close_outcome_message_too_big_names_the_limit() -> None:
    sent = (1009, "frame with 17825881 bytes exceeds limit of 16777216 bytes")
    reason, detail = outcome(sent=sent, we_closed_first=True)
    assert reason is R.MESSAGE_TOO_BIG
    assert detail == (
        "the server sent a message over the 16777216-byte limit (16 MiB); closed with 1009"
        " (frame with 17825881 bytes exceeds limit of 16777216 bytes)"
    )


def test_close_outcome_other_failures_of_ours() -> None:
    assert outcome(sent=(1011, "keepalive ping timeout"), we_closed_first=True) == (
        R.NETWORK_LOSS,
        "the server stopped answering pings (keepalive ping timeout)",
    )
    assert outcome(sent=(1007, "invalid start byte"), we_closed_first=True) == (
        R.SERVER_ERROR,
        "closed the connection with 1007 (invalid start byte)",
    )


def test_close_outcome_from_the_server() -> None:
    assert outcome() == (R.NETWORK_LOSS, "connection lost without a close frame")
    assert outcome(rcvd=(1000, "bye")) == (
        R.COMPLETED,
        "server closed the connection with 1000 (bye)",
    )
    # our close echoed after theirs: the server closed first
    assert outcome(rcvd=(1011, ""), sent=(1011, "")) == (
        R.SERVER_ERROR,
        "server closed the connection with 1011",
    )
    assert outcome(rcvd=(1000, ""), saw_end_call=True) == (
        R.AGENT_ENDED_CALL,
        "the agent ended the call",
    )
    err = p.ErrorEvent(1002, "transport_receive_timeout", "no audio")
    assert outcome(rcvd=(1002, ""), error=err) == (R.TIMEOUT, "transport_receive_timeout: no audio")


def test_the_servers_close_reason_is_made_printable() -> None:
    assert outcome(rcvd=(1011, "boom\r\nERROR[1]: forged")) == (
        R.SERVER_ERROR,
        "server closed the connection with 1011 (boom\\x0d\\x0aERROR[1]: forged)",
    )


@settings(max_examples=500, deadline=None, database=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("to"), st.sampled_from(list(Phase))),
            st.tuples(st.just("end"), st.sampled_from(list(R))),
        ),
        max_size=12,
    )
)
def test_any_sequence_keeps_the_invariants(ops: list[tuple[str, object]]) -> None:
    """Whatever is asked in whatever order: the phase only moves along the machine, the end
    is decided at most once and never changes, and an ending exists exactly from CLOSING on."""
    life = Lifecycle()
    first: lc.Ending | None = None
    order = [Phase.CONNECTING, Phase.TALKING, Phase.CLOSING, Phase.DONE]
    for kind, arg in ops:
        before = life.phase
        if kind == "end":
            assert isinstance(arg, p.EndReason)
            decided = life.end(arg, arg.value)
            assert decided == (first is None and before in lc.LIVE)
            if decided:
                first = life.ending
        else:
            assert isinstance(arg, Phase)
            try:
                life.to(arg)
            except RuntimeError:
                assert life.phase is before
        assert order.index(life.phase) >= order.index(before)
        assert life.ending == first
        assert (life.ending is not None) == (life.phase in (Phase.CLOSING, Phase.DONE))
