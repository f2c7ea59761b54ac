"""cffi builder (API mode, out of line) for ``convai._native``.

The extension is compiled against the very header the Asterisk module uses, so every
offset below is checked by the C compiler; the ``...;`` in each struct lets it decide the
layout (padding, alignment, the C11 atomics we keep out of the cdef).

Usage: python3 _native_build.py OUTPUT.c
"""

import sys

from cffi import FFI

CDEF = """
#define CONVAI_ABI_VERSION ...
#define CONVAI_HOST_MAGIC ...
#define CONVAI_SESSION_MAGIC ...
#define CONVAI_FRAME_MAX ...
#define CONVAI_DOWN_SLOTS ...
#define CONVAI_UP_SLOTS ...
#define CONVAI_CMD_SLOTS ...
#define CONVAI_CMD_BYTES ...

static const int CONVAI_CMD_STARTED, CONVAI_CMD_END, CONVAI_CMD_EVENT, CONVAI_CMD_SETVAR,
    CONVAI_CMD_FLUSH, CONVAI_CMD_TRANSFER, CONVAI_CMD_SEND_DTMF, CONVAI_CMD_DTMF,
    CONVAI_CMD_HANGUP, CONVAI_CMD_TRANSFER_STATE, CONVAI_CMD_TOOL_RESULT;
static const int CONVAI_STAT_BYTES_UP, CONVAI_STAT_BYTES_DOWN, CONVAI_STAT_LAST_EVENT_ID,
    CONVAI_STAT_INTERRUPTIONS, CONVAI_STAT_PING_RTT_US, CONVAI_STAT_BACKLOG_FRAMES,
    CONVAI_STAT_FRAMES_PLAYED, CONVAI_STAT_UNDERRUNS, CONVAI_STAT_LATE_TICKS,
    CONVAI_STAT_FRAMES_UP, CONVAI_STAT_UP_OVERFLOWS, CONVAI_STAT_INTERRUPT_STAMP, CONVAI_STAT_MAX;
static const int CONVAI_HIST_PLAYOUT, CONVAI_HIST_FIRST_FRAME, CONVAI_HIST_BARGE_IN,
    CONVAI_HIST_UPLINK, CONVAI_HIST_MAX, CONVAI_HIST_BUCKETS;
static const int CONVAI_LOG_DEBUG, CONVAI_LOG_NOTICE, CONVAI_LOG_WARNING, CONVAI_LOG_ERROR,
    CONVAI_LOG_VERBOSE;

struct convai_ring { uint32_t nslots; uint32_t slot_bytes; ...; };

struct convai_session {
    uint32_t magic;
    uint32_t id;
    int up_efd;
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
void convai_ring_drop_below(struct convai_ring *r, uint32_t id);
int convai_ring_stale(struct convai_ring *r, uint32_t event_id);
uint32_t convai_ring_space(struct convai_ring *r);
uint32_t convai_ring_count(struct convai_ring *r);
int convai_ring_pop(struct convai_ring *r, uint32_t *event_id, void *out, uint32_t cap);
uint32_t convai_ring_pop_many(struct convai_ring *r, void *out, uint32_t cap, uint32_t max_slots,
    uint32_t *last_stamp);
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
int convai_host_take_stall(struct convai_host *h);
"""


def make_ffi(**kwargs: object) -> FFI:
    """The FFI for ``convai._native``; kwargs go to set_source (include_dirs, ...)."""
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source("convai._native", '#include "convai_shared.h"', **kwargs)
    return ffi


if __name__ == "__main__":
    make_ffi().emit_c_code(sys.argv[1])
