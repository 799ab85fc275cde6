"""The report of tuned comparisons: one row per study (``dml-train -m search=<loss>``), from its
``study.json`` and the ``metrics.json`` of its retrain runs.

Per strategy: the tuned values (with their place in the search range, flagged at a range edge),
the trials run (complete / pruned / diverged / failed), the validation objective of the defaults
and of the best trial, the test metric of the untuned and the tuned setting over seeds (mean ±
standard deviation, 95 % confidence interval), and the difference of the tuned setting to its
untuned one and to a chosen baseline strategy (95 % CI, Welch's p, Holm-adjusted p over a named
family of tests); pictures of those differences and of the training curves."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution

from dml.provenance import code_label
from dml.report.code_versions import code_line, warn_if_mixed
from dml.report.dynamics import RunDynamics, read_dynamics
from dml.report.stats import ALPHA, Family, family, format_comparison, mean_ci
from dml.report.study_plots import curves_plot, effect_plot
from dml.report.table import (
    display_name,
    family_markdown,
    rows_to_markdown,
    write_comparisons_csv,
)
from dml.runs.records import RunFileError, find_studies, read_run_file
from dml.tune.edges import EDGE_FRACTION, position, range_edges, study_space


@dataclass(frozen=True)
class StudyResult:
    directory: Path
    summary: dict[str, Any]
    test: dict[str, list[dict[str, float]]]  # "best" / "defaults" -> each seed's test metrics
    collapse: dict[str, list[float]]  # "best" / "defaults" -> each seed's last-epoch mean pair cos
    wall_time_s: float  # trials + retrain runs, summed
    space: dict[str, BaseDistribution] | None  # the search ranges (None: not recorded)
    dynamics: dict[str, list[RunDynamics]]  # "best" / "defaults" / "trial" (best trial's folds)
    code: list[str | None]  # each retrain run's code (dml.provenance.code_label)

    @property
    def strategy(self) -> str:
        return self.summary.get("strategy") or self.directory.name

    def values(self, setting: str, metric: str) -> list[float]:
        return [m[metric] for m in self.test.get(setting, []) if metric in m]

    @property
    def best_params(self) -> dict[str, Any]:
        return (self.summary.get("best") or {}).get("params", {})


def load_study_result(directory: Path) -> StudyResult:
    summary = read_run_file(directory / "study.json")
    test: dict[str, list[dict[str, float]]] = {}
    collapse: dict[str, list[float]] = {}
    logged: dict[str, list[RunDynamics]] = {}
    code: list[str | None] = []
    for setting, names in (summary.get("runs") or {}).items():
        for name in names:
            path = directory / name / "metrics.json"
            if path.exists():
                result = read_run_file(path)
                test.setdefault(setting, []).append(result.get("test", {}))
                code.append(code_label(result.get("provenance")))
            dynamics = read_dynamics(directory / name)
            if dynamics is not None:
                logged.setdefault(setting, []).append(dynamics)
            if dynamics is not None and not math.isnan(dynamics.last_epoch["mean_pairwise_sim"]):
                collapse.setdefault(setting, []).append(dynamics.last_epoch["mean_pairwise_sim"])
    number = (summary.get("best") or {}).get("number")
    trial = directory / f"trial_{number}"
    folds = sorted(trial.glob("fold_*")) or [trial]
    logged["trial"] = [d for f in folds if number is not None and (d := read_dynamics(f))]
    wall = sum(float(read_run_file(p).get("wall_time_s") or 0.0)
               for p in directory.glob("*/**/metrics.json"))
    return StudyResult(directory, summary, test, collapse, wall, study_space(directory, summary),
                       logged, code)


def _percent(values: Sequence[float]) -> str:
    if not values:
        return "—"
    mean, half = mean_ci(values)
    if half is None:
        return f"{100 * mean:.1f} (1 seed)"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    low, high = 100 * (mean - half), 100 * (mean + half)
    return f"{100 * mean:.1f} ± {100 * std:.1f} [{low:.1f}, {high:.1f}] (n={len(values)})"


def _values(values: dict[str, Any], space: dict[str, BaseDistribution] | None = None,
            fraction: float = EDGE_FRACTION) -> str:
    """``name=value`` of each value; with its ``space``, each numeric value's place in its range
    in % and a † on those within ``fraction`` of a bound."""
    edges = {e.key for e in range_edges(values, space or {}, fraction)}
    parts = []
    for key, v in values.items():
        short = key.split(".")[-1]
        text = f"{short}={v:.3g}" if isinstance(v, float) else f"{short}={v}"
        where = position(v, space[key]) if space and key in space else None
        if where is not None:
            text += f" [{100 * where:.0f} %]" + ("†" if key in edges else "")
        parts.append(text)
    return ", ".join(parts)


def study_families(results: Sequence[StudyResult], metric: str, baseline: str | None = None,
                   compare: Sequence[tuple[str, str]] = (), name: str = "compared") -> list[Family]:
    """The Holm families of the report: each strategy's tuned setting against its untuned one;
    with ``baseline`` every other tuned strategy against the tuned baseline (the default family
    of a table); with ``compare`` the listed pairs of rows (``<strategy>`` is the tuned setting,
    ``<strategy> [untuned]`` the defaults), as the family ``name`` (e.g. a verdict's claims)."""
    def values(label: str) -> list[float]:
        strategy, untuned = label.removesuffix(" [untuned]"), label.endswith(" [untuned]")
        result = next(r for r in results if r.strategy == strategy)
        return result.values("defaults" if untuned else "best", metric)

    families = [family("tuned vs untuned", [(r.strategy, f"{r.strategy} [untuned]",
                                             values(r.strategy), values(f"{r.strategy} [untuned]"))
                                            for r in results])]
    if baseline is not None:
        families.append(family(f"tuned vs {baseline}", [
            (r.strategy, baseline, values(r.strategy), values(baseline))
            for r in results if r.strategy != baseline]))
    if compare:
        families.append(family(name, [(a, b, values(a), values(b)) for a, b in compare]))
    return families


def studies_markdown(results: Sequence[StudyResult], families: Sequence[Family],
                     metric: str = "recall@1", baseline: str | None = None,
                     fraction: float = EDGE_FRACTION) -> str:
    """The comparison table, a table of the tuned values and, for a family of listed pairs, its
    table; ``metric`` is a test metric, ``families`` those of :func:`study_families` (the
    columns' families first)."""
    name = display_name(metric)
    untuned_cells, base_cells = ({c.row: format_comparison(c) for c in f.comparisons}
                                 for f in (families[0], families[1] if baseline else families[0]))
    header = ["strategy", "trials: complete / pruned / diverged / failed",
              "val objective: default → best",
              f"untuned test {name}", f"tuned test {name}: mean ± std [95 % CI]",
              "tuned − untuned [95 % CI], p, Holm p",
              *([f"tuned − {baseline} [95 % CI], p, Holm p"] if baseline else []),
              "mean pair cos: untuned / tuned"]
    rows = [header, ["---"] * len(header)]
    for r in results:
        s, trials = r.summary, r.summary.get("trials", {})
        best = (s.get("best") or {}).get("value")
        default = s.get("defaults_value")
        objective = " → ".join(f"{100 * v:.1f}" if v is not None else "—" for v in (default, best))
        row = [r.strategy,
               f"{trials.get('complete', 0)} / {trials.get('pruned', 0)} / "
               f"{trials.get('diverged', 0)} / {trials.get('failed', 0)}",
               objective, _percent(r.values("defaults", metric)),
               _percent(r.values("best", metric)),
               untuned_cells[r.strategy]]
        if baseline:
            row.append(base_cells.get(r.strategy, "baseline"))
        row.append(" / ".join(f"{sum(v) / len(v):.2f}" if v else "—"
                              for v in (r.collapse.get("defaults"), r.collapse.get("best"))))
        rows.append(row)
    values = [["strategy", "tuned values [place in the search range]", "defaults"], ["---"] * 3]
    values += [[r.strategy, _values(r.best_params, r.space, fraction),
                _values(r.summary.get("defaults", {}))] for r in results]
    unknown = [r.strategy for r in results if r.space is None]
    note = (f"[x %]: where the value lies in its search range (0 = floor, 100 = ceiling; log "
            f"scale for log ranges); † within {100 * fraction:g} % of a bound (a range edge)")
    note += f"; ranges not recorded: {', '.join(unknown)}" if unknown else ""
    text = rows_to_markdown(rows) + "\n\n" + rows_to_markdown(values) + "\n" + note + ".\n"
    for f in families[2 if baseline else 1:]:  # after the columns' families: --compare's
        text += "\n" + family_markdown(f, metric)
    return text


def _edge_lines(results: Sequence[StudyResult], fraction: float) -> list[str]:
    edges = [f"  - {r.strategy}: {e.describe()}" for r in results
             for e in range_edges(r.best_params, r.space or {}, fraction)]
    head = f"- range edges (tuned values within {100 * fraction:g} % of a search-range bound)"
    return [head + (":" if edges else ": none"), *edges]


def make_study_report(root: Path, out: Path | None = None, metric: str = "recall@1",
                      baseline: str | None = None, compare: Sequence[tuple[str, str]] = (),
                      family_name: str = "compared",
                      edge_fraction: float = EDGE_FRACTION) -> list[Path]:
    """Write ``report.md`` for the studies under ``root`` (one row each), ``comparisons.csv``
    (every test of every family), ``studies.json``, ``effects.png`` (the differences with their
    CIs) and ``curves.png`` (training curves); returns their paths, ``report.md`` first.
    ``compare``: pairs of rows tested as the family ``family_name``; ``edge_fraction``: the
    share of a range, at either end, whose tuned values are flagged."""
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
    for label in (label for pair in compare for label in pair):
        if label.removesuffix(" [untuned]") not in strategies:
            raise RunFileError(f"--compare: {label} is not a study's row (a strategy, or "
                               f"'<strategy> [untuned]'): {', '.join(strategies)}")
    families = study_families(results, metric, baseline, compare, family_name)
    objective = {r.summary.get("objective") for r in results}
    seeds = max((len(r.test.get("best", [])) for r in results), default=0)
    hours = sum(r.wall_time_s for r in results) / 3600
    code = [c for r in results for c in r.code]
    lines = [
        "# Tuned comparison", "",
        f"- studies under `{root}`: {len(results)}; objective {', '.join(map(str, objective))} "
        "on validation classes; tuned and untuned settings retrained on all training classes, "
        f"up to {seeds} seeds each, and tested",
        "- mean pair cos: the collapse indicator (mean cosine of all pairs of a training batch, "
        "1 = every embedding the same), last epoch, mean over seeds",
        "- test metric in %: mean ± sample standard deviation over seeds, [Student-t 95 % "
        "confidence interval of the mean]; differences in points: [Welch 95 % confidence "
        "interval of the difference (Welch–Satterthwaite df)], Welch's two-sided p over seeds, "
        "and Holm's adjusted p over the family of tests the column belongs to; **significant** "
        f"when the Holm-adjusted p < {ALPHA}",
        *(f"- {f.describe()}" for f in families),
        *_edge_lines(results, edge_fraction),
        f"- compute: {hours:.1f} h of run time (trials and retrains, summed)",
        "- pictures: `effects.png` (each difference with its 95 % CI, per family), `curves.png` "
        "(validation R@1 per epoch of the best trial; collapse indicator per step of the "
        "retrain runs, mean ± std over seeds)",
        code_line(code),
    ]
    mixed = warn_if_mixed(code)
    if mixed:
        lines.append(f"- **warning: {mixed}**")
    out = Path(out) if out is not None else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / n for n in ("report.md", "comparisons.csv", "studies.json", "effects.png",
                               "curves.png")]
    paths[0].write_text("\n".join(lines) + "\n\n" + studies_markdown(
        results, families, metric, baseline, edge_fraction))
    write_comparisons_csv(families, paths[1])
    paths[2].write_text(json.dumps(
        [{"strategy": r.strategy, **r.summary, "test": r.test} for r in results], indent=2))
    effect_plot(families, display_name(metric))[0].savefig(paths[3], dpi=100)
    curves_plot(results)[0].savefig(paths[4], dpi=80)
    return paths
