"""``keep_freed_memory`` (dml.train.allocator): with it, memory freed by one step serves the next
one instead of being returned to the OS and page-faulted in again; ``dml-train`` applies it when
``keep_freed_memory: true`` (the default)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

import dml.train.run
from dml.train.allocator import keep_freed_memory
from dml.train.run import train

from .training_utils import REPO, tiny_config

GLIBC = platform.libc_ver()[0] == "glibc"

# Buffers of 1, 2, ..., 20 MiB from malloc, each written and freed (torch's CPU allocator takes its
# memory from malloc). Under glibc's defaults each is above the mmap threshold its predecessor
# set, so each is mapped, faulted in page by page and unmapped: 210 MiB of page faults. Kept, the
# heap grows to 20 MiB once: 20 MiB of faults.
GROWING_BUFFERS = """
import ctypes, resource, sys
from dml.train.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for mib in range(1, 21):
    p = libc.malloc(mib * 2**20)
    ctypes.memset(p, 1, mib * 2**20)
    libc.free(p)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> tuple[str, int]:
    """``GROWING_BUFFERS`` in a fresh interpreter, ``keep_freed_memory()`` applied first if
    ``mode == "keep"``: what it returned, and the minor page faults of the buffers."""
    out = subprocess.run(
        [sys.executable, "-c", GROWING_BUFFERS, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    applied, kept = page_faults("keep")
    _, default = page_faults("default")
    assert applied == "True"
    # 210 MiB against 20 MiB of faults, 10.5x, with 4 KiB pages or transparent huge pages alike;
    # 4x leaves room for the pages of the interpreter's own allocations
    assert default > 4 * kept


@pytest.mark.parametrize("name", ["MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"])
def test_a_users_own_malloc_settings_are_left_alone(monkeypatch, name):
    monkeypatch.setenv(name, "glibc.malloc.trim_threshold=131072" if name == "GLIBC_TUNABLES"
                       else "131072")
    assert keep_freed_memory() is False


@pytest.mark.parametrize("keep", [True, False])
def test_dml_train_applies_the_config_value(tmp_path, monkeypatch, keep):
    calls = []
    monkeypatch.setattr(dml.train.run, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = tiny_config(tmp_path / "run", f"keep_freed_memory={keep}", "trainer.max_epochs=1")
    train(cfg)
    assert calls == ([1] if keep else [])
