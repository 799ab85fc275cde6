"""The report of tuned comparisons: one row per study (``dml-train -m search=<loss>``), from its
``study.json`` and the ``metrics.json`` of its retrain runs.

Per strategy: the tuned values, the trials run (complete / pruned / diverged / failed), the
validation objective of the defaults and of the best trial, the test metric of the untuned and
the tuned setting over seeds (mean ± standard deviation, 95 % confidence interval), and Welch's
t-test of the tuned setting against its untuned one and against a chosen baseline strategy."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dml.report.dynamics import read_dynamics
from dml.report.runs import RunFileError, find_studies, read_run_file
from dml.report.stats import ALPHA, format_welch, mean_ci
from dml.report.table import display_name, rows_to_markdown


@dataclass(frozen=True)
class StudyResult:
    directory: Path
    summary: dict[str, Any]
    test: dict[str, list[dict[str, float]]]  # "best" / "defaults" -> each seed's test metrics
    collapse: dict[str, list[float]]  # "best" / "defaults" -> each seed's last-epoch mean pair cos
    wall_time_s: float  # trials + retrain runs, summed

    @property
    def strategy(self) -> str:
        return self.summary.get("strategy") or self.directory.name

    def values(self, setting: str, metric: str) -> list[float]:
        return [m[metric] for m in self.test.get(setting, []) if metric in m]


def load_study_result(directory: Path) -> StudyResult:
    summary = read_run_file(directory / "study.json")
    test: dict[str, list[dict[str, float]]] = {}
    collapse: dict[str, list[float]] = {}
    for setting, names in (summary.get("runs") or {}).items():
        for name in names:
            path = directory / name / "metrics.json"
            if path.exists():
                test.setdefault(setting, []).append(read_run_file(path).get("test", {}))
            dynamics = read_dynamics(directory / name)
            if dynamics is not None and not math.isnan(dynamics.last_epoch["mean_pairwise_sim"]):
                collapse.setdefault(setting, []).append(dynamics.last_epoch["mean_pairwise_sim"])
    wall = sum(float(read_run_file(p).get("wall_time_s") or 0.0)
               for p in directory.glob("*/**/metrics.json"))
    return StudyResult(directory, summary, test, collapse, wall)


def _percent(values: Sequence[float]) -> str:
    if not values:
        return "—"
    mean, half = mean_ci(values)
    if half is None:
        return f"{100 * mean:.1f} (1 seed)"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    low, high = 100 * (mean - half), 100 * (mean + half)
    return f"{100 * mean:.1f} ± {100 * std:.1f} [{low:.1f}, {high:.1f}] (n={len(values)})"


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else
                     f"{k.split('.')[-1]}={v}" for k, v in values.items())


def studies_markdown(results: Sequence[StudyResult], metric: str = "recall@1",
                     baseline: str | None = None) -> str:
    """The comparison table (and a table of the tuned values); ``metric`` is a test metric."""
    name = display_name(metric)
    base = next((r for r in results if r.strategy == baseline), None)
    header = ["strategy", "trials: complete / pruned / diverged / failed",
              "val objective: default → best",
              f"untuned test {name}", f"tuned test {name}: mean ± std [95 % CI]",
              "tuned − untuned (p)", *([f"tuned − {baseline} (p)"] if base else []),
              "mean pair cos: untuned / tuned"]
    rows = [header, ["---"] * len(header)]
    for r in results:
        s, trials = r.summary, r.summary.get("trials", {})
        best = (s.get("best") or {}).get("value")
        default = s.get("defaults_value")
        objective = " → ".join(f"{100 * v:.1f}" if v is not None else "—" for v in (default, best))
        tuned, untuned = r.values("best", metric), r.values("defaults", metric)
        row = [r.strategy,
               f"{trials.get('complete', 0)} / {trials.get('pruned', 0)} / "
               f"{trials.get('diverged', 0)} / {trials.get('failed', 0)}",
               objective, _percent(untuned), _percent(tuned), format_welch(tuned, untuned)]
        if base:
            baseline_values = base.values("best", metric)
            row.append("baseline" if r is base else format_welch(tuned, baseline_values))
        row.append(" / ".join(f"{sum(v) / len(v):.2f}" if v else "—"
                              for v in (r.collapse.get("defaults"), r.collapse.get("best"))))
        rows.append(row)
    values = [["strategy", "tuned values", "defaults"], ["---"] * 3]
    values += [[r.strategy, _values((r.summary.get("best") or {}).get("params", {})),
                _values(r.summary.get("defaults", {}))] for r in results]
    return rows_to_markdown(rows) + "\n\n" + rows_to_markdown(values) + "\n"


def make_study_report(root: Path, out: Path | None = None, metric: str = "recall@1",
                      baseline: str | None = None) -> Path:
    """Write ``report.md`` for the studies under ``root`` (one row each); returns its path."""
    results = [load_study_result(d) for d in find_studies(root)]
    if not results:
        raise RunFileError(f"no study.json under {root} (is it a dml-train -m search=... dir?)")
    if not any(r.values(s, metric) for r in results for s in ("best", "defaults")):
        raise RunFileError(f"--metric {metric}: no retrain run under {root} has that test metric")
    strategies = [r.strategy for r in results]
    if len(set(strategies)) < len(strategies):
        raise RunFileError(
            f"several studies under {root} tune the same strategy ({', '.join(strategies)}): "
            "report each dataset's or protocol's studies from their own directory"
        )
    if baseline is not None and baseline not in strategies:
        raise RunFileError(f"--baseline {baseline} is not one of the studies: "
                           f"{', '.join(strategies)}")
    objective = {r.summary.get("objective") for r in results}
    seeds = max((len(r.test.get("best", [])) for r in results), default=0)
    hours = sum(r.wall_time_s for r in results) / 3600
    lines = [
        "# Tuned comparison", "",
        f"- studies under `{root}`: {len(results)}; objective {', '.join(map(str, objective))} "
        "on validation classes; tuned and untuned settings retrained on all training classes, "
        f"up to {seeds} seeds each, and tested",
        "- mean pair cos: the collapse indicator (mean cosine of all pairs of a training batch, "
        "1 = every embedding the same), last epoch, mean over seeds",
        "- test metric in %: mean ± sample standard deviation over seeds, [Student-t 95 % "
        "confidence interval of the mean]; differences: Welch's two-sided t-test over seeds, "
        f"**significant** when p < {ALPHA}",
        f"- compute: {hours:.1f} h of run time (trials and retrains, summed)",
    ]
    out = Path(out) if out is not None else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n\n" + studies_markdown(results, metric, baseline))
    (out / "studies.json").write_text(json.dumps(
        [{"strategy": r.strategy, **r.summary, "test": r.test} for r in results], indent=2))
    return path
