"""The simulator's TLS mode and its test certificates (convai.sim.tls): each certificate is
accepted or refused by a verifying client for the reason it exists."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect

from convai.sim import Scenario, Simulator
from convai.sim.tls import Pki, client_context, make_test_pki, server_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


async def _signed_url_then_ws(sim: Simulator, ctx: ssl.SSLContext) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(sim.signed_url_endpoint, params={"agent_id": "a"}, ssl=ctx) as r,
    ):
        url = json.loads(await r.text())["signed_url"]
    async with connect(url, ssl=ctx) as ws:
        first = json.loads(await ws.recv())
    assert first["type"] == "conversation_initiation_metadata"
    return str(url)


def test_a_certificate_from_the_trusted_ca_serves_https_and_wss(pki: Pki) -> None:
    async def run() -> str:
        async with Simulator(Scenario(greeting=""), ssl_context=server_context(pki.good)) as sim:
            assert sim.signed_url_endpoint.startswith("https://127.0.0.1:")
            return await _signed_url_then_ws(sim, client_context(pki.ca))

    assert asyncio.run(run()).startswith("wss://127.0.0.1:")


@pytest.mark.parametrize(
    ("which", "reason"),
    [
        ("wrong_host", "IP address mismatch"),
        ("expired", "certificate has expired"),
        ("self_signed", "self-signed certificate"),
    ],
)
def test_the_bad_certificates_are_refused_for_their_reason(
    pki: Pki, which: str, reason: str
) -> None:
    async def run() -> None:
        ctx = server_context(getattr(pki, which))
        async with Simulator(Scenario(greeting=""), ssl_context=ctx) as sim:
            await _signed_url_then_ws(sim, client_context(pki.ca))

    with pytest.raises(aiohttp.ClientConnectorCertificateError) as err:
        asyncio.run(run())
    assert reason in str(err.value), err.value


def test_the_keys_are_private(pki: Pki) -> None:
    for pair in (pki.ca, pki.good, pki.wrong_host, pki.expired, pki.self_signed):
        assert Path(pair.key).stat().st_mode & 0o077 == 0, pair.key


@pytest.mark.parametrize("which", ["wrong_host", "expired", "self_signed"])
def test_the_signed_url_request_verifies_and_does_not_retry_a_bad_certificate(
    pki: Pki, which: str
) -> None:
    """The request that carries the API key must refuse a bad certificate (aiohttp 3.8 took
    ``ssl=True`` as "do not verify"), at once, before any byte of it reaches the server."""
    import logging

    from convai import signed_url
    from convai.session import AgentConfig

    async def run() -> tuple[str, int]:
        ctx = server_context(getattr(pki, which))
        async with Simulator(Scenario(greeting=""), ssl_context=ctx) as sim:
            cfg = AgentConfig("a", "sk-test-0123456789abcdef", sim.signed_url_endpoint, "agent")
            async with aiohttp.ClientSession() as http:
                with pytest.raises(signed_url.SignedUrlFailed) as err:
                    await signed_url.fetch(
                        http, cfg, ssl_context=None, log=logging.getLogger("t"), tag="t",
                        scrub=str,
                    )  # fmt: skip
            return str(err.value), len(sim.signed_url_arrivals)

    detail, arrived = asyncio.run(run())
    assert "after 1 attempt(s)" in detail and "certificate" in detail.lower(), detail
    assert arrived == 0
