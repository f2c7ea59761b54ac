"""The C<->Python contract (c/convai_shared.h): the codec, the shared tables and the parts of
the cffi definitions that are not generated from the header. Each test fails on drift."""

from __future__ import annotations

import re
import sys

import pytest
from native import ROOT, load

native = load()
ffi, lib = native.ffi, native.lib

from convai import audio, contract, protocol  # noqa: E402  (needs convai._native)
from convai.lifecycle import Status  # noqa: E402

sys.path.insert(0, str(ROOT / "python" / "convai"))
import _native_build  # type: ignore[import-not-found]  # noqa: E402

sys.path.pop(0)

HEADERS = [ROOT / "c" / "convai_shared.h", ROOT / "c" / "convai_ring.h"]


def test_every_command_has_its_record_and_c_knows_its_size() -> None:
    kinds = dict(ffi.typeof("enum convai_cmd_type").relements)
    assert {"CONVAI_CMD_STARTED", "CONVAI_CMD_END", "CONVAI_CMD_HANGUP"} <= set(kinds)
    for name, kind in kinds.items():
        struct = f"struct {name.lower()}"
        assert contract.COMMANDS[kind] == struct
        assert lib.convai_cmd_size(kind) == ffi.sizeof(struct) > 0, name
        assert ffi.sizeof(struct) <= lib.CONVAI_CMD_BYTES, name
        # Python -> C types are 1..99, C -> Python ones 101..: one numbering, two directions.
        assert 1 <= kind <= 99 or kind >= 101, name
    assert lib.convai_cmd_size(999) == 0


def test_every_end_reason_and_status_has_a_code_in_c() -> None:
    missing = [r.value for r in protocol.EndReason if r.value not in contract.REASONS]
    assert not missing, f"add these to enum convai_reason in c/convai_shared.h: {missing}"
    missing = [s.value for s in Status if s.value not in contract.STATUSES]
    assert not missing, f"add these to enum convai_status in c/convai_shared.h: {missing}"
    assert len(set(contract.REASONS.values())) == len(contract.REASONS)


def test_formats_agree_with_the_protocol_and_the_audio_helpers() -> None:
    assert set(contract.FORMATS) == {"ulaw_8000", "pcm_8000", "pcm_16000"}
    for name, fmt in contract.FORMATS.items():
        spec = protocol.AUDIO_FORMATS[name]
        assert (fmt.sample_rate, fmt.frame_bytes, fmt.silence) == (
            spec.sample_rate,
            spec.frame_bytes,
            spec.silence_byte,
        )
        assert audio.silence(name, 20) == bytes([fmt.silence]) * fmt.frame_bytes
    assert lib.convai_format(lib.CONVAI_FMT_NONE) == ffi.NULL
    assert lib.convai_format(lib.CONVAI_FMT_MAX) == ffi.NULL


def _signature(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\s*([(),*])\s*", r"\1", text)).strip()


def test_the_hand_written_prototypes_match_the_headers() -> None:
    defined = {}
    for header in HEADERS:
        for m in re.finditer(
            r"^static inline ([^{;]*?\b(convai_\w+)\([^)]*\))\s*\{", header.read_text(), re.M
        ):
            defined[m.group(2)] = _signature(m.group(1))
    proto = r"^([^#\n][^;{]*?\b(convai_\w+)\([^)]*\));"
    declared = re.findall(proto, _native_build.CDEF_REST, re.M)
    assert len(declared) > 10
    for text, name in declared:
        assert name in defined, f"{name} is declared for cffi but not defined in the headers"
        assert _signature(text) == defined[name], name


def test_the_generated_part_comes_from_the_header() -> None:
    block = _native_build.shared_block()
    for name in ("CONVAI_ABI_VERSION", "enum convai_cmd_type", "struct convai_cmd_started"):
        assert name in block
    assert "_Atomic" not in block and "static inline" not in block


def test_encode_cuts_strings_at_a_character_boundary() -> None:
    rec = contract.encode(
        lib.CONVAI_CMD_STARTED, in_format=1, out_format=3, conversation_id="é" * 200
    )
    conv = contract.text(rec.conversation_id)
    assert conv == "é" * 64  # 128 bytes: the 129th would split a character
    assert rec.in_format == 1 and rec.out_format == 3
    with pytest.raises(AttributeError):
        contract.encode(lib.CONVAI_CMD_END, bogus=1)


def test_decode_checks_the_size() -> None:
    buf = ffi.new("uint32_t[]", 256)
    assert contract.decode(lib.CONVAI_CMD_DTMF, buf, 1) is not None
    assert contract.decode(lib.CONVAI_CMD_DTMF, buf, 2) is None
    assert contract.decode(4242, buf, 1) is None


@pytest.mark.parametrize(
    ("event_id", "ring"), [(2**63, 2**32 - 1), (2**32, 2**32 - 1), (-5, 0), (7, 7)]
)
def test_ring_ids_are_clamped(event_id: int, ring: int) -> None:
    assert contract.ring_id(event_id) == ring


def test_the_buffer_ms_bounds_are_the_c_ones() -> None:
    from convai import session

    assert (session.BUFFER_MS_MIN, session.BUFFER_MS_MAX) == (
        lib.CONVAI_BUFFER_MS_MIN,
        lib.CONVAI_BUFFER_MS_MAX,
    )


def test_the_event_id_range_is_the_rings() -> None:
    """protocol.EVENT_ID_MAX (what the core accepts), contract.RING_ID_MAX (what the host
    clamps to) and the ring's uint32_t event ids are one number."""
    assert protocol.EVENT_ID_MAX == contract.RING_ID_MAX == 2**32 - 1
    mem = ffi.new("char[]", lib.convai_ring_size(4, 4) + 64)
    ring = ffi.cast("struct convai_ring *", (int(ffi.cast("uintptr_t", mem)) + 63) & ~63)
    assert lib.convai_ring_init(ring, 4, 4) == 0
    lib.convai_ring_drop_below(ring, protocol.EVENT_ID_MAX)
    assert lib.convai_ring_stale(ring, protocol.EVENT_ID_MAX - 1)
    assert not lib.convai_ring_stale(ring, protocol.EVENT_ID_MAX)
    with pytest.raises(OverflowError):
        lib.convai_ring_stale(ring, protocol.EVENT_ID_MAX + 1)
