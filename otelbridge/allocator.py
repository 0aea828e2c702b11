"""Memory tuning for the long-running commands: glibc's malloc (``serve``'s pipeline,
``backfill``), and the garbage collector (``serve``'s two processes and ``backfill``:
:func:`tune_garbage_collection`).

glibc serves a large allocation with ``mmap`` and gives it back on ``free`` — until a freed
mmapped chunk raises its *dynamic* mmap threshold to that chunk's size (up to 32 MiB on 64-bit).
After that, the multi-megabyte buffers this program handles (a List Calls page of ~1 MB, the
OTLP requests of up to 2 MiB the sender merges, in worker threads with their own arenas) come
from the heap, and the freed space stays in the process. Measured with ``bench/backfill.py``:
at 10,000 calls the peak RSS rose by ~30 MB while the sender drained its last requests. A fixed
threshold (what ``MALLOC_MMAP_THRESHOLD_=131072`` does) keeps such buffers out of the heap.
Elsewhere than glibc (musl, macOS) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os

log = logging.getLogger("otelbridge.allocator")

#: glibc's ``M_MMAP_THRESHOLD`` (malloc.h)
M_MMAP_THRESHOLD = -3
#: 128 KiB, glibc's default starting threshold, made fixed
MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; True when glibc took it. An explicit
    ``MALLOC_MMAP_THRESHOLD_`` in the environment wins (glibc read it at start)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    log.debug("glibc mmap threshold fixed at %d bytes: %s", threshold, done)
    return done


#: net allocations between two collections of the youngest generation (CPython's default: 700).
#: Measured against 700 (docs/benchmarks.md): under a webhook flood 1.06x acks/s and 0.95x of the
#: pipeline's CPU per turn; backfill 1.15x calls/s at the same peak RSS (50,000 added 27 MB to it)
YOUNG_COLLECTION_ALLOCATIONS = 10_000


def tune_garbage_collection() -> None:
    """Move every object made so far (modules, classes, pydantic's schemas, the settings) into
    the collector's permanent generation. They live as long as the process, yet each full
    collection scanned them all: 42,000 objects in the webhook process, a 12 ms pause of every
    request in flight, every few seconds under load. What is made afterwards is collected as
    before, but a young collection waits for :data:`YOUNG_COLLECTION_ALLOCATIONS` allocations
    instead of 700: most of a request's objects are freed by their reference counts anyway."""
    gc.collect()  # the garbage of the start goes first, not into the permanent generation
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, middle, old)
