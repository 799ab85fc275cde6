"""Checks of config values, each a one-line :class:`~dml.errors.ConfigError` naming the key as a
user types it in an override (``loss.margin must be >= 0, got -1``)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from dml.errors import ConfigError


def check_range(
    key: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    strict: bool = False,
    nullable: bool = False,
) -> None:
    """Raise :class:`~dml.errors.ConfigError` unless ``value`` is a finite real number with
    ``low <= value`` (``low < value`` if ``strict``) and ``value <= high`` (``None``: no bound);
    ``None`` itself passes if ``nullable``. The one-line message names ``key`` as a user types it
    in a config override: ``loss.margin must be >= 0, got -1``."""
    if value is None and nullable:
        return
    if low is not None and high is not None:
        bound = f"in {'(' if strict else '['}{low:g}, {high:g}]"
    elif low is not None:
        bound = f"{'>' if strict else '>='} {low:g}"
    else:
        bound = f"<= {high:g}"
    bound += " or null" if nullable else ""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ConfigError(f"{key} must be a number {bound}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    above = low is None or (value > low if strict else value >= low)
    if not (above and (high is None or value <= high)):
        raise ConfigError(f"{key} must be {bound}, got {value!r}")


def check_choice(key: str, value: object, choices: Sequence[str]) -> None:
    """Raise :class:`~dml.errors.ConfigError` unless ``value`` is one of ``choices``:
    ``loss.reduction must be one of ['mean', 'mean_nonzero'], got 'sum'``."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")


def check_int(key: str, value: object, minimum: int, meaning: str, example: int) -> None:
    """``value`` is an int (not a bool) >= ``minimum``, else a :class:`ConfigError` naming
    ``key``, what it means and an ``example`` value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(
            f"{key} must be an integer >= {minimum} ({meaning}), got {value!r}: "
            f"set e.g. {key}={example}"
        )
