"""ElevenLabs Conversational AI bridge for Asterisk: the Python side.

Submodules are not imported here on purpose: the embedded host imports ``convai.host``
itself, and the tools and tests import only what they need.
"""

__version__ = "0.1.0"
