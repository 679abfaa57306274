"""Keep freed memory in the process: glibc's malloc set up for a model called again and again.

Every model call allocates and frees the same large temporaries (the spectrogram, each
block's activations, attention scores: megabytes each). With its default, adaptive
settings, glibc's malloc gives such blocks back to the kernel when they are freed (as
separate mappings, or by trimming the top of a thread's heap), so the next call faults
the same pages in again, zeroed. ced-mini in calls of 4 windows on two one-thread streams
paid 2,600-2,800 page faults and 5-6 ms of kernel time per call (torch fp32 and bf16) on
the 2-core development VM; with the thresholds below, under 20 faults and 0.5 ms, and 3%
(fp32) to 6% (bf16) more clips/s; torch int8 and ONNX Runtime, which happened not to
fault there, ran level (``benchmarks/allocator.py``, docs/benchmarks.md).

Both thresholds are set together: setting either one turns glibc's adaptation off for
both, and one alone was far worse than the default (the trim threshold alone: 47,000 to
119,000 faults a call and a quarter to two thirds of the throughput, since every block
over 128 KiB became a mapping of its own).

The ``auricle`` command applies this to its own process (``AURICLE_MALLOC=default`` keeps
glibc's defaults, as do ``MALLOC_*_`` settings of one's own). A program of one's own can
call :func:`keep_freed_memory` once, before its first model call; it changes the allocator
of the whole process, so auricle's library functions never call it themselves.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: Blocks up to this size come from the heap and are reused: glibc's ceiling for its own
#: adaptive threshold on 64-bit systems, above the largest temporaries of a default CPU call
#: (ced-base, 4 windows: the 12 MB MLP activation and attention scores).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at a heap's top beyond this goes back to the kernel. Per heap (glibc gives
#: threads that allocate at once heaps of their own: a few when tagging, more in the
#: service), so at most this much per heap stays reserved unused.
TRIM_THRESHOLD = 128 * 1024 * 1024

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers
_M_MMAP_THRESHOLD = -3
#: Environment variables that already set these (read by glibc at start): a user's settings win.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`) for this process.

    Returns True when they were set; False, changing nothing, where :func:`why_left_alone`
    gives a reason.
    """
    if why_left_alone() is not None:
        return False
    mallopt = _glibc_mallopt()
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def why_left_alone() -> str | None:
    """Why :func:`keep_freed_memory` changes nothing here, or None where it sets the thresholds.

    Not Linux, a C library other than glibc (musl, macOS, Windows), ``AURICLE_MALLOC=default``,
    or malloc already tuned by the environment (``MALLOC_*_`` variables, ``glibc.malloc``
    tunables in ``GLIBC_TUNABLES``).
    """
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if os.environ.get("AURICLE_MALLOC") == "default":
        return "AURICLE_MALLOC=default"
    user = [name for name in USER_SETTINGS if os.environ.get(name)]
    if user or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return f"set by the environment ({', '.join(user) or 'GLIBC_TUNABLES'})"
    if _glibc_mallopt() is None:
        return "not glibc"
    return None


def describe() -> str:
    """What the ``auricle`` command does to malloc here, in a few words (``auricle system`` shows it)."""
    reason = why_left_alone()
    if reason is not None:
        return f"left as it is: {reason}"
    value = os.environ.get("AURICLE_MALLOC", "")
    unknown = f"; AURICLE_MALLOC={value} is not a setting (only 'default' leaves glibc's)" if value else ""
    return (f"kept for reuse (glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold "
            f"{TRIM_THRESHOLD >> 20} MiB){unknown}")


def _glibc_mallopt():
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
