"""Turn user-facing errors (bad config, missing data) into one line and exit code 2."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from hydra.errors import InstantiationException

from dml.data.records import DatasetError
from dml.models.backbone import ConfigError

USER_ERRORS = (DatasetError, ConfigError)


def _user_error(exc: BaseException) -> BaseException | None:
    """The user-facing error behind ``exc`` (Hydra wraps errors raised while instantiating)."""
    while exc is not None:
        if isinstance(exc, USER_ERRORS):
            return exc
        if not isinstance(exc, InstantiationException):
            return None
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    try:
        yield
    except Exception as e:
        user = _user_error(e)
        if user is None:
            raise
        # an error raised in a DataLoader worker comes back with the worker's traceback in its
        # message; its last line is the original one-line message
        print(f"error: {str(user).strip().splitlines()[-1]}", file=sys.stderr)
        sys.exit(2)
