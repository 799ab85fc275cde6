"""Range edges: a tuned value close to a bound of its search range, where the search may have
stopped at the wall rather than at an optimum.

A value's *position* in its range is the fraction of the way from ``low`` (0) to ``high`` (1),
in log space for a ``log: true`` range. A value at position ≤ ``fraction`` lies at the range's
floor, at ≥ 1 − ``fraction`` at its ceiling (default: within 5 % of the range). Categorical
choices have no order and are never flagged. The sweeper warns about them when a study ends, and
``dml-report`` marks them in the study table, both through :func:`range_edges`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from dml.tune.space import distributions
from dml.tune.storage import open_storage

#: The default share of a range, at either end, whose values are flagged.
EDGE_FRACTION = 0.05


def position(value: Any, distribution: BaseDistribution) -> float | None:
    """Where ``value`` lies in a numeric range (0 = low, 1 = high; log space for a log range);
    None for a categorical range or a range of one value."""
    if not isinstance(distribution, (FloatDistribution, IntDistribution)):
        return None
    low, high = distribution.low, distribution.high
    if high <= low:
        return None
    if distribution.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


@dataclass(frozen=True)
class Edge:
    """A tuned value at a bound of its range: ``bound`` is ``"floor"`` or ``"ceiling"``."""

    key: str
    value: float
    bound: str
    position: float
    distribution: FloatDistribution | IntDistribution

    def describe(self) -> str:
        d = self.distribution
        scale = "log " if d.log else ""
        share = self.position if self.bound == "floor" else 1 - self.position
        return (f"{self.key}={self.value:.3g} lies {100 * share:.1f} % of its {scale}range "
                f"[{d.low:g}, {d.high:g}] from the {self.bound}")


def range_edges(values: Mapping[str, Any], space: Mapping[str, BaseDistribution],
                fraction: float = EDGE_FRACTION) -> list[Edge]:
    """The values (of keys in ``space``) within ``fraction`` of their range's floor or ceiling."""
    edges = []
    for key, value in values.items():
        where = position(value, space[key]) if key in space else None
        if where is None:
            continue
        bound = "floor" if where <= fraction else "ceiling" if where >= 1 - fraction else None
        if bound is not None:
            edges.append(Edge(key, value, bound, where, space[key]))
    return edges


def study_space(directory: Path, summary: Mapping[str, Any]) -> dict[str, BaseDistribution] | None:
    """The search space a study ran: ``ranges`` of its ``study.json`` (written since issue 23),
    else the distributions its Optuna storage recorded for the best trial (the study's journal,
    read only; ``<directory>/optuna.journal`` when the recorded path has moved). None when
    neither holds the study (a damaged journal is a one-line :class:`ConfigError`)."""
    if summary.get("ranges"):
        return distributions(summary["ranges"])
    best = summary.get("best") or {}
    storage = str(summary.get("storage") or "")
    if "://" not in storage and not Path(storage).is_file():
        storage = str(directory / "optuna.journal")
    if best.get("number") is None or ("://" not in storage and not Path(storage).is_file()):
        return None
    try:
        study = optuna.load_study(study_name=summary.get("study") or directory.name,
                                  storage=open_storage(storage))
    except KeyError:  # another study's storage: its ranges are not this study's
        return None
    return dict(study.trials[best["number"]].distributions)
