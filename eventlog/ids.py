"""UUIDv7 ids: time-ordered, so new rows land at the end of the primary-key index.

The standard library gains ``uuid.uuid7`` only in Python 3.14; this is the RFC 9562
layout (48-bit Unix milliseconds, version, 12-bit sub-millisecond counter ``rand_a``,
variant, 62 random bits) with the counter method 1 so ids made in one millisecond still
sort in creation order within this process.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

__all__ = ["uuid7"]

_lock = threading.Lock()
# A child forked while another thread makes an id would wait for this lock forever.
os.register_at_fork(after_in_child=_lock._at_fork_reinit)  # type: ignore[attr-defined]
# Mersenne Twister seeded from os.urandom and reseeded after fork by the random module:
# ids need uniqueness, not secrecy, and a syscall per id would cost more than the rest.
_random_bits = random.getrandbits
_new_uuid = object.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown
_last_ms = 0
_counter = 0


def uuid7() -> uuid.UUID:
    """Return a new UUIDv7, monotonic within this process."""
    global _last_ms, _counter
    rand = _random_bits(80)
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = (rand >> 68) & 0x7FF  # random start, top bit clear: room to count
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter overflow: borrow the next millisecond
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        counter = _counter
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF
    # UUID.__init__ validates and converts its arguments (~1 µs); the value is already a
    # valid 128-bit int, so set the two slots directly, as uuid.UUID does internally.
    new = _new_uuid(uuid.UUID)
    _set(new, "int", value)
    _set(new, "is_safe", _UNKNOWN)
    return new
