"""How each run trained, read from its CSV logs (``<run>/csv/version_*/metrics.csv``).

The test metrics of a report come from the checkpoint with the best validation Recall@1, which
can hide a run that collapsed after it. This module recovers, per run, the validation Recall@1
curve and the last training epoch's batch statistics (see :mod:`dml.losses.base`): the collapse
indicator ``mean_pairwise_sim`` (mean cosine over all pairs of a batch; 1 when every embedding is
the same), ``hard_fraction`` (used triplets with S_an > S_ap) and the mean S_ap, S_an; and
of a loss with a wrapper, the share of its tuples taken from the cross-batch memory
(``memory_fraction``) or with a synthetic member (``synthetic_fraction``).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dml.report.table import Cell, format_mean_std, format_percent, mean_std, rows_to_markdown

TRAIN_STATS = ("mean_pairwise_sim", "hard_fraction", "mean_s_ap", "mean_s_an")
#: Logged by the loss's wrappers only (``memory=``, ``synthesis=``): columns when some run has them.
WRAPPER_STATS = {"memory_fraction": "memory %", "synthetic_fraction": "synthetic %"}


@dataclass(frozen=True)
class RunDynamics:
    """``val_recall_at_1[e]``: validation R@1 after training epoch ``e`` (0-based, as logged; the
    re-evaluation of the selected checkpoint after training, logged at epoch = max_epochs, is not
    part of the curve); ``last_epoch[stat]``: mean of ``train/<stat>`` over the logged steps of
    the last training epoch (NaN when the loss never logged it, e.g. ``hard_fraction`` of a pair
    loss, ``memory_fraction`` without a memory); ``pair_cos_by_step[s]``: the collapse indicator
    ``train/mean_pairwise_sim`` logged at global step ``s``."""

    val_recall_at_1: dict[int, float]
    last_epoch: dict[str, float]
    pair_cos_by_step: dict[int, float]

    @property
    def best_epoch(self) -> int | None:
        """The first epoch with the highest validation R@1 (the selected checkpoint's)."""
        if not self.val_recall_at_1:
            return None
        best = max(self.val_recall_at_1.values())
        return min(e for e, v in self.val_recall_at_1.items() if v == best)

    @property
    def last_val_recall_at_1(self) -> float | None:
        return self.val_recall_at_1[max(self.val_recall_at_1)] if self.val_recall_at_1 else None


def _number(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def _version(path: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", path.parent.name)
    return int(match.group(1)) if match else -1


def _trained_epochs(run_dir: Path) -> int | None:
    """The epochs the run trained (its ``metrics.json``), None if unknown."""
    try:
        return int(json.loads((run_dir / "metrics.json").read_text())["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_dynamics(run_dir: str | Path) -> RunDynamics | None:
    """The :class:`RunDynamics` of a run directory, None without CSV logs. Logs of a resumed run
    (``version_1``, ...) replace the earlier versions' rows of the epochs they cover."""
    files = sorted(Path(run_dir).glob("csv/version_*/metrics.csv"), key=_version)
    if not files:
        return None
    val: dict[int, float] = {}
    train: dict[int, list[dict[str, str]]] = {}
    for path in files:
        file_train: dict[int, list[dict[str, str]]] = {}
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                epoch = _number(row.get("epoch"))
                if epoch is None:
                    continue
                recall = _number(row.get("val/recall@1"))
                if recall is not None:
                    val[int(epoch)] = recall
                if _number(row.get("train/loss")) is not None:
                    file_train.setdefault(int(epoch), []).append(row)
        train.update(file_train)
    # not the selected checkpoint's re-evaluation after training, logged at epoch = the epochs
    # trained (metrics.json); a short epoch (fewer steps than log_every_n_steps) logs no train row
    trained = _trained_epochs(Path(run_dir))
    val = {e: v for e, v in val.items() if e in train or (trained is not None and e < trained)}
    last_rows = train[max(train)] if train else []
    last_epoch = {}
    for stat in (*TRAIN_STATS, *WRAPPER_STATS):
        values = [v for r in last_rows if (v := _number(r.get(f"train/{stat}"))) is not None]
        values = [v for v in values if not math.isnan(v)]
        last_epoch[stat] = sum(values) / len(values) if values else math.nan
    by_step = {int(step): v for rows in train.values() for r in rows
               if (step := _number(r.get("step"))) is not None
               and (v := _number(r.get("train/mean_pairwise_sim"))) is not None
               and not math.isnan(v)}
    return RunDynamics(val, last_epoch, dict(sorted(by_step.items())))


def dynamics_markdown(cells: Sequence[Cell]) -> str:
    """A table per dataset: per strategy, mean ± std over seeds of the best and the last
    validation R@1, each seed's best epoch, and the last epoch's collapse indicator, hard-triplet
    fraction, S_ap and S_an (and the memory's or synthetic tuples' share when a run logged it).
    Empty when no run has CSV logs."""
    logged = [[d for r in c.runs if (d := read_dynamics(r.run_dir)) is not None] for c in cells]
    wrapper_stats = [s for s in WRAPPER_STATS
                     if any(not math.isnan(d.last_epoch[s]) for ds in logged for d in ds)]
    parts = []
    for dataset in dict.fromkeys(c.dataset for c in cells):
        header = ["strategy", "val R@1 best", "best epoch", "val R@1 last", "mean pair cos",
                  "hard %", "S_ap", "S_an", *(WRAPPER_STATS[s] for s in wrapper_stats)]
        rows = [header, ["---"] * len(header)]
        for cell, runs in zip(cells, logged, strict=True):
            if cell.dataset != dataset or not runs:
                continue
            best = [max(d.val_recall_at_1.values()) for d in runs if d.val_recall_at_1]
            last = [v for d in runs if (v := d.last_val_recall_at_1) is not None]
            epochs = [str(e) for d in runs if (e := d.best_epoch) is not None]
            row = [cell.strategy, format_percent(*mean_std(best)), " ".join(epochs) or "—",
                   format_percent(*mean_std(last))]
            for stat in (*TRAIN_STATS, *wrapper_stats):
                values = [d.last_epoch[stat] for d in runs if not math.isnan(d.last_epoch[stat])]
                fmt = format_percent if stat.endswith("_fraction") else format_mean_std
                row.append(fmt(*mean_std(values)))
            rows.append(row)
        if len(rows) > 2:
            parts.append(f"### {dataset}\n\n" + rows_to_markdown(rows))
    if not parts:
        return ""
    note = (
        "Validation R@1 in %, mean ± std over seeds; best epoch: each seed's epoch of the "
        "selected checkpoint (0-based). Last training epoch, averaged over its logged steps: "
        "mean pair cos = mean cosine over all pairs of a batch (1 = collapsed), hard % = used "
        "triplets with S_an > S_ap (triplet losses only), mean S_ap and S_an of the used "
        "triplets or pairs"
    )
    if wrapper_stats:
        note += ("; memory % / synthetic % = used tuples taken from the cross-batch memory / "
                 "with a synthetic member (losses with memory= / synthesis= only)")
    return "## Training dynamics\n\n" + note + ".\n\n" + "\n".join(parts)
