"""Handing the kernel back the resident pages of weights that a checkpoint file maps (Linux).

A checkpoint is memory-mapped when loaded (safetensors, and zip ``.pt`` files read with
``mmap=True``), so its weights only take resident memory once read. An engine that packs a
second copy of the weights (:class:`~auricle.engines.fused.FusedEncoder`) reads every one
once and then never again; left alone, those clean file pages would stay resident beside the
packed copy for the life of the process (dasheng-base: ~230 MB of its ~340 MB).

``MADV_PAGEOUT`` asks the kernel to reclaim them. It is advice, never a loss of data: a page
is only dropped where it can be read back from the file unchanged; a page written to (a
copy-on-write page of a fine-tuned model) or plain anonymous memory stays where it is
(without swap) or goes to swap. So the module still runs as before, its weights faulted back
in from the file on first use.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import sys
from collections.abc import Iterable

import torch

_PAGE = mmap.PAGESIZE
#: Linux 5.4+; older kernels answer EINVAL, which is ignored (nothing is released).
_MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)


def _file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of files it cannot write back to, sorted."""
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                # address perms offset device inode path; private or read-only mappings only, so
                # that advice never writes anything to a file.
                if len(fields) >= 6 and fields[4] != "0" and fields[5].startswith("/") and (
                        fields[1][3] == "p" or fields[1][1] != "w"):
                    start, end = (int(value, 16) for value in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return []
    return sorted(ranges)


def release_file_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Advise the kernel to reclaim the whole pages of ``tensors`` that lie in a mapped file.

    Tensors in ordinary memory, on another device, or not contiguous are left alone.
    Returns the bytes advised (not necessarily reclaimed); 0 off Linux.
    """
    if not sys.platform.startswith("linux"):
        return 0
    ranges = _file_mappings()
    if not ranges:
        return 0
    starts = [start for start, _ in ranges]
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advised = 0
    for tensor in tensors:
        if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.numel() == 0:
            continue
        begin = tensor.data_ptr()
        # Only pages wholly inside the tensor: its neighbours (biases, norms) stay untouched.
        first = -(-begin // _PAGE) * _PAGE
        last = (begin + tensor.numel() * tensor.element_size()) // _PAGE * _PAGE
        index = bisect.bisect_right(starts, first) - 1
        if last <= first or index < 0 or ranges[index][1] < last:
            continue
        if madvise(first, last - first, _MADV_PAGEOUT) == 0:
            advised += last - first
    return advised
