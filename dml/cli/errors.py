"""Turn user-facing errors (bad config, missing data, bad checkpoints, divergence) into one line
and exit code 2."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from dml.errors import UserError


def user_error(exc: BaseException | None) -> UserError | None:
    """The user-facing error behind ``exc`` (Hydra wraps errors raised while instantiating)."""
    from hydra.errors import InstantiationException  # lazy: `dml-search --help` needs no Hydra

    while exc is not None:
        if isinstance(exc, UserError):
            return exc
        if not isinstance(exc, InstantiationException):
            return None
        exc = exc.__cause__ or exc.__context__
    return None


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line. An error raised in a DataLoader worker comes back with the
    worker's traceback in its message; its last line is the original message."""
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    try:
        yield
    except Exception as e:
        user = user_error(e)
        if user is None:
            raise
        print(f"error: {one_line(user)}", file=sys.stderr)
        sys.exit(2)
