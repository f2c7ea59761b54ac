"""``python -m convai.sim``: run the ConvAI simulator and print each conversation as it happens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import ssl
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from convai.sim.server import SIGNED_URL_PATH, WS_PATH, Scenario, Simulator
from convai.sim.speech import CACHE_ENV, ESPEAK_ENV, SpeechUnavailableError, cache_dir

EPILOG = f"""\
endpoints (one port):
  GET {SIGNED_URL_PATH}?agent_id=ID   (header xi-api-key)
      → {{"signed_url": "ws://HOST:PORT{WS_PATH}?agent_id=ID&conversation_signature=..."}}
  WebSocket {WS_PATH}?agent_id=ID&conversation_signature=SIG
      (without a signature only with --public-agent; a wrong one is refused with 403)

the agent: metadata, then the greeting as real speech (espeak-ng), pings, vad_score from the
caller's audio level, "(caller spoke for N s)" as user_transcript after each caller turn
(silence ends a turn), a reply, an interruption when the caller talks over the reply's playout,
end_call after --end-after-turns or a user_message/contextual_update containing --end-keyword.
Any agent id and any API key are accepted unless --require-api-key is given.

point the Asterisk module at it (elevenlabs.conf):
  elevenlabs_get_signed_url_endpoint=http://127.0.0.1:PORT{SIGNED_URL_PATH}
  elevenlabs_api_key=anything
  elevenlabs_agent_id=agent_sim

examples:
  python -m convai.sim --port 8765
  python -m convai.sim --port 8765 --output-format pcm_16000 --end-after-turns 3
  python -m convai.sim --reply "Sure." --reply "Anything else?" --tool-call \\
      '{{"tool_name": "transfer_call", "parameters": {{"destination": "100"}}}}'
  python -m convai.sim --close-after-s 5 --close-code 1011 --close-reason "boom"
  python -m convai.sim --scenario failures.json      # Scenario fields as a JSON object

speech cache: ${CACHE_ENV} (default {cache_dir()}); espeak-ng binary: ${ESPEAK_ENV}
"""


def _none_or(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "off") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


_json_object.__name__ = "JSON object"


def _add_scenario_options(parser: argparse.ArgumentParser) -> None:
    """One option per Scenario field, so the CLI can never fall behind the class."""
    hints = typing.get_type_hints(Scenario)
    group = parser.add_argument_group("scenario (every field of convai.sim.Scenario)")
    defaults = Scenario()
    for f in dataclasses.fields(Scenario):
        hint = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f.metadata.get("help", "")
        args = typing.get_args(hint)
        optional = (
            isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        ) and type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if optional else hint
        if base is bool:
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{help_text} (default: {default})",
            )
            continue
        if typing.get_origin(base) is list:
            item = typing.get_args(base)[0]
            convert: Callable[[str], Any] = _json_object if item is not str else str
            flags = [flag, flag[:-3] + "y" if flag.endswith("ies") else flag[:-1]]
            group.add_argument(
                *flags,
                action="append",
                dest=f.name,
                type=convert,
                default=argparse.SUPPRESS,
                metavar="JSON" if item is not str else "TEXT",
                help=f"{help_text}; each use adds one (default: {json.dumps(default)})",
            )
            continue
        convert = _json_object if typing.get_origin(base) is dict else base
        none_note = "; 'none' unsets it" if optional else ""
        if optional:
            convert = _none_or(convert)
        group.add_argument(
            flag,
            type=convert,
            default=argparse.SUPPRESS,
            metavar=f.name.upper(),
            help=f"{help_text} (default: {json.dumps(default)}{none_note})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m convai.sim",
        description="A local ElevenLabs ConvAI agent: the signed-URL endpoint and the agent "
        "WebSocket on one port, speaking real synthesised speech. No API key, no network.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="serve https/wss with this certificate chain (make test ones with "
        "`python -m convai.sim.tls DIR`); the client must trust its CA",
    )
    parser.add_argument("--tls-key", metavar="PEM", help="the key of --tls-cert")
    parser.add_argument(
        "--scenario",
        metavar="FILE",
        help="JSON object of Scenario fields; options given on the command line win",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="also log audio chunks, vad_score and pings"
    )
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    _add_scenario_options(parser)
    return parser


def scenario_from_args(ns: argparse.Namespace) -> Scenario:
    fields: dict[str, Any] = {}
    if ns.scenario:
        with open(ns.scenario, encoding="utf-8") as fh:
            loaded = json.load(fh)
        if not isinstance(loaded, dict):
            raise SystemExit(f"{ns.scenario}: expected a JSON object of Scenario fields")
        known = {fld.name for fld in dataclasses.fields(Scenario)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise SystemExit(f"{ns.scenario}: unknown Scenario fields {unknown}")
        fields.update(loaded)
    for f in dataclasses.fields(Scenario):
        if hasattr(ns, f.name):
            fields[f.name] = getattr(ns, f.name)
    scenario = Scenario(**fields)
    try:
        scenario.validate()
    except ValueError as exc:
        raise SystemExit(f"invalid scenario: {exc}") from exc
    return scenario


async def _serve(sim: Simulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with sim:
        print(
            f"ConvAI simulator on {sim.base_url}\n"
            f"  signed URL endpoint: {sim.signed_url_endpoint}\n"
            f"  public-agent WebSocket: {sim.ws_url}?agent_id=<any>"
            f"{'' if sim.scenario.public_agent else '  (needs --public-agent)'}\n"
            f"  formats: input {sim.scenario.input_format}, output {sim.scenario.output_format}"
            "   (Ctrl-C stops)",
            flush=True,
        )
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    scenario = scenario_from_args(ns)
    level = logging.DEBUG if ns.verbose else logging.WARNING if ns.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("convai.sim")
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        ctx = None
        if ns.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(ns.tls_cert, ns.tls_key)
        sim = Simulator(scenario, host=ns.host, port=ns.port, ssl_context=ctx)
        asyncio.run(_serve(sim))
    except SpeechUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on {ns.host}:{ns.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
