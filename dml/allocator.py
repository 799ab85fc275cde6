"""glibc's malloc set up for training on CPU: memory a step frees is kept for the next step.

By default glibc serves each allocation above a threshold (128 KiB at start, raised dynamically up
to 32 MiB) with a fresh ``mmap`` and returns it to the OS when freed, and gives the free top of its
heap back to the OS once it exceeds 128 KiB (``M_TRIM_THRESHOLD``). A training step on CPU frees
and re-allocates the same activation buffers every step (conv4 at P×K = 32×4: up to 25.7 MB each),
so every step page-faults them in again and zero-fills them in the kernel. Fixing both thresholds
keeps those pages in the process. On this project's 2-core CPU a default conv4 training step on
pre-made batches took 151–158 ms with it, and 134–224 ms without it, depending on the state of
the heap (``benchmarks/bench_pipeline.py``, model-only row, 3 rounds each).

Allocations above 32 MiB (glibc's cap for ``M_MMAP_THRESHOLD`` on 64-bit) are still mapped and
unmapped each time. GPU memory is not concerned (PyTorch's CUDA allocator caches its own).
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX of 64-bit glibc: the largest it accepts
TRIM_THRESHOLD = 2**30  # keep up to 1 GiB of free heap top instead of 128 KiB


def keep_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_TRIM_THRESHOLD`` to 1 GiB for this
    process (and the loader workers it forks later). Returns whether both were applied: ``False``
    off glibc (macOS, Windows, musl), where nothing is changed."""
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
