"""cffi builder (API mode, out of line) for ``convai._native``.

The extension is compiled against the very header the Asterisk module uses. Its plain-C part
(between ``cffi: begin`` and ``cffi: end``: constants, enums, command records) *is* the cdef,
so the contract is written once; the rest below is checked by the C compiler, and the
``...;`` in each struct lets it decide the layout (padding, the C11 atomics we keep out).

Usage: python3 _native_build.py OUTPUT.c
"""

import sys
from pathlib import Path

from cffi import FFI

HEADER = Path(__file__).resolve().parents[2] / "c" / "convai_shared.h"
BEGIN, END = "/* --- cffi: begin --- */", "/* --- cffi: end --- */"


def shared_block(header: Path = HEADER) -> str:
    """The plain-C parts of convai_shared.h (constants, enums, command records, the format
    record), given to cffi as they stand: the contract is declared once, in C."""
    parts = header.read_text(encoding="utf-8").split(BEGIN)[1:]
    if not parts or any(END not in p for p in parts):
        raise SystemExit(f"{header}: unbalanced '{BEGIN}' / '{END}' markers")
    return "\n".join(p.split(END, 1)[0] for p in parts)


# What cffi cannot read from the header (C11 atomics, inline functions): partial structs
# (``...;``: the compiler fills in the layout) and the inline functions' prototypes, each
# checked against the header by the compiler when the extension is built.
# tests/unit/test_c_contract.py checks every prototype here against the header's definition.
CDEF_REST = """
struct convai_ring { uint32_t nslots; uint32_t slot_bytes; ...; };

struct convai_session {
    uint32_t magic;
    uint32_t id;
    struct convai_session *next_ready;
    int down_efd;
    uint32_t up_batch_frames;
    unsigned int callid;
    int send_caller_number;
    int buffer_ms;
    char agent[...];
    char agent_id[...];
    char api_key[...];
    char endpoint[...];
    char channel[...];
    char uniqueid[...];
    char caller_number[...];
    char caller_name[...];
    char exten[...];
    char extra_json[...];
    struct convai_ring *up;
    struct convai_ring *down;
    struct convai_ring *to_c;
    struct convai_ring *to_py;
    ...;
};

struct convai_host {
    uint32_t magic;
    uint32_t abi_version;
    int wake_efd;
    void (*log)(int level, const char *file, int line, const char *func, unsigned int callid,
        const char *msg);
    struct convai_session *(*take_session)(void);
    void (*release_session)(struct convai_session *s);
    ...;
};

size_t convai_ring_size(uint32_t nslots, uint32_t slot_bytes);
int convai_ring_init(struct convai_ring *r, uint32_t nslots, uint32_t slot_bytes);
int convai_ring_push(struct convai_ring *r, uint32_t event_id, const void *data, uint32_t len);
int convai_ring_push_stamped(struct convai_ring *r, uint32_t event_id, uint32_t stamp,
    const void *data, uint32_t len);
int convai_ring_push_run(struct convai_ring *r, uint32_t event_id, uint32_t stamp,
    const void *data, uint32_t frame_len, uint32_t nframes);
void convai_ring_drop_below(struct convai_ring *r, uint32_t id);
int convai_ring_stale(struct convai_ring *r, uint32_t event_id);
uint32_t convai_ring_space(struct convai_ring *r);
uint32_t convai_ring_count(struct convai_ring *r);
int convai_ring_pop(struct convai_ring *r, uint32_t *event_id, void *out, uint32_t cap);
uint32_t convai_ring_pop_many(struct convai_ring *r, void *out, uint32_t cap, uint32_t max_slots,
    uint32_t *last_stamp, uint32_t *mark);
uint64_t convai_ring_skipped(struct convai_ring *r);

uint64_t convai_stat_get(struct convai_session *s, int i);
void convai_stat_set(struct convai_session *s, int i, uint64_t v);
void convai_stat_add(struct convai_session *s, int i, uint64_t v);
int convai_host_debug(struct convai_host *h);
uint32_t convai_now_us(void);
void convai_hist_add(struct convai_session *s, int h, uint32_t us);
int convai_hist_bucket(uint64_t us);
uint64_t convai_hist_upper(int b);
int convai_host_stopping(struct convai_host *h);
int convai_session_mark_ready(struct convai_host *h, struct convai_session *s);
struct convai_session *convai_host_take_ready(struct convai_host *h);
struct convai_session *convai_session_unready(struct convai_session *s);
int convai_host_take_stall(struct convai_host *h);

uint32_t convai_cmd_size(uint32_t type);
const struct convai_format_info *convai_format(int fmt);
const char *convai_status_name(int status);
const char *convai_reason_name(int reason);
"""


def make_ffi(**kwargs: object) -> FFI:
    """The FFI for ``convai._native``; kwargs go to set_source (include_dirs, ...)."""
    ffi = FFI()
    ffi.cdef(shared_block() + CDEF_REST)
    ffi.set_source("convai._native", '#include "convai_shared.h"', **kwargs)
    return ffi


if __name__ == "__main__":
    make_ffi().emit_c_code(sys.argv[1])
