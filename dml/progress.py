"""Progress bars for long steps outside Lightning's loops: unpacking an archive, building the
tensor cache, embedding images with :func:`dml.load_embedder`. tqdm, to stderr, shown only on a
terminal and while enabled (``data.progress``, which follows ``trainer.enable_progress_bar``)."""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

_SHOWN = contextvars.ContextVar("dml_progress_shown", default=True)


@contextlib.contextmanager
def progress_shown(shown: bool) -> Iterator[None]:
    """Within this block, :func:`progress_bar` shows (on a terminal) or hides its bars."""
    token = _SHOWN.set(bool(shown))
    try:
        yield
    finally:
        _SHOWN.reset(token)


def progress_bar(items: Iterable[T], desc: str, total: int | None = None,
                 unit: str = "it") -> Iterable[T]:
    """``items``, with a bar on stderr when it is a terminal and bars are shown; the bar is
    cleared when the step ends."""
    return tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False,
                disable=None if _SHOWN.get() else True)  # None: hidden unless on a terminal
