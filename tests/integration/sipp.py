"""SIPp as a UAC against a test Asterisk: INVITE with one codec, 200/ACK, stream a raw payload
file with ``rtp_stream``, then wait for the far end's BYE (or send BYE after a pause).

SIPp cannot easily record what it receives without pcap; tests that check received audio use
``rtpcall.RtpCall`` instead. This is for calls that only need a real SIP/RTP peer.

    scenario = write_uac_scenario(tmp_path / "uac.xml", codec="PCMU", audio=tmp_path / "a.ulaw")
    result = run_sipp(scenario, ast.sip_port, exten="100")
    assert result.returncode == 0, result.stdout
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from asterisk import free_port

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
PAYLOAD_TYPES = {"PCMU": (0, "PCMU/8000"), "PCMA": (8, "PCMA/8000"), "G722": (9, "G722/8000")}

_HEAD = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="convai-uac">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP {pt}
      a=rtpmap:{pt} {rtpmap}
      a=ptime:20
      a=sendrecv

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""

_STREAM = """  <nop><action><exec rtp_stream="{audio},{loops},{pt}"/></action></nop>
"""

_WAIT_BYE = """  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: sip:sipp@[local_ip]:[local_port]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""

_SEND_BYE = """  <pause milliseconds="{pause_ms}"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"""


def write_uac_scenario(
    path: str | os.PathLike[str],
    codec: str = "PCMU",
    audio: str | os.PathLike[str] | None = None,
    loops: int = 1,
    hangup_after_ms: int | None = None,
) -> Path:
    """Write the UAC scenario. ``audio``: a raw payload file in ``codec`` streamed after the ACK
    (``loops`` times, -1 forever). ``hangup_after_ms``: send BYE after that pause; default:
    wait for Asterisk's BYE."""
    pt, rtpmap = PAYLOAD_TYPES[codec]
    xml = _HEAD.format(pt=pt, rtpmap=rtpmap)
    if audio is not None:
        xml += _STREAM.format(audio=Path(audio).resolve(), loops=loops, pt=pt)
    if hangup_after_ms is None:
        xml += _WAIT_BYE
    else:
        xml += _SEND_BYE.format(pause_ms=hangup_after_ms)
    out = Path(path)
    out.write_text(xml)
    return out


def run_sipp(
    scenario: str | os.PathLike[str],
    sip_port: int,
    exten: str,
    timeout: float = 30.0,
    extra_args: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Place one call with SIPp; ``returncode == 0`` means the scenario completed."""
    local_port = free_port(udp=True)
    media_port = free_port(udp=True)
    cmd = [
        SIPP,
        f"127.0.0.1:{sip_port}",
        "-sf", str(scenario),
        "-s", exten,
        "-i", "127.0.0.1",
        "-p", str(local_port),
        "-mp", str(media_port),
        "-m", "1",
        "-nostdin",
        "-skip_rlimit",
        "-timeout", f"{int(timeout)}s",
        "-timeout_error",
        *extra_args,
    ]  # fmt: skip
    return subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout + 10,
        cwd=Path(scenario).resolve().parent,
    )
