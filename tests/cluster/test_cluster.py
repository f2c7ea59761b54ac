"""The scale-out reference, end to end: sipp callers -> Kamailio (deploy/kamailio/kamailio.cfg)
-> three Asterisk nodes running the module -> the simulator, every host on its own loopback
address (tests/cluster/cluster.py). Each call says "hello world", stays on the line for a fixed
time and hangs up; a call *completes* when its INVITE was answered, its BYE (sent through
Kamailio along the recorded route) got a 200, and the node that held it logged a conversation
that reached the agent (status HANGUP, reason caller_hangup, a conversation id).

Run with ``bash scripts/cluster-test.sh``; the figures go to out/cluster-results.json.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from typing import Any

from asterisk import AsteriskError
from calls_util import AmiEvents, log_time

from cluster import PROXY_IP, Cluster, Kamailio, Node, SippRun, wait_until


def _completed_on_nodes(farm: Cluster, run: SippRun, nodes: list[Node]) -> dict[str, str]:
    """Call-ID -> node name for every completed call of ``run``, checked against the nodes'
    own records: each call is on exactly one node, and reached the agent there."""

    def logged() -> set[str]:
        return set().union(*(farm.node_calls(n) for n in nodes))

    # A node logs a call's end (its h extension) just after it answered the BYE.
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: set(run.completed) <= logged(), 10, "the nodes' CALL end lines")
    where: dict[str, str] = {}
    for n in nodes:
        for callid, end in farm.node_calls(n).items():
            if callid not in run.answered:
                continue
            assert callid not in where, f"{callid} on {where[callid]} and {n.name}"
            where[callid] = n.name
            if callid in run.completed:
                assert (end["status"], end["reason"]) == ("HANGUP", "caller_hangup"), end["line"]
                assert end["conv"].startswith("conv_"), end["line"]
    missing = set(run.completed) - set(where)
    assert not missing, f"completed calls no node logged: {sorted(missing)}"
    return where


def _dispatched(farm: Cluster, since: float) -> list[tuple[float, str, str]]:
    """(time, Call-ID, node URI) of every INVITE Kamailio dispatched since ``since``."""
    assert farm.kamailio is not None
    return [
        (t, m.group(1), m.group(2))
        for t, m in farm.kamailio.matching(r"dispatch (\S+) to (\S+)", since)
    ]


def _failovers(farm: Cluster, since: float) -> list[tuple[float, str, str]]:
    assert farm.kamailio is not None
    return [
        (t, m.group(1), m.group(2))
        for t, m in farm.kamailio.matching(r"failover (\S+) to (\S+) after", since)
    ]


def _final_destinations(farm: Cluster, since: float) -> dict[str, str]:
    """Call-ID -> the node URI Kamailio last sent its INVITE to (after any failover)."""
    events = sorted(_dispatched(farm, since) + _failovers(farm, since))
    return {callid: uri for _, callid, uri in events}


def test_calls_spread_over_all_nodes_and_all_complete(
    farm: Cluster, results: dict[str, Any]
) -> None:
    """30 calls, 10 per second, 5 s each: call-load dispatching spreads them evenly (each new
    call goes to the node with the fewest active calls), every call completes, the answer's
    SDP points the caller's media at the node itself (Kamailio carries signalling only), and
    the node heard the caller. Measures Kamailio's CPU per call from /proc."""
    k = farm.kamailio
    assert k is not None and farm.sim is not None
    # Kamailio's idle CPU (timers, OPTIONS probes), to subtract from the busy figure.
    idle0, ti = k.cpu_ns(), time.monotonic()
    time.sleep(3)
    idle_rate = (k.cpu_ns() - idle0) / (time.monotonic() - ti)

    amis = {n.name: AmiEvents(n.ast) for n in farm.nodes}
    try:
        since = time.time()
        cpu0, t0 = k.cpu_ns(), time.monotonic()
        run = farm.calls(30, rate=10, duration_ms=5000, name="spread").wait()
        busy_ns = k.cpu_ns() - cpu0 - idle_rate * (time.monotonic() - t0)
        for n in farm.nodes:
            wait_until(lambda n=n: not farm.live_calls(n), 10, f"{n.name} calls ended")
        ends = {
            name: ami.wait(
                "ElevenLabsConvAIEnd",
                count=len(set(farm.node_calls(n)) & set(run.answered)),
                timeout=10,
            )
            for (name, ami), n in zip(amis.items(), farm.nodes, strict=True)
        }
    finally:
        for ami in amis.values():
            ami.close()

    assert run.returncode == 0, run.output[-2000:]
    assert len(run.answered) == 30 and not run.failed, (len(run.answered), run.failed)
    assert run.stat("Successful call") == 30 and run.stat("Failed call") == 0
    where = _completed_on_nodes(farm, run, farm.nodes)
    per_node = {n.name: sum(1 for v in where.values() if v == n.name) for n in farm.nodes}
    # The nodes' AMI agrees: one ElevenLabsConvAIEnd (HANGUP) per call it held.
    ami_counts = {
        name: sum(1 for e in evs if e.get("Status") == "HANGUP") for name, evs in ends.items()
    }
    assert ami_counts == per_node, (ami_counts, per_node)
    assert sum(per_node.values()) == 30
    assert min(per_node.values()) > 0 and max(per_node.values()) - min(per_node.values()) <= 1, (
        per_node
    )

    # Kamailio dispatched each call once, to the node that then held it; no failover.
    dispatched = _dispatched(farm, since)
    assert sorted(c for _, c, _ in dispatched) == sorted(run.answered)
    for _, callid, uri in dispatched:
        assert farm.node_of(uri).name == where[callid]
    assert not _failovers(farm, since)

    # Media: the SDP answer carries the node's own address, never Kamailio's, and the
    # caller's RTP reached the node (the simulator heard "hello world" in every call).
    for callid, node in where.items():
        ip = next(n.ast.bind_ip for n in farm.nodes if n.name == node)
        assert run.media[callid] == ip != PROXY_IP, (callid, run.media[callid], node)
    convs = {c.conversation_id: c for c in farm.sim.conversations}
    for n in farm.nodes:
        for end in farm.node_calls(n).values():
            if end["conv"] in convs:
                rec = convs[end["conv"]]
                assert rec.user_transcripts, f"{n.name} did not hear the caller: {end['line']}"

    results["spread_calls_per_node"] = per_node
    results["kamailio_cpu_us_per_call"] = round(busy_ns / 30 / 1000, 1)
    results["kamailio_idle_cpu_ms_per_s"] = round(idle_rate / 1e6, 2)
    print(f"calls per node: {per_node}; Kamailio CPU per call {busy_ns / 30 / 1000:.0f} µs")


def test_node_killed_mid_run_fails_over_and_comes_back(
    farm: Cluster, results: dict[str, Any]
) -> None:
    """45 calls at 3 per second, 8 s each; node2's Asterisk is SIGKILLed while it holds calls.
    Its live calls are lost (nothing can move a live media session); every other call
    completes. Before Kamailio has marked node2 down, an INVITE sent there times out and is
    retried on another node: the caller sees no failure. Once it is marked down, new calls go
    only to the live nodes. Then node2 comes back, the probes bring it back in, and it
    receives calls again."""
    k = farm.kamailio
    assert k is not None
    victim = farm.nodes[1]
    since = time.time()
    run = farm.calls(45, rate=3, duration_ms=8000, name="kill")
    wait_until(lambda: len(farm.live_calls(victim)) >= 3, 20, "node2 holding 3 calls")
    t_kill = farm.kill(victim)
    down = wait_until_value(
        lambda: k.matching(rf"node down: {victim.uri}$", t_kill), 30, "node2 marked down"
    )
    t_down = down[0][0]
    down_flags = k.states()[victim.uri]
    assert down_flags.startswith("I"), down_flags
    run.wait()

    # Exactly the calls node2 held at the kill are lost: answered by node2 (Kamailio's last
    # destination for them) and not hung up before the kill. Every other call completed.
    final = _final_destinations(farm, since)
    lost = {
        c
        for c, uri in final.items()
        if uri == victim.uri and c in run.answered and run.completed.get(c, t_kill + 1) > t_kill
    }
    assert lost and farm.live_calls(victim) <= lost, (lost, farm.live_calls(victim))
    assert len(run.answered) == 45, f"INVITEs that failed: {45 - len(run.answered)}"
    assert run.failed == lost, (sorted(run.failed), sorted(lost))
    where = _completed_on_nodes(farm, run, farm.nodes)
    assert set(where) == set(run.completed)
    assert all(run.completed[c] < t_kill for c, n in where.items() if n == victim.name)

    # Before detection: INVITEs sent to node2 after the kill were retried elsewhere and
    # completed.
    failovers = [f for f in _failovers(farm, t_kill) if f[0] <= t_down + 0.5]
    assert failovers, "no INVITE reached node2 between the kill and its detection"
    for _, callid, uri in failovers:
        assert uri != victim.uri and callid in run.completed, (callid, uri)
    # After detection: nothing more was dispatched to node2.
    late = [d for d in _dispatched(farm, t_down + 0.01) if d[2] == victim.uri]
    assert not late, late
    after = [c for t, c, _ in _dispatched(farm, t_down) if t > t_down]
    assert after and all(c in run.completed for c in after), after

    # The node comes back: restarted, probed back in, and it takes calls again.
    t_booted = farm.restart(victim)
    t_up = k.wait_state(victim.uri, active=True, timeout=30)
    back_since = time.time()
    back = farm.calls(6, rate=3, duration_ms=3000, name="back").wait()
    assert back.returncode == 0 and len(back.completed) == 6 and not back.failed, back.output
    back_where = _completed_on_nodes(farm, back, farm.nodes)
    assert sum(1 for v in back_where.values() if v == victim.name) >= 2, back_where
    assert all(c in back.completed for _, c, _ in _dispatched(farm, back_since))

    results["kill_detection_s"] = round(t_down - t_kill, 2)
    results["kill_dispatcher_flags"] = down_flags
    results["kill_calls_lost"] = len(run.failed)
    results["kill_calls_on_node_at_kill"] = len(lost)
    results["kill_calls_completed"] = len(run.completed)
    results["kill_invite_failovers_before_detection"] = len(failovers)
    first_sent = {c: t for t, c, _ in reversed(_dispatched(farm, since))}
    results["kill_failover_answer_delay_s"] = [
        round(run.answered[c] - first_sent[c], 2) for _, c, _ in failovers
    ]
    results["recovery_probe_s"] = round(t_up - t_booted, 2)
    results["recovery_calls_on_node"] = sum(1 for v in back_where.values() if v == victim.name)
    print(
        f"detection {t_down - t_kill:.2f} s, lost {len(run.failed)} (node2 held {len(lost)}),"
        f" {len(failovers)} INVITE failover(s); back in {t_up - t_booted:.2f} s"
    )


def test_node_stopping_gracefully_fails_over_on_5xx(farm: Cluster, results: dict[str, Any]) -> None:
    """node3 gets `core stop gracefully` while it holds calls: it takes no new call (INVITEs
    get a 5xx, the probes a 503). INVITEs Kamailio still sends it are retried on another node,
    the probes mark it down, its own calls finish normally, and then Asterisk exits. No call
    fails."""
    k = farm.kamailio
    assert k is not None
    node = farm.nodes[2]
    run = farm.calls(24, rate=3, duration_ms=6000, name="graceful")
    wait_until(lambda: len(farm.live_calls(node)) >= 2, 20, "node3 holding 2 calls")
    held = farm.live_calls(node)
    t_stop = time.time()

    # The CLI command returns only when Asterisk exits: send it from a thread.
    def stop_gracefully() -> None:
        with contextlib.suppress(AsteriskError, subprocess.TimeoutExpired):
            node.ast.cli("core stop gracefully", timeout=60)

    stopper = threading.Thread(target=stop_gracefully)
    stopper.start()
    down = wait_until_value(
        lambda: k.matching(rf"node down: {node.uri}$", t_stop), 30, "node3 marked down"
    )
    run.wait()
    proc = node.ast.proc
    assert proc is not None
    proc.wait(timeout=30)
    stopper.join(timeout=5)

    assert run.returncode == 0, run.output[-2000:]
    assert len(run.completed) == 24 and not run.failed, (len(run.completed), run.failed)
    where = _completed_on_nodes(farm, run, farm.nodes)
    assert held and all(where[c] == node.name for c in held), held
    # INVITEs that reached node3 after the stop were refused with a 5xx and retried elsewhere.
    refused = [
        (t, m.group(1), m.group(2), int(m.group(3)))
        for t, m in k.matching(r"failover (\S+) to (\S+) after (\d+)", t_stop)
    ]
    assert refused, "no INVITE reached node3 while it was stopping"
    for _, callid, uri, code in refused:
        assert 500 <= code < 600 and uri != node.uri and where[callid] != node.name, (callid, code)
    late = [d for d in _dispatched(farm, down[0][0] + 0.01) if d[2] == node.uri]
    assert not late, late
    farm.restart(node)
    k.wait_state(node.uri, active=True, timeout=30)
    results["graceful_failovers_5xx"] = sorted({code for *_, code in refused})
    results["graceful_failover_count"] = len(refused)
    results["graceful_detection_s"] = round(down[0][0] - t_stop, 2)
    results["graceful_calls_finished_on_node"] = len(held)


def test_rolling_reload_while_calls_run(farm: Cluster, results: dict[str, Any]) -> None:
    """`elevenlabs reload` rolled across the nodes, one after the other, while 24 calls (2 per
    second, 6 s each, with a re-INVITE 2 s in) run: no call fails, and calls that start on a
    node after its reload run with the new configuration (a dynamic variable the simulator
    receives)."""
    assert farm.sim is not None
    new_conf = farm.elevenlabs_conf(dynamic_variable="config_release=2")
    run = farm.calls(24, rate=2, duration_ms=6000, name="reload", reinvite_at_ms=2000)
    reloaded: dict[str, tuple[float, float]] = {}  # node -> (just before, just after) its reload
    time.sleep(2)
    for n in farm.nodes:
        path = n.ast.etc / "elevenlabs.conf"
        mtime = path.stat().st_mtime
        path.write_text(new_conf)
        os.chmod(path, 0o640)
        os.utime(path, (mtime + 2, mtime + 2))
        before = time.time()
        out = n.ast.cli("elevenlabs reload")
        assert "reloaded" in out and "1 agent(s)" in out, out
        reloaded[n.name] = (before, time.time())
        time.sleep(3)
    run.wait()

    assert run.returncode == 0, run.output[-2000:]
    assert len(run.completed) == 24 and not run.failed, (len(run.completed), run.failed)
    # Each call's re-INVITE, 2 s in, followed the recorded route to its node and was answered
    # there (any other node would have refused it: it knows no such dialog).
    assert set(run.reinvited) == set(run.answered), set(run.answered) - set(run.reinvited)
    where = _completed_on_nodes(farm, run, farm.nodes)
    convs = {c.conversation_id: c for c in farm.sim.conversations}
    # A call takes its configuration when the application starts: after its CALL start line,
    # before its conversation reaches the simulator. Calls in between are not judged.
    new_per_node = dict.fromkeys(reloaded, 0)
    for n in farm.nodes:
        before, after = reloaded[n.name]
        starts = farm.node_calls(n, "start")
        for callid, end in farm.node_calls(n).items():
            if callid not in where:
                continue
            rec = convs[end["conv"]]
            dyn = (rec.init or {}).get("dynamic_variables") or {}
            if log_time(starts[callid]["line"]) > after + 0.01:
                assert dyn.get("config_release") == "2", (n.name, dyn)
                new_per_node[n.name] += 1
            elif rec.started_at < before:
                assert "config_release" not in dyn, (n.name, dyn)
    assert all(v > 0 for v in new_per_node.values()), new_per_node
    results["reload_calls_completed"] = len(run.completed)
    results["reload_calls_failed"] = len(run.failed)
    results["reload_new_config_calls_per_node"] = new_per_node


def test_drain_a_node_for_maintenance(farm: Cluster, results: dict[str, Any]) -> None:
    """Draining loses nothing: node1 is disabled in the dispatcher (no new calls, no probes),
    then `core stop when convenient` lets its live calls finish and Asterisk exits; the other
    nodes take the new calls. After maintenance it is enabled again."""
    k = farm.kamailio
    assert k is not None
    node = farm.nodes[0]
    run = farm.calls(18, rate=3, duration_ms=5000, name="drain")
    wait_until(lambda: len(farm.live_calls(node)) >= 2, 20, "node1 holding 2 calls")
    k.rpc("dispatcher.set_state", "d", "1", node.uri)
    t_drain = time.time()
    drained_flags = k.states()[node.uri]
    assert drained_flags.startswith("D"), drained_flags
    held = farm.live_calls(node)
    node.ast.cli("core stop when convenient")
    proc = node.ast.proc
    assert proc is not None
    proc.wait(timeout=30)
    t_stopped = time.time()
    run.wait()

    assert run.returncode == 0, run.output[-2000:]
    assert len(run.completed) == 18 and not run.failed, (len(run.completed), run.failed)
    where = _completed_on_nodes(farm, run, farm.nodes)
    assert all(where[c] == node.name for c in held)
    late = [d for d in _dispatched(farm, t_drain + 0.01) if d[2] == node.uri]
    assert not late, late
    farm.restart(node)
    k.rpc("dispatcher.set_state", "ap", "1", node.uri)
    k.wait_state(node.uri, active=True, timeout=5)
    results["drain_calls_finished_on_node"] = len(held)
    results["drain_dispatcher_flags"] = drained_flags
    results["drain_node_stopped_after_s"] = round(t_stopped - t_drain, 2)


def test_a_full_farm_refuses_calls_with_503(farm: Cluster, results: dict[str, Any]) -> None:
    """Every node at its `maxload` (2 here, 200 in deploy/kamailio/dispatcher.list): Kamailio
    refuses the next call at once with a 503, rather than overloading a node; the calls it
    took all complete."""
    k = farm.kamailio
    assert k is not None
    _reload_list(k, maxload=2)
    try:
        since = time.time()
        run = farm.calls(9, rate=20, duration_ms=4000, name="full").wait()
        refused = {m.group(1) for _, m in k.matching(r"no node available for (\S+)$", since)}
        assert len(run.answered) == 6 and len(run.completed) == 6, run.output[-2000:]
        assert len(refused) == 3 and not refused & set(run.answered), refused
        assert run.stat("Failed call") == 3
        where = _completed_on_nodes(farm, run, farm.nodes)
        per_node = {n.name: sum(1 for v in where.values() if v == n.name) for n in farm.nodes}
        assert set(per_node.values()) == {2}, per_node
    finally:
        _reload_list(k, maxload=200)
    results["full_farm_refused_503"] = len(refused)


def _reload_list(k: Kamailio, maxload: int) -> None:
    """Rewrite dispatcher.list with ``maxload`` and ``kamcmd dispatcher.reload`` it (the
    module takes one reload per 5 s and refuses the others: retry until it shows)."""
    k.maxload = maxload
    k.write_list()

    def reloaded() -> bool:
        with contextlib.suppress(RuntimeError):
            k.rpc("dispatcher.reload")
        if k.rpc("dispatcher.list").count(f"MAXLOAD: {maxload}") == len(k.nodes):
            return True
        time.sleep(0.5)
        return False

    wait_until(reloaded, 15, f"maxload {maxload} in the dispatcher")
    for n in k.nodes:
        k.wait_state(n.uri, active=True, timeout=15)


def wait_until_value(predicate: Any, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
