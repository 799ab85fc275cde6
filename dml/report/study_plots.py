"""The study report's pictures: each difference with its 95 % CI (one panel per Holm family), and
per strategy its training curves. Each function returns the figure and the numbers it drew."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dml.report.stats import ALPHA, Family

if TYPE_CHECKING:
    from dml.report.studies import StudyResult

#: The retrain settings of a study, as the curves name them.
SETTINGS = {"best": "tuned", "defaults": "untuned"}


def _figure(rows: int, columns: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * columns, height * rows), layout="constrained")
    FigureCanvasAgg(fig)  # an Agg canvas: no pyplot state, works headless
    return fig, fig.subplots(rows, columns, squeeze=False)


def effect_plot(families: Sequence[Family], metric: str = "R@1"
                ) -> tuple[Figure, dict[str, list[tuple[str, float, float, float, float]]]]:
    """One panel per family: each tested comparison's difference (points) as a dot with its 95 %
    CI as a bar, filled when the Holm-adjusted p < ALPHA. Returns the figure and, per family,
    ``(label, difference, low, high, Holm p)`` of each dot in points, top to bottom; the label
    is the row when the family has one baseline or each row's own untuned setting (the title
    names the family), else ``row − baseline``."""
    drawn: dict[str, list[tuple[str, float, float, float, float]]] = {}
    for f in families:
        short = (len({c.baseline for c in f.comparisons}) == 1
                 or all(c.baseline == f"{c.row} [untuned]" for c in f.comparisons))
        drawn[f.name] = [(c.row if short else f"{c.row} − {c.baseline}", 100 * c.welch.difference,
                          100 * c.welch.low, 100 * c.welch.high, c.p_holm)
                         for c in f.comparisons if c.tested]
    tallest = max((len(d) for d in drawn.values()), default=1)
    fig, axes = _figure(len(families), 1, 10.0, 1.2 + 0.3 * max(tallest, 1))
    for ax, f in zip(axes[:, 0], families, strict=True):
        dots = drawn[f.name]
        y = tallest - 1 - np.arange(len(dots))  # top-aligned, one spacing for every panel
        for yi, (_, diff, low, high, q) in zip(y, dots, strict=True):
            ax.errorbar(diff, yi, xerr=[[diff - low], [high - diff]], fmt="o", capsize=3,
                        color="black", markerfacecolor="black" if q < ALPHA else "white")
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_ylim(-0.7, tallest - 0.3)
        ax.set_yticks(y, [d[0] for d in dots])
        ax.set(xlabel=f"difference in test {metric} (points), 95 % CI",
               title=f"{f.name} (Holm over {f.size}; filled: Holm p < {ALPHA})")
        ax.grid(axis="x", alpha=0.3)
    return fig, drawn


def _band(curves: Sequence[dict[int, float]]) -> tuple[list[int], list[float], list[float]]:
    """Mean and sample std (0 for one curve) over curves, at the x logged by every one."""
    xs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    means = [statistics.fmean(c[x] for c in curves) for x in xs]
    stds = [statistics.stdev(c[x] for c in curves) if len(curves) > 1 else 0.0 for x in xs]
    return xs, means, stds


def curves_plot(results: Sequence[StudyResult]) -> tuple[Figure, dict[str, dict[str, tuple]]]:
    """Per strategy (a row): the best trial's validation R@1 per epoch (mean ± std over its
    folds with data.val_folds; the retrain runs have no validation classes), and the collapse
    indicator (mean pair cosine of a training batch) per step of the tuned and untuned retrain
    runs, mean ± std over seeds as a band. Returns the figure and, per strategy, ``"val"`` and
    ``"tuned"``/``"untuned"`` → ``(x, mean, std, runs)`` as drawn."""
    fig, axes = _figure(len(results), 2, 4.5, 2.4)
    drawn: dict[str, dict[str, tuple]] = {}
    for (val_ax, cos_ax), r in zip(axes, results, strict=True):
        drawn[r.strategy] = {}
        panels = [("val", val_ax, [d.val_recall_at_1 for d in r.dynamics.get("trial", [])], 100)]
        panels += [(name, cos_ax, [d.pair_cos_by_step for d in r.dynamics.get(setting, [])], 1)
                   for setting, name in SETTINGS.items()]
        for name, ax, curves, scale in panels:
            curves = [c for c in curves if c]
            if not curves:
                continue
            xs, means, stds = _band(curves)
            drawn[r.strategy][name] = (xs, means, stds, len(curves))
            mean, std = scale * np.array(means), scale * np.array(stds)
            if name == "val":
                label = "best trial" + (f", {len(curves)} folds" if len(curves) > 1 else "")
                ax.set_xticks(xs)
            else:
                label = f"{name} ({len(curves)} seeds)"
            ax.plot(xs, mean, marker="o" if name == "val" else None, label=label)
            ax.fill_between(xs, mean - std, mean + std, alpha=0.25)
        val_ax.set(title=f"{r.strategy}: validation R@1", xlabel="epoch", ylabel="%")
        cos_ax.set(title=f"{r.strategy}: collapse indicator", xlabel="step",
                   ylabel="mean pair cos", ylim=(min(0.0, _lowest(drawn[r.strategy])), 1.05))
        for ax in (val_ax, cos_ax):
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize="small")
            else:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    return fig, drawn


def _lowest(drawn: dict[str, tuple]) -> float:
    lows = [m - s for name, (_, means, stds, _) in drawn.items() if name != "val"
            for m, s in zip(means, stds, strict=True)]
    return min(lows, default=0.0) - 0.05
