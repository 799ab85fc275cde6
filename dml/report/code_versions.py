"""The code a table was made from: the commits (or installed versions) its runs recorded
(``metrics.json`` ``provenance``), listed in a report's header, with a warning when they mix."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence


class MixedCodeWarning(UserWarning):
    """The runs of one table were made by different code."""


def code_line(labels: Sequence[str | None]) -> str:
    """``- code: `a0a6a30d5f48` (4 runs), `…+dirty` (2 runs), no record (1 run)``."""
    counts = Counter(label for label in labels if label is not None)
    parts = [f"`{label}` ({_runs(n)})" for label, n in counts.most_common()]
    missing = sum(label is None for label in labels)
    if missing:
        parts.append(f"no record ({_runs(missing)})")
    return "- code: " + ", ".join(parts)


def warn_if_mixed(labels: Sequence[str | None]) -> str | None:
    """The warning (also issued as a :class:`MixedCodeWarning`) when the runs recorded more
    than one code version, else None."""
    versions = sorted({label for label in labels if label is not None})
    if len(versions) < 2:
        return None
    message = (f"the table mixes runs of {len(versions)} code versions ({', '.join(versions)}): "
               "its rows may differ by code, not only by strategy")
    warnings.warn(message, MixedCodeWarning, stacklevel=2)
    return message


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")
