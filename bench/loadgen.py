"""The benchmark's load generator: many real SIP/RTP calls from one single-threaded process.

Run by bench/run.py as a child process (its own GIL, its own CPU account):

    python3 bench/loadgen.py SPEC.json RESULT.json

One UDP socket carries the SIP of every call (demultiplexed by Call-ID); each call has its own
RTP socket. RTP arrival times come from the kernel (SO_TIMESTAMPNS, read with recvmsg), so how
late this process gets round to reading a packet does not change the measured timing. Sending is
paced on an absolute 20 ms clock per call (phases staggered by the call's start time); a tick of
a few ms batches the work, which only adds a few ms of jitter to the caller's uplink (the module
tolerates 60 ms before it fills silence).

Two caller behaviours:
- ``convai``: a scripted, reactive caller. It listens (agent speech = μ-law frames that are not
  mostly digital silence), waits for the greeting to end, speaks utterance A, waits for the
  reply and talks over it after ``barge_after_s`` with utterance B (the barge-in), waits for the
  second reply to end and speaks C; the simulator then ends the call after its third turn and
  Asterisk sends BYE. A call that takes longer than ``max_call_s`` is hung up (``timeout``).
- ``playback``: a phone that sends silence and hangs up after ``hold_s``.

Standard library only, plus tests/integration/rtpcall.py's SIP parsers.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import random
import re
import select
import socket
import struct
import sys
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from rtpcall import parse_sdp, parse_sip, sip_response

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS has the same value
FRAME_NS = 20_000_000
TICK_NS = 4_000_000
SCRIPT_EVERY = 10  # ticks between script steps (40 ms)
SILENCE = b"\xff" * 160
PT_PCMU = 0
PT_DTMF = 101
# A frame is agent speech when fewer than this many of its 160 bytes are μ-law zero (0xff/0x7f).
VOICED_MAX_ZEROS = 80
AGENT_DONE_NS = 900_000_000  # agent silent this long: its turn is over
BARGE_SILENT_RUN = 10  # frames of silence that count as "the agent stopped"


def _rand(n: int = 10) -> str:
    return "".join(random.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=n))


class Call:
    """One SIP call and its RTP stream."""

    def __init__(self, gen: Gen, idx: int) -> None:
        self.gen = gen
        self.idx = idx
        self.pos = 0  # index in this generator's list
        self.call_id = f"bench-{idx}-{_rand(12)}@127.0.0.1"
        self.from_tag = _rand()
        self.branch = "z9hG4bK" + _rand(16)
        self.state = "new"  # new → inviting → up → ending → done
        self.end_by = ""
        self.to_header = ""
        self.remote_target = gen.target_uri
        self.remote_rtp: tuple[str, int] | None = None
        self.cseq = 1
        self.invite_text = ""
        self.invite_sent_ns = 0
        self.invite_tries = 0
        self.t_invite = 0
        self.t_answer = 0
        self.t_end = 0
        self.bye_sent_ns = 0
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind((gen.local_host, 0))
        sock.setblocking(False)
        self.rtp = sock
        self.rtp_port = sock.getsockname()[1]
        self.seq = random.randrange(0x10000)
        self.ts = random.randrange(1 << 32)
        self.ssrc = random.randrange(1, 1 << 32)
        self.first_tx = True
        self.tx_packets = 0
        self.tx_late = 0
        self.next_tx = 0
        self.tx_data = b""
        self.tx_off = 0
        # Received agent audio: kernel arrival time (CLOCK_REALTIME ns), unwrapped seq, voiced.
        self.rx_ns = array("q")
        self.rx_seq = array("q")
        self.rx_voiced = bytearray()
        self._last_seq = -1
        self._seq_base = 0
        self.rx_other = 0
        self.rx_no_kernel_ts = 0
        self.last_voiced_rt = 0
        self.first_voiced_rt = 0
        # Script (convai).
        self.step = "greeting"
        self.marks: dict[str, int] = {}  # name → CLOCK_REALTIME ns
        self.reply_seen_rt = 0

    # --- SIP ------------------------------------------------------------------------------------
    def _request(self, method: str, uri: str, cseq: int, to: str, body: str = "",
                 branch: str | None = None) -> str:  # fmt: skip
        g = self.gen
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {g.local_host}:{g.sip_port};branch={branch or 'z9hG4bK' + _rand()}"
            ";rport",
            "Max-Forwards: 70",
            f"From: <sip:bench@{g.local_host}:{g.sip_port}>;tag={self.from_tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:bench@{g.local_host}:{g.sip_port}>",
            "User-Agent: convai-bench",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def _sdp(self) -> str:
        h = self.gen.local_host
        return (
            f"v=0\r\no=- {random.randrange(1, 1 << 30)} 1 IN IP4 {h}\r\ns=bench\r\n"
            f"c=IN IP4 {h}\r\nt=0 0\r\nm=audio {self.rtp_port} RTP/AVP {PT_PCMU} {PT_DTMF}\r\n"
            f"a=rtpmap:{PT_PCMU} PCMU/8000\r\na=rtpmap:{PT_DTMF} telephone-event/8000\r\n"
            f"a=fmtp:{PT_DTMF} 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
        )

    def invite(self, now: int) -> None:
        to = f"<sip:{self.gen.exten}@{self.gen.remote[0]}:{self.gen.remote[1]}>"
        self.to_header = to
        self.invite_text = self._request(
            "INVITE", self.gen.target_uri, self.cseq, to, self._sdp(), self.branch
        )
        self.state = "inviting"
        self.t_invite = now
        self._send_invite(now)

    def _send_invite(self, now: int) -> None:
        self.gen.sip_send(self.invite_text)
        self.invite_sent_ns = now
        self.invite_tries += 1

    def retransmit(self, now: int) -> None:
        """RFC 3261 timer A until a provisional response arrives, then wait; timer B: give up."""
        if self.state != "inviting":
            return
        if now - self.t_invite > 32_000_000_000:
            self.fail(now, "invite_timeout")
        elif not self.gen.provisional.get(self.call_id) and (
            now - self.invite_sent_ns >= 500_000_000 * (1 << min(self.invite_tries - 1, 3))
        ):
            self._send_invite(now)

    def on_response(self, start: str, headers: dict[str, str], body: str, now: int) -> None:
        code = int(start.split()[1])
        method = headers.get("cseq", "").split()[-1] if headers.get("cseq") else ""
        if method == "BYE":
            if self.state == "ending":
                self.finish(now)
            return
        if method != "INVITE":
            return
        if code < 200:
            self.gen.provisional[self.call_id] = True
            return
        if code >= 300:
            self._ack(headers)
            if self.state == "inviting":
                self.fail(now, f"rejected {code}")
            return
        self._ack(headers)  # also for a retransmitted 200
        if self.state != "inviting":
            return
        self.to_header = headers.get("to", self.to_header)
        m = re.search(r"<([^>]+)>", headers.get("contact", ""))
        if m:
            self.remote_target = m.group(1)
        try:
            addr, port, pts = parse_sdp(body)
        except Exception:
            self.fail(now, "bad_sdp")
            return
        if PT_PCMU not in pts:
            self.fail(now, "no_pcmu")
            return
        self.remote_rtp = (addr, port)
        self.state = "up"
        self.t_answer = now
        self.next_tx = now
        self.gen.schedule_tx(self)

    def _ack(self, headers: dict[str, str]) -> None:
        cseq = headers.get("cseq", f"{self.cseq} INVITE").split()[0]
        to = headers.get("to", self.to_header)
        self.gen.sip_send(self._request("ACK", self.remote_target, int(cseq), to))

    def on_request(self, method: str, headers: dict[str, str], now: int) -> None:
        if method == "BYE":
            self.gen.sip_reply(headers, "200 OK")
            if self.state in ("up", "ending", "inviting"):
                self.end_by = self.end_by or "bye"
                self.finish(now)
        elif method == "INVITE":
            self.gen.sip_reply(headers, "200 OK", self._sdp())
        elif method in ("OPTIONS", "INFO", "UPDATE", "NOTIFY"):
            self.gen.sip_reply(headers, "200 OK")
        elif method != "ACK":
            self.gen.sip_reply(headers, "501 Not Implemented")

    def hangup(self, now: int, why: str) -> None:
        if self.state != "up":
            return
        self.end_by = why
        self.cseq += 1
        self.gen.sip_send(self._request("BYE", self.remote_target, self.cseq, self.to_header))
        self.state = "ending"
        self.bye_sent_ns = now
        self.t_end = now

    def fail(self, now: int, why: str) -> None:
        self.end_by = why
        self.state = "done"
        self.t_end = now
        self.gen.done += 1

    def finish(self, now: int) -> None:
        if self.state == "done":
            return
        if not self.t_end or self.state != "ending":
            self.t_end = now
        self.state = "done"
        self.gen.done += 1

    # --- RTP ------------------------------------------------------------------------------------
    def say(self, data: bytes) -> None:
        self.tx_data = data
        self.tx_off = 0

    @property
    def speaking(self) -> bool:
        return self.tx_off < len(self.tx_data)

    def send_frame(self) -> None:
        if self.tx_off < len(self.tx_data):
            frame = self.tx_data[self.tx_off : self.tx_off + 160]
            self.tx_off += 160
            if len(frame) < 160:
                frame += SILENCE[len(frame) :]
        else:
            frame = SILENCE
        hdr = struct.pack(
            "!BBHII",
            0x80,
            (0x80 if self.first_tx else 0) | PT_PCMU,
            self.seq & 0xFFFF,
            self.ts & 0xFFFFFFFF,
            self.ssrc,
        )
        self.first_tx = False
        self.seq += 1
        self.ts += 160
        assert self.remote_rtp is not None
        try:
            self.rtp.sendto(hdr + frame, self.remote_rtp)
            self.tx_packets += 1
        except OSError:
            pass

    def recv_one(self) -> None:
        try:
            data, anc, _flags, _addr = self.rtp.recvmsg(2048, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ICMP errors and the like
            return
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        if data[1] & 0x7F != PT_PCMU:
            self.rx_other += 1
            return
        t = 0
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                sec, nsec = struct.unpack_from("qq", cdata)
                t = sec * 1_000_000_000 + nsec
        if not t:  # no kernel timestamp: counted, so a silent fallback cannot hide
            t = time.time_ns()
            self.rx_no_kernel_ts += 1
        off = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10 and len(data) >= off + 4:
            off += 4 + 4 * ((data[off + 2] << 8) | data[off + 3])
        payload = data[off:]
        seq = (data[2] << 8) | data[3]
        if self._last_seq < 0:
            self._seq_base = 0
        else:
            delta = (seq - self._last_seq) & 0xFFFF
            if delta > 0x8000:  # reordered/old
                delta -= 0x10000
            self._seq_base += delta
        self._last_seq = seq
        voiced = payload.count(0xFF) + payload.count(0x7F) < VOICED_MAX_ZEROS
        self.rx_ns.append(t)
        self.rx_seq.append(self._seq_base)
        self.rx_voiced.append(1 if voiced else 0)
        if voiced:
            self.last_voiced_rt = t
            if not self.first_voiced_rt:
                self.first_voiced_rt = t

    # --- the scripted caller ----------------------------------------------------------------------
    def script(self, now: int, rt: int) -> None:
        g = self.gen
        if g.mode == "playback":
            if now - self.t_answer >= g.hold_ns:
                self.hangup(now, "hangup")
            return
        if now - self.t_answer >= g.max_call_ns:
            self.hangup(now, "timeout")
            return
        agent_quiet = self.last_voiced_rt and rt - self.last_voiced_rt >= AGENT_DONE_NS
        step = self.step
        if step == "greeting":
            if self.first_voiced_rt and agent_quiet:
                self.marks["a_start"] = rt
                self.say(g.utt["a"])
                self.step = "a"
        elif step == "a":
            if not self.speaking and "a_end" not in self.marks:
                self.marks["a_end"] = rt
            if "a_end" in self.marks and self.last_voiced_rt > self.marks["a_end"]:
                self.reply_seen_rt = self.reply_seen_rt or self.last_voiced_rt
                self.marks.setdefault("reply1", self.reply_seen_rt)
                if rt - self.reply_seen_rt >= g.barge_after_ns:
                    self.marks["b_start"] = rt
                    self.say(g.utt["b"])
                    self.step = "b"
        elif step == "b":
            if not self.speaking and "b_end" not in self.marks:
                self.marks["b_end"] = rt
            if "b_end" in self.marks and self.last_voiced_rt > self.marks["b_end"] and agent_quiet:
                self.marks["c_start"] = rt
                self.say(g.utt["c"])
                self.step = "c"
        elif step == "c" and not self.speaking and "c_end" not in self.marks:
            self.marks["c_end"] = rt
            # The agent says goodbye and hangs up; nothing more to do.

    # --- results ----------------------------------------------------------------------------------
    def analyse(self, rt_minus_mono: int) -> dict[str, Any]:
        n = len(self.rx_ns)
        out: dict[str, Any] = {
            "idx": self.idx,
            "end_by": self.end_by or self.state,
            "answered": bool(self.t_answer),
            "setup_ms": round((self.t_answer - self.t_invite) / 1e6, 1) if self.t_answer else None,
            "duration_s": round((self.t_end - self.t_answer) / 1e9, 3) if self.t_answer else 0.0,
            "t_answer": self.t_answer / 1e9 if self.t_answer else None,
            "t_end": self.t_end / 1e9 if self.t_end else None,
            "rx": n,
            "rx_other": self.rx_other,
            "rx_no_kernel_ts": self.rx_no_kernel_ts,
            "tx": self.tx_packets,
            "tx_late": self.tx_late,
        }
        if n >= 3:
            ns, seqs = self.rx_ns, self.rx_seq
            # Drift: least-squares slope of arrival time against seq x 20 ms.
            x0, y0 = seqs[0], ns[0]
            sx = sy = sxx = sxy = 0.0
            for i in range(n):
                x = float(seqs[i] - x0)
                y = float(ns[i] - y0)
                sx += x
                sy += y
                sxx += x * x
                sxy += x * y
            den = n * sxx - sx * sx
            slope = (n * sxy - sx * sy) / den if den else float(FRAME_NS)
            out["drift_ms_per_s"] = (slope - FRAME_NS) / FRAME_NS * 1000.0
            out["stream_s"] = (ns[-1] - ns[0]) / 1e9
            out["seq_gaps"] = sum(1 for i in range(1, n) if seqs[i] - seqs[i - 1] != 1)
            # Intervals over 30 ms (a packet 10 ms late or lost): what capacity counts.
            out["gaps_over_30ms"] = sum(1 for i in range(1, n) if ns[i] - ns[i - 1] > 30_000_000)
            # Where the long intervals are: (ms since the first packet, interval ms, seq step,
            # agent speech before/after), the 5 longest over 40 ms.
            long_iv = sorted(
                ((ns[i] - ns[i - 1], i) for i in range(1, n) if ns[i] - ns[i - 1] > 40_000_000),
                reverse=True,
            )[:5]
            out["long_intervals"] = [
                [
                    round((ns[i] - ns[0]) / 1e6, 1),
                    round(d / 1e6, 1),
                    seqs[i] - seqs[i - 1],
                    self.rx_voiced[i - 1],
                    self.rx_voiced[i],
                    round((ns[i] - rt_minus_mono) / 1e9, 4),  # CLOCK_MONOTONIC s of the late one
                ]
                for d, i in sorted(long_iv, key=lambda x: x[1])
            ]
            if self.t_answer:
                out["first_packet_ms"] = round((ns[0] - rt_minus_mono - self.t_answer) / 1e6, 1)
            # Where the intervals that strayed over 1 ms are (ms since the first packet, µs).
            out["over_1ms_at"] = [
                [round((ns[i] - ns[0]) / 1e6, 1), abs(ns[i] - ns[i - 1] - FRAME_NS) // 1000]
                for i in range(1, n)
                if abs(ns[i] - ns[i - 1] - FRAME_NS) > 1_000_000
            ][:40]
            # Agent speech onsets, as the caller hears them (ms since the first packet).
            v = self.rx_voiced
            out["speech_onsets_ms"] = [
                round((ns[i] - ns[0]) / 1e6, 1)
                for i in range(1, n)
                if v[i] and not any(v[max(0, i - 25) : i])
            ][:20]
        if self.first_voiced_rt and self.t_answer:
            out["agent_heard_ms"] = round(
                (self.first_voiced_rt - rt_minus_mono - self.t_answer) / 1e6, 1
            )
        m = self.marks
        if "b_start" in m:
            out["barge_e2e_ms"] = self._silence_after(m["b_start"])
        if "a_end" in m and "reply1" in m:
            out["reply1_after_ms"] = round((m["reply1"] - m["a_end"]) / 1e6, 1)
        out["script"] = self.step
        return out

    def _silence_after(self, rt: int) -> float | None:
        """Caller starts talking over the agent (rt) → the first of BARGE_SILENT_RUN silent
        frames: what the caller experiences, VAD and uplink chunking included."""
        ns, v = self.rx_ns, self.rx_voiced
        run = 0
        for i in range(len(ns)):
            if ns[i] < rt:
                continue
            if v[i]:
                run = 0
                continue
            run += 1
            if run == BARGE_SILENT_RUN:
                return round((ns[i - BARGE_SILENT_RUN + 1] - rt) / 1e6, 1)
        return None

    def deviations_us(self) -> list[int]:
        ns = self.rx_ns
        return [abs(ns[i] - ns[i - 1] - FRAME_NS) // 1000 for i in range(1, len(ns))]


class Gen:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.mode = spec["mode"]
        self.remote = (spec["sip_host"], int(spec["sip_port"]))
        self.exten = spec["exten"]
        self.target_uri = f"sip:{self.exten}@{self.remote[0]}:{self.remote[1]}"
        self.local_host = spec.get("local_host", "127.0.0.1")
        self.n = int(spec["calls"])
        self.cps = float(spec.get("cps", 25.0))
        self.hold_ns = int(float(spec.get("hold_s", 20.0)) * 1e9)
        self.max_call_ns = int(float(spec.get("max_call_s", 60.0)) * 1e9)
        self.barge_after_ns = int(float(spec.get("barge_after_s", 1.2)) * 1e9)
        self.utt = {k: Path(p).read_bytes() for k, p in spec.get("utterances", {}).items()}
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sip.bind((self.local_host, 0))
        self.sip.setblocking(False)
        self.sip_port = self.sip.getsockname()[1]
        first, step = int(spec.get("first_idx", 0)), int(spec.get("idx_step", 1))
        self.calls = [Call(self, first + i * step) for i in range(self.n)]
        for pos, c in enumerate(self.calls):
            c.pos = pos
        self.by_id = {c.call_id: c for c in self.calls}
        self.by_fd = {c.rtp.fileno(): c for c in self.calls}
        self.provisional: dict[str, bool] = {}
        self.heap: list[tuple[int, int]] = []
        self.done = 0
        self.ticks = 0
        self.late_ticks = 0
        self.max_tick_lag_ns = 0

    def sip_send(self, text: str) -> None:
        with contextlib.suppress(OSError):
            self.sip.sendto(text.encode(), self.remote)

    def sip_reply(self, headers: dict[str, str], status: str, body: str = "") -> None:
        contact = f"sip:bench@{self.local_host}:{self.sip_port}"
        self.sip_send(sip_response(headers, status, contact, body))

    def schedule_tx(self, call: Call) -> None:
        heapq.heappush(self.heap, (call.next_tx, call.pos))

    def on_sip(self, now: int) -> None:
        while True:
            try:
                data, _ = self.sip.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            start, headers, body = parse_sip(data)
            call = self.by_id.get(headers.get("call-id", ""))
            if start.startswith("SIP/2.0 "):
                if call:
                    call.on_response(start, headers, body, now)
                continue
            method = start.split(" ", 1)[0]
            if call is None:
                if method != "ACK":
                    self.sip_reply(headers, "481 Call/Transaction Does Not Exist")
                continue
            call.on_request(method, headers, now)

    def run(self) -> dict[str, Any]:
        ep = select.epoll()
        sip_fd = self.sip.fileno()
        ep.register(sip_fd, select.EPOLLIN)
        for fd in self.by_fd:
            ep.register(fd, select.EPOLLIN)
        t0 = time.monotonic_ns()
        rt_minus_mono = time.time_ns() - time.monotonic_ns()
        interval = int(1e9 / self.cps) if self.cps > 0 else 0
        # Several generators share one ramp: this one's calls start this much later.
        t0_calls = t0 + int(float(self.spec.get("ramp_offset_s", 0.0)) * 1e9)
        started = 0
        next_tick = t0
        deadline = t0 + int(self.n / max(self.cps, 1e-9) * 1e9) + self.max_call_ns + 30_000_000_000
        cpu0 = time.process_time()
        while self.done < self.n:
            now = time.monotonic_ns()
            if now < next_tick:
                time.sleep((next_tick - now) / 1e9)
                now = time.monotonic_ns()
            lag = now - next_tick
            if lag > self.max_tick_lag_ns:
                self.max_tick_lag_ns = lag
            if lag > 20_000_000:
                self.late_ticks += 1
            next_tick += TICK_NS
            if next_tick < now - 100_000_000:
                next_tick = now
            self.ticks += 1
            # Everything readable, one datagram per RTP socket per pass (level-triggered).
            while True:
                events = ep.poll(0)
                if not events:
                    break
                for fd, _ in events:
                    if fd == sip_fd:
                        self.on_sip(now)
                    else:
                        c = self.by_fd.get(fd)
                        if c is not None:
                            c.recv_one()
            # New calls, on the ramp.
            while started < self.n and now >= t0_calls + started * interval:
                self.calls[started].invite(now)
                started += 1
            # RTP out, on each call's absolute 20 ms clock.
            heap = self.heap
            while heap and heap[0][0] <= now:
                due, pos = heapq.heappop(heap)
                c = self.calls[pos]
                if c.state != "up":
                    continue
                if now - due > 60_000_000:  # this process fell behind: resynchronise
                    c.tx_late += 1
                    due = now
                c.send_frame()
                heapq.heappush(heap, (due + FRAME_NS, pos))
            if self.ticks % SCRIPT_EVERY == 0:
                rt = now + rt_minus_mono
                for c in self.calls:
                    if c.state == "up":
                        c.script(now, rt)
                    elif c.state == "inviting":
                        c.retransmit(now)
                    elif c.state == "ending" and now - c.bye_sent_ns > 5_000_000_000:
                        c.finish(now)  # no 200 to our BYE: count it as over
            if now > deadline:
                for c in self.calls:
                    if c.state != "done":
                        c.fail(now, "deadline")
                break
        cpu = time.process_time() - cpu0
        # Late datagrams (the last frames before BYE) are still queued: take them.
        for c in self.calls:
            for _ in range(64):
                before = len(c.rx_ns)
                c.recv_one()
                if len(c.rx_ns) == before:
                    break
        ep.close()
        return self.results(t0, rt_minus_mono, cpu)

    def results(self, t0: int, rt_minus_mono: int, cpu: float) -> dict[str, Any]:
        per_call = [c.analyse(rt_minus_mono) for c in self.calls]
        devs: list[int] = []
        per_call_p99: list[int] = []
        for c in self.calls:
            d = c.deviations_us()
            if d:
                devs.extend(d)
                s = sorted(d)
                per_call_p99.append(s[min(len(s) - 1, int(len(s) * 0.99))])
        devs.sort()

        def pct(p: float) -> int | None:
            return devs[min(len(devs) - 1, int(len(devs) * p))] if devs else None

        drifts = [pc["drift_ms_per_s"] for pc in per_call if "drift_ms_per_s" in pc]
        return {
            "mode": self.mode,
            "calls": self.n,
            "t0": t0 / 1e9,
            "loadgen_cpu_s": round(cpu, 3),
            "loadgen_ticks": self.ticks,
            "loadgen_late_ticks": self.late_ticks,
            "loadgen_max_tick_lag_ms": round(self.max_tick_lag_ns / 1e6, 2),
            "rtp": {
                "intervals": len(devs),
                "dev_p50_us": pct(0.50),
                "dev_p99_us": pct(0.99),
                "dev_p999_us": pct(0.999),
                "dev_max_us": devs[-1] if devs else None,
                "worst_call_p99_us": max(per_call_p99) if per_call_p99 else None,
                "over_1ms": sum(1 for d in devs if d > 1000),
                "over_5ms": sum(1 for d in devs if d > 5000),
                "drift_ms_per_s_mean": sum(drifts) / len(drifts) if drifts else None,
                "drift_ms_per_s_max_abs": max((abs(d) for d in drifts), default=None),
            },
            "per_call": per_call,
        }


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(sys.argv[1]).read_text())
    if spec.get("autogroup_nice"):
        # Under CONFIG_SCHED_AUTOGROUP a process's nice only counts inside its session.
        with contextlib.suppress(OSError):
            Path("/proc/self/autogroup").write_text(str(spec["autogroup_nice"]))
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, max(soft, 4 * int(spec["calls"]) + 256))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass
    gen = Gen(spec)
    res = gen.run()
    # Every interval's deviation (µs), so several generators' results can be merged exactly.
    devs = array("q")
    for c in gen.calls:
        devs.extend(c.deviations_us())
    with open(sys.argv[2] + ".devs", "wb") as f:
        devs.tofile(f)
    tmp = Path(sys.argv[2] + ".tmp")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
