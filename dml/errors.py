"""The errors a user can fix: each message is one line that names what is wrong and the fix.

The command-line entry points print any :class:`UserError` as ``error: <message>`` and exit
with code 2; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the errors caused by the user's input (config, data, files), not by a bug."""


class ConfigError(UserError, ValueError):
    """A config value is wrong; the message names its key and the fix."""


class DatasetError(UserError, RuntimeError):
    """A dataset is missing, malformed or unusable; the message says what and how to fix it."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, truncated, foreign or unsafe to load; the message names it."""


class RunDirError(UserError, RuntimeError):
    """A run directory belongs to another run, or cannot be resumed as asked."""


class DivergenceError(UserError, FloatingPointError):
    """Training diverged: the loss, an embedding, a parameter or a buffer became NaN or infinite.
    Raised before the non-finite state can reach a checkpoint."""


class RunInterrupted(UserError, RuntimeError):
    """A run was stopped from outside (SIGTERM: a scheduler's time limit, ``scancel``, ``kill``)
    before it finished; its directory holds an ``interrupted`` marker and it can be resumed."""
