"""What a dataset source yields: one record per image, grouped by split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Record:
    """One image: ``item`` is what the source's loader opens (usually a file path), ``label`` the
    class name, ``group`` a coarser unit used to carve class-disjoint validation splits (e.g. the
    Omniglot alphabet; defaults to the class itself)."""

    item: Any
    label: str
    group: str | None = None

    @property
    def group_key(self) -> str:
        return self.label if self.group is None else self.group


def class_counts(records: Sequence[Record]) -> dict[str, int]:
    """Number of images of each class, in first-seen order."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.label] = counts.get(r.label, 0) + 1
    return counts


def summarize(splits: dict[str, Sequence[Record]]) -> dict[str, dict[str, int]]:
    """``{split: {"classes": C, "images": N}}``: what a user checks before a long job."""
    return {
        name: {"classes": len(class_counts(recs)), "images": len(recs)}
        for name, recs in splits.items()
    }
