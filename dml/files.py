"""Files that several processes may touch: atomic replacement and an inter-process lock."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the callers' checks still apply
    fcntl = None


def temporary_sibling(path: Path) -> Path:
    """A hidden name next to ``path`` that is unique to this process: ``.<name>.<pid>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary sibling, then rename it over ``path``: readers (and a crash
    mid-write) only ever see the old file or the complete new one, and no temporary is left."""
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_files(out: Path) -> Iterator[Path]:
    """A hidden directory in ``out`` to write a set of files to: when the block ends they are
    moved into ``out`` (each replacing its old version); if it raises, none is, and nothing is
    left behind: an error never leaves a partial set."""
    stage = Path(tempfile.mkdtemp(prefix=".staged-", dir=out))
    try:
        yield stage
        for path in sorted(stage.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


@contextlib.contextmanager
def locked(path: Path, wait: bool = True) -> Iterator[IO[str] | None]:
    """Hold an exclusive lock on the file ``path`` (created if needed) for the ``with`` block.

    ``wait=False``: raise :class:`BlockingIOError` at once if another process holds it. Yields the
    open lock file (its content is free for the holder to describe itself), or None where the
    platform has no ``fcntl`` (then nothing is locked). The lock dies with its process.
    """
    if fcntl is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
