"""The report's bar plot: per dataset, R@1 and MAP@R of each strategy (mean ± std over seeds)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dml.report.table import Cell, display_name

BAR_METRICS = ("recall@1", "map@r")


def bar_plot(cells: Sequence[Cell], paper: bool = False) -> Figure:
    """One panel per dataset; per strategy a bar for each of R@1 and MAP@R (in %, error bar =
    sample std over seeds); with ``paper``, the published R@1 as a black diamond. Rendered on an
    Agg canvas (no pyplot state, works headless)."""
    datasets = list(dict.fromkeys(c.dataset for c in cells))
    widest = max(sum(c.dataset == d for c in cells) for d in datasets)
    fig = Figure(figsize=(1.5 + 1.1 * widest, 3.6 * len(datasets)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(datasets), 1, squeeze=False)[:, 0]
    width = 0.8 / len(BAR_METRICS)
    for ax, dataset in zip(axes, datasets, strict=True):
        row = [c for c in cells if c.dataset == dataset]
        x = np.arange(len(row))
        for i, metric in enumerate(BAR_METRICS):
            means = [100 * (c.mean(metric) or 0.0) for c in row]
            stds = [100 * (c.std(metric) or 0.0) for c in row]
            ax.bar(x + (i - 0.5) * width, means, width, yerr=stds, capsize=3,
                   label=display_name(metric))
        published = [c.published() for c in row]
        shown = [(xi, p) for xi, p in zip(x, published, strict=True) if isinstance(p, float)]
        if paper and shown:
            ax.scatter([xi - 0.5 * width for xi, _ in shown], [p for _, p in shown],
                       marker="D", color="black", zorder=3, label="paper R@1")
        ax.set_xticks(x, [c.strategy for c in row], rotation=20, ha="right")
        ax.set(ylabel="%", ylim=(0, 100), title=dataset)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return fig
