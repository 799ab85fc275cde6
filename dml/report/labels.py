"""How the report labels runs: the row (strategy) and column (dataset) of each run, with the
settings that keep runs of one cell apart (:func:`cell_labels`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from dml.runs.records import Run

#: Overrides of these are variants of the dataset (the column); others of the strategy (the row).
DATASET_KEYS = ("data.", "experiment")


def cell_labels(runs: Iterable[Run]) -> list[tuple[str, str]]:
    """``(strategy label, dataset label)`` of each run.

    A run's row is its strategy with the loss's wrappers (:attr:`Run.name`, e.g.
    ``multisimilarity+xbm``) and, for a study's retrain run, ``tuned`` or ``untuned``
    (``sct [tuned]``). Runs with the same row and dataset are seeds of one cell unless some
    setting (an override other than seed/loss/data/memory/synthesis) takes several values among
    them: such a setting then becomes part of those runs' labels — of the dataset for ``data.*``
    and ``experiment``, else of the strategy — e.g. ``sct [loss.lam=0.5]`` or
    ``omniglot [experiment=fair_omniglot_merged]``.

    Runs from several directories (:attr:`Run.source`) pool into one cell, unless one seed of
    it comes from two directories (a re-run, or other code or config defaults behind the same
    overrides): then every run of that cell also gets its directory, ``contrastive [dir=a]``.
    """
    runs = list(runs)
    parts = _label_parts(runs)
    apart = _seeds_in_several_dirs(runs, parts)
    names = source_names([r.source for r in runs if r.source is not None])
    labels = []
    for run, (row, qualifiers, dataset) in zip(runs, parts, strict=True):
        if (row, qualifiers, dataset) in apart and run.source is not None:
            qualifiers = (*qualifiers, f"dir={names[run.source]}")
        labels.append((_label(row, qualifiers), dataset))
    return labels


def rows_kept_apart(runs: Sequence[Run]) -> list[str]:
    """The rows of :func:`cell_labels` split by directory (a seed in several of them)."""
    parts = _label_parts(runs)
    return sorted({_label(row, qualifiers) for row, qualifiers, _ in
                   _seeds_in_several_dirs(runs, parts)})


def source_names(sources: Iterable[Path]) -> dict[Path, str]:
    """How a label names each directory: its name, or its path when two share a name."""
    unique = list(dict.fromkeys(sources))
    names = {p: p.resolve().name or str(p) for p in unique}
    shared = {n for n in names.values() if list(names.values()).count(n) > 1}
    return {p: str(p) if n in shared else n for p, n in names.items()}


#: A run's label before any directory: (row, its qualifiers, dataset label).
_Parts = tuple[str, tuple[str, ...], str]


def _label_parts(runs: Sequence[Run]) -> list[_Parts]:
    settings = [run.settings() for run in runs]
    keys = {k for s in settings for k in s}
    cells = [(run.name, run.tuning, run.dataset) for run in runs]
    seen: dict[tuple[tuple[str, str | None, str], str], set[str | None]] = {}
    for cell, s in zip(cells, settings, strict=True):
        for key in keys:
            seen.setdefault((cell, key), set()).add(s.get(key))
    splitting: dict[tuple[str, str | None, str], list[str]] = {}
    for (cell, key), v in sorted(seen.items(), key=lambda kv: kv[0][1]):
        if len(v) > 1:
            splitting.setdefault(cell, []).append(key)
    parts = []
    for run, cell, s in zip(runs, cells, settings, strict=True):
        split_keys = splitting.get(cell, [])
        data_part = [f"{k}={s[k]}" for k in split_keys if k.startswith(DATASET_KEYS) and k in s]
        loss_part = [f"{k}={s[k]}" for k in split_keys
                     if not k.startswith(DATASET_KEYS) and k in s]
        tuning = (run.tuning,) if run.tuning else ()
        parts.append((run.name, (*tuning, *loss_part), _label(run.dataset, tuple(data_part))))
    return parts


def _seeds_in_several_dirs(runs: Sequence[Run], parts: Sequence[_Parts]) -> set[_Parts]:
    sources: dict[tuple[_Parts, int | None], set[Path | None]] = {}
    for run, part in zip(runs, parts, strict=True):
        sources.setdefault((part, run.seed), set()).add(run.source)
    return {part for (part, _), found in sources.items() if len(found) > 1}


def _label(name: str, qualifiers: tuple[str, ...]) -> str:
    return f"{name} [{' '.join(qualifiers)}]" if qualifiers else name


def common_settings(runs: Sequence[Run]) -> dict[str, str]:
    """The settings every run shares (shown once in the report's header)."""
    if not runs:
        return {}
    shared = dict(runs[0].settings())
    for run in runs[1:]:
        s = run.settings()
        shared = {k: v for k, v in shared.items() if s.get(k) == v}
    return shared
