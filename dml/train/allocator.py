"""glibc's malloc set up for training on CPU: memory a step frees is kept for the next step.

By default glibc serves each allocation above a threshold (128 KiB at start, raised dynamically up
to 32 MiB) with a fresh ``mmap`` and returns it to the OS when freed, and gives the free top of its
heap back to the OS once it exceeds ``M_TRIM_THRESHOLD`` (128 KiB at start, then twice the mmap
threshold). A training step on CPU frees and re-allocates the same activation buffers every step
(conv4 at P×K = 32×4: up to 25.7 MB each), so every step page-faults them in again and zero-fills
them in the kernel. Fixing both thresholds keeps those pages in the process. On this project's
2-core CPU a default conv4 training step on pre-made batches took 151–158 ms with the same two
settings (given as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``), and 134–224 ms
without them, depending on the state of the heap (3 rounds each of the benchmark's model-only
row, at commit c04875d); the default experiment's kernel time fell from 2 min 46 s – 4 min 1 s to
9 s with this function (README).

The cost: freed memory stays in the process (its peak heap) until it exits. The settings are
process-wide and one-way: once applied, a later run in the same process (a multirun with the
basic launcher) keeps them whatever its own ``keep_freed_memory``. Allocations above 32 MiB
(glibc's cap for ``M_MMAP_THRESHOLD`` on 64-bit) are still mapped and unmapped each time. GPU
memory is not concerned (PyTorch's CUDA allocator caches its own). With another allocator
preloaded (jemalloc, tcmalloc through ``LD_PRELOAD``) this tunes glibc's unused one.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX of 64-bit glibc: the largest it accepts
TRIM_THRESHOLD = 2**30  # keep up to 1 GiB of free heap top instead of 128 KiB
# a user's own malloc settings, which are left alone
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_TRIM_THRESHOLD`` to 1 GiB for this
    process (and the loader workers it forks later). Returns whether both were applied: ``False``,
    with nothing changed, off glibc (macOS, Windows, musl) and when the environment already sets
    malloc (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``)."""
    if platform.libc_ver()[0] != "glibc" or any(os.environ.get(k) for k in USER_SETTINGS):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
