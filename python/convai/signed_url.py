"""The signed WebSocket URL of one conversation, from ElevenLabs' HTTP endpoint (aiohttp).

One GET with the API key in ``xi-api-key``; retried on 5xx and network errors only (a 4xx is
an answer: the key, the agent id), ``http_retries`` times with doubling backoff. Redirects
are not followed, so the key never goes to another host. Every error text is scrubbed of
the key before it leaves, and the URL's signature is returned as secrets for the session's
log scrubber.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp

from . import __version__

if TYPE_CHECKING:
    from .session import AgentConfig

__all__ = ["REDACTED", "USER_AGENT", "SignedUrl", "SignedUrlFailed", "fetch", "redact_url"]

REDACTED: Final = "<redacted>"
USER_AGENT: Final = f"app_elevenlabs_convai/{__version__}"
# Query parameters of a signed URL that are not secret (everything else is redacted).
_PUBLIC_PARAMS: Final = frozenset({"agent_id", "source", "version", "environment", "branch_id"})
_HINTS: Final = {
    401: "the API key was rejected: check elevenlabs_api_key",
    403: "the API key lacks permission for this agent: check elevenlabs_api_key",
    404: "agent not found: check elevenlabs_agent_id",
    422: "request rejected: check elevenlabs_agent_id",
}


class SignedUrlFailed(Exception):
    """No signed URL; the message says why, naming the section and key to check."""


@dataclass(frozen=True, slots=True)
class SignedUrl:
    url: str  # ws:// or wss://
    secrets: tuple[str, ...]  # the URL and its signature: never to be logged


def redact_url(url: str) -> str:
    """``url`` without user info and with the query replaced by ``<redacted>``."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
        query = REDACTED if parts.query else ""
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return REDACTED


_default_ssl: ssl.SSLContext | None = None


def default_ssl_context() -> ssl.SSLContext:
    """The verifying client context (system CAs, host names) for the signed-URL request and
    the WebSocket; made once per process, as loading the CA store costs milliseconds."""
    global _default_ssl
    if _default_ssl is None:
        _default_ssl = ssl.create_default_context()
    return _default_ssl


async def fetch(
    http: aiohttp.ClientSession,
    cfg: AgentConfig,
    *,
    ssl_context: ssl.SSLContext | None,
    log: logging.Logger,
    tag: str,
    scrub: Callable[[str], str],
) -> SignedUrl:
    """The signed URL, or :class:`SignedUrlFailed`. Never raises anything else but
    ``CancelledError``."""
    where = _require(cfg)
    attempts = max(0, cfg.http_retries) + 1
    problem = ""
    tried = 0
    for attempt in range(attempts):
        if attempt:
            delay = cfg.http_retry_backoff * 2 ** (attempt - 1)
            log.warning(
                "%s: signed URL request failed (%s); retry %d/%d in %.1f s",
                *(tag, problem, attempt, attempts - 1, delay),
            )
            await asyncio.sleep(delay)
        tried = attempt + 1
        try:
            status, body = await _get(http, cfg, ssl_context)
        except TimeoutError:
            problem = f"no answer within {cfg.http_timeout:g} s"
            continue
        except aiohttp.ClientConnectorCertificateError as exc:
            problem = scrub(f"{type(exc).__name__}: {exc}")
            break  # no retry can fix a certificate
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            problem = scrub(f"{type(exc).__name__}: {exc}")
            continue
        if status >= 500:
            problem = scrub(f"HTTP {status}: {_http_detail(body)}")
            continue
        if status != 200:
            hint = _HINTS.get(status, "unexpected answer: check elevenlabs_get_signed_url_endpoint")
            raise SignedUrlFailed(
                f"{where}: signed URL request failed with HTTP {status}"
                f" ({scrub(_http_detail(body))}); {hint} in section [{cfg.name}]"
            )
        return _parse(where, body)
    raise SignedUrlFailed(
        f"{where}: signed URL request to {redact_url(cfg.signed_url_endpoint)} failed"
        f" after {tried} attempt(s): {problem}"
    )


def _require(cfg: AgentConfig) -> str:
    """What the request needs from the agent section; returns "agent [name]" for messages."""
    where = f"agent [{cfg.name}]"
    if not cfg.api_key:
        raise SignedUrlFailed(f"{where}: elevenlabs_api_key is not set")
    if not cfg.signed_url_endpoint or not cfg.agent_id:
        raise SignedUrlFailed(
            f"{where}: elevenlabs_get_signed_url_endpoint and elevenlabs_agent_id are required"
        )
    return where


async def _get(
    http: aiohttp.ClientSession, cfg: AgentConfig, ssl_context: ssl.SSLContext | None
) -> tuple[int, bytes]:
    async with http.get(
        cfg.signed_url_endpoint,
        params={"agent_id": cfg.agent_id},
        headers={"xi-api-key": cfg.api_key, "User-Agent": USER_AGENT},
        timeout=aiohttp.ClientTimeout(total=cfg.http_timeout),
        # An explicit verifying context: aiohttp 3.8 (Debian 12) takes ssl=True as "do not
        # verify", which would send the key to any certificate (found by test_faults on 3.8).
        ssl=ssl_context or default_ssl_context(),
        proxy=cfg.proxy,
        allow_redirects=False,  # never hand the key to another host
    ) as resp:
        return resp.status, await resp.read()


def _parse(where: str, body: bytes) -> SignedUrl:
    try:
        data: object = json.loads(body)
    except ValueError:
        raise SignedUrlFailed(f"{where}: signed URL response is not JSON") from None
    url = data.get("signed_url") if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        raise SignedUrlFailed(f"{where}: signed URL response has no signed_url")
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise SignedUrlFailed(f"{where}: signed_url is not a WebSocket URL")
    secrets = [url]
    if parts.query:  # the signature lives here: never log it
        secrets.append(parts.query)
        secrets += [v for k, v in parse_qsl(parts.query) if k not in _PUBLIC_PARAMS and len(v) >= 8]
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return SignedUrl(
        urlunsplit((scheme, parts.netloc, parts.path, parts.query, "")), tuple(secrets)
    )


def _http_detail(body: bytes) -> str:
    """The ``detail`` of an ElevenLabs error body: a string, an object or a list (422)."""
    try:
        data: object = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", errors="replace").strip()
        return text[:300] or "(empty body)"
    detail = data.get("detail", data) if isinstance(data, dict) else data
    if isinstance(detail, str):
        out = detail
    elif isinstance(detail, dict):
        status, message = detail.get("status"), detail.get("message")
        out = ": ".join(str(x) for x in (status, message) if x) or json.dumps(detail)
    elif isinstance(detail, list):
        msgs = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc", []) or [])
                msgs.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", item)))
            else:
                msgs.append(str(item))
        out = "; ".join(msgs)
    else:
        out = json.dumps(detail)
    return out[:300]
