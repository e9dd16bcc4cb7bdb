"""glibc malloc settings for the node process (`tune_malloc`, called once at start).

Why: a leader's answers to its followers and a follower's received messages are 100 KB to a few MB
each (one or more 1,000-record batches), allocated and freed hundreds of times a second. With
glibc's defaults such buffers are either mmapped and unmapped each time (above the mmap threshold,
128 KB at start) or, once glibc raises that threshold, taken from the heap top, which is given back
to the system whenever more than twice the threshold is free there. Either way the next buffer
lands on fresh pages, and every 4 KB page costs a page fault and a zero fill: 22-54 minor faults per
replicated batch at 2 and 4 clients in the replication benchmark, under 1 with these settings
(docs/performance.md, "Allocator, parked fetches and recent batch starts").

What: buffers up to `MMAP_THRESHOLD_BYTES` come from the heap, the heap keeps up to
`TRIM_THRESHOLD_BYTES` of free memory at its top instead of returning it, and grows by
`TOP_PAD_BYTES` at a time. The cost is memory: a node can hold up to about 64 MB that it freed
(the Kubernetes manifests give a node 2 GiB).

A user who sets glibc's own variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
MALLOC_TOP_PAD_, GLIBC_TUNABLES) keeps them: the node then changes nothing. On a C library other
than glibc (musl, macOS) there is no `mallopt` to call and nothing changes either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# mallopt parameter numbers, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 8 << 20  # above a fetch answer's usual size (replica_fetch_max_bytes, 1 MB)
TRIM_THRESHOLD_BYTES = 64 << 20
TOP_PAD_BYTES = 16 << 20
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
SETTINGS = (
    (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
    (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
    (M_TOP_PAD, TOP_PAD_BYTES),
)


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's `mallopt`, or None on another C library."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # ValueError where the name is unknown
            return None
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except (OSError, ValueError):
        return None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt


def tune_malloc(
    environ: Mapping[str, str] = os.environ,
    mallopt_loader: Callable[[], Callable[[int, int], int] | None] = _glibc_mallopt,
) -> str:
    """Apply SETTINGS through glibc's mallopt; returns what was done ("tuned", "user settings kept",
    "not glibc") for the start-up log line."""
    if any(name in environ for name in USER_SETTINGS):
        return "user settings kept"
    mallopt = mallopt_loader()
    if mallopt is None:
        return "not glibc"
    for parameter, value in SETTINGS:
        if mallopt(parameter, value) != 1:  # mallopt returns 1 on success
            log.warning("mallopt(%d, %d) failed; glibc's default stays", parameter, value)
            return "mallopt refused"
    return "tuned"
