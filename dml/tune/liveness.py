"""Whether a running trial is alive: a live job holds its run directory's lock
(:mod:`dml.runs.run_dir`), and its sweeper process recorded ``host:pid`` when it asked for it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna

from dml.files import locked
from dml.runs.run_dir import LOCK_FILE


def lock_held(run_dir: Path) -> bool:
    """Whether a live run holds ``run_dir`` (its ``.dml.lock``, see :mod:`dml.runs.run_dir`)."""
    lock = run_dir / LOCK_FILE
    if not lock.exists():
        return False
    try:
        with locked(lock, wait=False):
            return False
    except BlockingIOError:
        return True


def sweeper_gone(trial: optuna.trial.FrozenTrial, adopt: bool) -> bool:
    """Whether the sweeper that asked for ``trial`` is gone: its process is not alive on this
    host (or it recorded none); one on another host only with ``adopt``."""
    host, _, pid = str(trial.user_attrs.get("sweeper", "")).rpartition(":")
    if not pid:
        return True
    if host != socket.gethostname():
        return adopt
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def sweeper_id() -> str:
    """This process, as recorded in the trials it asks for."""
    return f"{socket.gethostname()}:{os.getpid()}"
