"""A minimal SIP user agent over UDP for tests: one outgoing call, no authentication.

INVITE (SDP with one codec plus telephone-event) / 100..200 / ACK, RTP sent from a raw payload
with 20 ms pacing on an absolute clock, every received RTP packet recorded with its arrival time
(``time.monotonic_ns()``) and payload, BYE either way. Standard library only.

    with RtpCall(ast.sip_port, "100", codec="PCMU") as call:
        call.send_audio(ulaw_bytes)          # paced in the background
        call.wait_bye(timeout=20)            # or call.hangup()
    call.audio()                             # received payload bytes in order
"""

from __future__ import annotations

import contextlib
import queue
import random
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from types import TracebackType

# name -> (payload type, rtpmap, bytes per 20 ms, RTP timestamp units per 20 ms, silence byte)
CODECS: dict[str, tuple[int, str, int, int, int]] = {
    "PCMU": (0, "PCMU/8000", 160, 160, 0xFF),
    "PCMA": (8, "PCMA/8000", 160, 160, 0xD5),
    # RFC 3551: 8000 clock for 16 kHz G.722. A constant 0xFC decodes to digital silence
    # (Asterisk's codec_g722); 0x00 would decode to a full-scale signal.
    "G722": (9, "G722/8000", 160, 160, 0xFC),
}
DTMF_PT = 101


@dataclass(frozen=True)
class RtpPacket:
    arrival_ns: int
    seq: int
    timestamp: int
    pt: int
    marker: bool
    ssrc: int
    payload: bytes
    # When the kernel received it (CLOCK_REALTIME, the time.time_ns() scale; SO_TIMESTAMPNS):
    # free of this process's scheduling and GIL delays. 0 where the kernel gives none.
    kernel_ns: int = 0


# Linux: not exported by Python's socket module. SCM_TIMESTAMPNS has the same value.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class SipError(RuntimeError):
    pass


def _rand(n: int = 10) -> str:
    return "".join(random.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=n))


def parse_sip(data: bytes) -> tuple[str, dict[str, str], str]:
    """(start line, headers with lower-case names (first value wins), body)."""
    text = data.decode(errors="replace")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers: dict[str, str] = {}
    compact = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact"}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            key = compact.get(key, key)
            headers.setdefault(key, value.strip())
    return lines[0], headers, body


def sip_response(headers: dict[str, str], status: str, contact: str, body: str = "") -> str:
    """A response to the request whose (lower-cased) ``headers`` are given, with an SDP body."""
    lines = [
        f"SIP/2.0 {status}",
        f"Via: {headers.get('via', '')}",
        f"From: {headers.get('from', '')}",
        f"To: {headers.get('to', '')}",
        f"Call-ID: {headers.get('call-id', '')}",
        f"CSeq: {headers.get('cseq', '')}",
        f"Contact: <{contact}>",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


def parse_sdp(body: str) -> tuple[str, int, list[int]]:
    """(connection address, audio port, payload types) of an SDP answer."""
    addr, port, pts = "", 0, []
    for line in body.splitlines():
        if line.startswith("c=IN IP4 "):
            addr = line.split()[2]
        elif line.startswith("m=audio "):
            parts = line.split()
            port = int(parts[1])
            pts = [int(p) for p in parts[3:]]
    if not addr or not port:
        raise SipError(f"no audio in SDP: {body!r}")
    return addr, port, pts


class RtpCall:
    def __init__(
        self,
        sip_port: int,
        exten: str,
        codec: str = "PCMU",
        host: str = "127.0.0.1",
        user: str = "sipp",
        local_host: str = "127.0.0.1",
        fill_silence: bool = True,
        accept_refer: bool = False,
    ) -> None:
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {sorted(CODECS)}")
        self.remote = (host, sip_port)
        self.exten = exten
        self.codec = codec
        self.pt, self.rtpmap, self.frame_bytes, self.ts_step, self.silence = CODECS[codec]
        self.user = user
        self.local_host = local_host
        self.fill_silence = fill_silence
        # REFER (Asterisk transferring us): answered 202 and, when accepted, a NOTIFY 200.
        self.accept_refer = accept_refer
        self.refers: list[str] = []  # the Refer-To of each REFER received

        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind((local_host, 0))
        self.sip_local_port = self.sip.getsockname()[1]
        self.rtp = self._bind_even_port(local_host)
        self.rtp_port = self.rtp.getsockname()[1]

        self.call_id = f"{_rand(16)}@{local_host}"
        self.from_tag = _rand()
        self.to_header = ""
        self.remote_target = f"sip:{exten}@{host}:{sip_port}"
        self.cseq = 1
        self.remote_rtp: tuple[str, int] | None = None
        self.answer_sdp = ""

        self.received: list[RtpPacket] = []
        self.answered_ns: int | None = None
        self.bye_received = threading.Event()
        self.ended = threading.Event()
        self._responses: queue.Queue[tuple[str, dict[str, str], str]] = queue.Queue()
        self._stop = threading.Event()
        self._send_lock = threading.Lock()
        self._audio: queue.Queue[bytes] = queue.Queue()
        self._dtmf: queue.Queue[tuple[str, int]] = queue.Queue()
        self.sent_packets = 0
        # time.monotonic_ns() when each frame queued by send_audio() went out, in order (the
        # silence between them is not listed): when the caller's last word was spoken.
        self.sent_audio_ns: list[int] = []
        self._threads: list[threading.Thread] = []
        self._seq = random.randrange(0, 0x10000)
        self._ts = random.randrange(0, 0x100000000)
        self._ssrc = random.randrange(1, 0x100000000)

    @staticmethod
    def _bind_even_port(host: str) -> socket.socket:
        for _ in range(100):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            port = random.randrange(30000, 60000) & ~1
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            return s
        raise SipError("no free even RTP port")

    # --- SIP ----------------------------------------------------------------------------------

    def _send_sip(self, text: str) -> None:
        self.sip.sendto(text.encode(), self.remote)

    def _request(
        self,
        method: str,
        uri: str,
        cseq: int,
        to: str,
        body: str = "",
        content_type: str = "application/sdp",
        extra: tuple[str, ...] = (),
    ) -> str:
        lh, lp = self.local_host, self.sip_local_port
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {lh}:{lp};branch=z9hG4bK{_rand()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{lh}:{lp}>;tag={self.from_tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:{self.user}@{lh}:{lp}>",
            "User-Agent: convai-rtpcall",
            *extra,
        ]
        if body:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def _sdp(self) -> str:
        name = self.rtpmap
        return (
            "v=0\r\n"
            f"o=- {random.randrange(1, 1 << 30)} 1 IN IP4 {self.local_host}\r\n"
            "s=rtpcall\r\n"
            f"c=IN IP4 {self.local_host}\r\n"
            "t=0 0\r\n"
            f"m=audio {self.rtp_port} RTP/AVP {self.pt} {DTMF_PT}\r\n"
            f"a=rtpmap:{self.pt} {name}\r\n"
            f"a=rtpmap:{DTMF_PT} telephone-event/8000\r\n"
            f"a=fmtp:{DTMF_PT} 0-16\r\n"
            "a=ptime:20\r\n"
            "a=sendrecv\r\n"
        )

    def _reply(self, headers: dict[str, str], status: str, body: str = "") -> None:
        contact = f"sip:{self.user}@{self.local_host}:{self.sip_local_port}"
        self._send_sip(sip_response(headers, status, contact, body))

    def _sip_loop(self) -> None:
        self.sip.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data, _ = self.sip.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            start, headers, body = parse_sip(data)
            if start.startswith("SIP/2.0 "):
                self._responses.put((start, headers, body))
                continue
            method = start.split(" ", 1)[0]
            if method == "BYE":
                self._reply(headers, "200 OK")
                self.bye_received.set()
                self.ended.set()
            elif method == "INVITE":  # re-INVITE: keep our offer
                self._reply(headers, "200 OK", self._sdp())
            elif method == "REFER":
                self._on_refer(headers)
            elif method in ("OPTIONS", "INFO", "UPDATE", "NOTIFY"):
                self._reply(headers, "200 OK")
            elif method == "CANCEL":
                self._reply(headers, "200 OK")
                self.ended.set()
            elif method != "ACK":
                self._reply(headers, "501 Not Implemented")

    def _on_refer(self, headers: dict[str, str]) -> None:
        """A blind transfer of this call: 202, then (accept_refer) a NOTIFY saying the new call
        succeeded, as a phone that placed it would (RFC 3515). The UA places no new call."""
        self.refers.append(headers.get("refer-to", headers.get("r", "")))
        if not self.accept_refer:
            self._reply(headers, "603 Declined")
            return
        self._reply(headers, "202 Accepted")
        self.cseq += 1
        notify = self._request(
            "NOTIFY",
            self.remote_target,
            self.cseq,
            self.to_header,
            "SIP/2.0 200 OK\r\n",
            content_type="message/sipfrag;version=2.0",
            extra=("Event: refer", "Subscription-State: terminated;reason=noresource"),
        )
        self._send_sip(notify)

    def _wait_response(self, method: str, timeout: float) -> tuple[str, dict[str, str], str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no final response to {method}")
            try:
                start, headers, body = self._responses.get(timeout=remaining)
            except queue.Empty:
                continue
            if not headers.get("cseq", "").endswith(method):
                continue
            code = int(start.split()[1])
            if code >= 200:
                return start, headers, body

    def start(self, timeout: float = 10.0) -> None:
        """Send the INVITE and wait for the answer; RTP recording starts before the INVITE."""
        self._spawn(self._sip_loop)
        self._spawn(self._rtp_recv_loop)
        to = f"<sip:{self.exten}@{self.remote[0]}:{self.remote[1]}>"
        self._send_sip(self._request("INVITE", self.remote_target, self.cseq, to, self._sdp()))
        start, headers, body = self._wait_response("INVITE", timeout)
        code = int(start.split()[1])
        self.to_header = headers.get("to", to)
        if code >= 300:
            self._ack(headers)
            raise SipError(f"call rejected: {start}")
        m = re.search(r"<([^>]+)>", headers.get("contact", ""))
        if m:
            self.remote_target = m.group(1)
        self.answer_sdp = body
        addr, port, pts = parse_sdp(body)
        if self.pt not in pts:
            raise SipError(f"{self.codec} not accepted: answer offers {pts}")
        self.remote_rtp = (addr, port)
        self._ack(headers)
        self.answered_ns = time.monotonic_ns()
        self._spawn(self._rtp_send_loop)

    def _ack(self, headers: dict[str, str]) -> None:
        cseq = headers.get("cseq", f"{self.cseq} INVITE").split()[0]
        self._send_sip(
            self._request("ACK", self.remote_target, int(cseq), headers.get("to", self.to_header))
        )

    def hangup(self, timeout: float = 5.0) -> None:
        """Send BYE (unless the call already ended) and wait for its 200."""
        if not self.ended.is_set() and self.remote_rtp is not None:
            self.cseq += 1
            self._send_sip(self._request("BYE", self.remote_target, self.cseq, self.to_header))
            with contextlib.suppress(TimeoutError):
                self._wait_response("BYE", timeout)
            self.ended.set()

    def wait_bye(self, timeout: float = 30.0) -> bool:
        """Wait until the far end hangs up; True when it did."""
        return self.bye_received.wait(timeout)

    # --- RTP ----------------------------------------------------------------------------------

    def _spawn(self, target: object) -> None:
        t = threading.Thread(target=target, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _rtp_recv_loop(self) -> None:
        self.rtp.settimeout(0.1)
        with contextlib.suppress(OSError):  # no kernel timestamps: kernel_ns stays 0
            self.rtp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        ancbuf = socket.CMSG_SPACE(16)
        while not self._stop.is_set():
            try:
                data, anc, _, _ = self.rtp.recvmsg(4096, ancbuf)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic_ns()
            kernel_ns = 0
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                    sec, nsec = struct.unpack("qq", cdata[:16])
                    kernel_ns = sec * 1_000_000_000 + nsec
            if len(data) < 12 or data[0] >> 6 != 2:
                continue
            b0, b1, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
            off = 12 + 4 * (b0 & 0x0F)
            if b0 & 0x10 and len(data) >= off + 4:  # header extension
                off += 4 + 4 * struct.unpack("!H", data[off + 2 : off + 4])[0]
            payload = data[off:]
            if b0 & 0x20 and payload:  # padding
                payload = payload[: -payload[-1]]
            self.received.append(
                RtpPacket(now, seq, ts, b1 & 0x7F, bool(b1 & 0x80), ssrc, payload, kernel_ns)
            )

    def send_audio(self, payload: bytes, wait: bool = False) -> None:
        """Queue raw payload (in the call's codec) to be sent in 20 ms packets; a short last
        frame is padded with silence. ``wait`` blocks until it has all been sent."""
        for i in range(0, len(payload), self.frame_bytes):
            frame = payload[i : i + self.frame_bytes]
            frame += bytes([self.silence]) * (self.frame_bytes - len(frame))
            self._audio.put(frame)
        while wait and not self._audio.empty() and not self.ended.is_set():
            time.sleep(0.005)

    def send_dtmf(self, digits: str, duration_ms: int = 100) -> None:
        """RFC 4733 events, sent in place of audio (audio queued meanwhile waits)."""
        for d in digits:
            self._dtmf.put((d, duration_ms))

    def _packet(
        self, pt: int, payload: bytes, marker: bool = False, ts: int | None = None
    ) -> bytes:
        hdr = struct.pack(
            "!BBHII",
            0x80,
            (0x80 if marker else 0) | pt,
            self._seq & 0xFFFF,
            (self._ts if ts is None else ts) & 0xFFFFFFFF,
            self._ssrc,
        )
        self._seq += 1
        return hdr + payload

    def _rtp_send_loop(self) -> None:
        """One packet per 20 ms on an absolute schedule. When nothing is queued it sends silence
        (a continuous stream, like a phone) or, with ``fill_silence=False``, nothing."""
        assert self.remote_rtp is not None
        period = 20_000_000
        next_ns = time.monotonic_ns()
        first = True
        dtmf: tuple[int, int, int, int] | None = None  # event, total packets, sent, start ts
        while not self._stop.is_set() and not self.ended.is_set():
            if dtmf is None and not self._dtmf.empty():
                d, ms = self._dtmf.get()
                event = "0123456789*#ABCD".index(d.upper())
                dtmf = (event, max(1, ms // 20), 0, self._ts)
            if dtmf is not None:
                event, total, sent, start_ts = dtmf
                last = sent + 1 >= total
                duration = (sent + 1) * self.ts_step
                body = struct.pack("!BBH", event, (0x80 if last else 0) | 10, duration)
                n = 3 if last else 1  # the end packet goes out three times (RFC 4733)
                for _ in range(n):
                    self.rtp.sendto(
                        self._packet(DTMF_PT, body, sent == 0, start_ts), self.remote_rtp
                    )
                dtmf = None if last else (event, total, sent + 1, start_ts)
                self.sent_packets += n
            else:
                queued = True
                try:
                    frame: bytes | None = self._audio.get_nowait()
                except queue.Empty:
                    queued = False
                    frame = bytes([self.silence]) * self.frame_bytes if self.fill_silence else None
                if frame is not None:
                    if queued:
                        self.sent_audio_ns.append(time.monotonic_ns())
                    self.rtp.sendto(self._packet(self.pt, frame, first), self.remote_rtp)
                    self.sent_packets += 1
                    first = False
            self._ts += self.ts_step
            next_ns += period
            delay = next_ns - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            elif delay < -200_000_000:  # fell far behind (paused): resynchronise
                next_ns = time.monotonic_ns()

    # --- results ------------------------------------------------------------------------------

    def audio_packets(self) -> list[RtpPacket]:
        """Received packets of the call's codec, in arrival order."""
        return [p for p in self.received if p.pt == self.pt]

    def audio(self) -> bytes:
        """Received audio payload in sequence order (duplicates dropped)."""
        seen: dict[int, bytes] = {}
        pkts = self.audio_packets()
        if not pkts:
            return b""
        base = pkts[0].seq
        for p in pkts:
            seen.setdefault((p.seq - base) & 0xFFFF, p.payload)
        return b"".join(seen[k] for k in sorted(seen))

    def dtmf_events(self) -> list[RtpPacket]:
        return [p for p in self.received if p.pt == DTMF_PT]

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        self.sip.close()
        self.rtp.close()

    def __enter__(self) -> RtpCall:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.hangup()
        finally:
            self.close()
