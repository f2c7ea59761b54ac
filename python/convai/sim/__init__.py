"""A local ElevenLabs ConvAI agent for the demo, the tests and the benchmarks (no key, no network).

    from convai.sim import Scenario, Simulator

    async with Simulator(Scenario(replies=["Sure."])) as sim:
        endpoint = sim.signed_url_endpoint   # use like the real get-signed-url endpoint
        ...
        record = sim.conversations[0]        # what the client sent and received

Run it standalone with ``python -m convai.sim --help``.
"""

from convai.sim.server import (
    ConversationRecord,
    LoggedEvent,
    Scenario,
    SentAudio,
    SignedUrlRequest,
    Simulator,
)
from convai.sim.speech import SpeechUnavailableError

__all__ = [
    "ConversationRecord",
    "LoggedEvent",
    "Scenario",
    "SentAudio",
    "SignedUrlRequest",
    "Simulator",
    "SpeechUnavailableError",
]
