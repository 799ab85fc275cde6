"""Triplet diagrams saved by :class:`dml.train.callbacks.triplet_diagram.TripletDiagram`, read
back from run directories and laid out side by side (strategies × epochs);
:func:`draw_triplet_diagram` draws one histogram, for these grids and for the callback's own
figure of an epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from dml.report.table import Cell


def draw_triplet_diagram(
    ax: Axes,
    hist: np.ndarray,
    edges: np.ndarray,
    norm: Normalize | None = None,
    linewidth: float = 1.0,
) -> AxesImage:
    """Draw on ``ax`` the 2-D histogram ``hist[i, j]`` = number of triplets with S_an in bin i and
    S_ap in bin j (bin edges ``edges`` on both axes): x = S_an, y = S_ap, empty bins blank, colour
    scale ``norm`` (default: logarithmic from 1 to the largest count), and the diagonal
    S_an = S_ap in red, ``linewidth`` wide, labelled for a legend (triplets right of it are hard,
    S_an > S_ap). Returns the image, for a colour bar."""
    if norm is None:
        norm = LogNorm(vmin=1, vmax=max(float(hist.max()), 1.0))
    image = ax.imshow(
        np.ma.masked_equal(hist.T, 0),
        origin="lower",
        extent=(edges[0], edges[-1], edges[0], edges[-1]),
        norm=norm,
        cmap="viridis",
        aspect="equal",
        interpolation="nearest",
    )
    span = (edges[0], edges[-1])
    ax.plot(span, span, color="red", linewidth=linewidth, label="S_an = S_ap")
    return image


@dataclass(frozen=True)
class SavedDiagram:
    """One saved histogram: ``hist[i, j]`` counts triplets with S_an in bin i and S_ap in bin j
    (bin edges ``edges`` on [-1, 1]) over training epoch ``epoch`` (0-based)."""

    epoch: int
    hist: np.ndarray
    edges: np.ndarray
    path: Path


def load_triplet_diagrams(run_dir: str | Path) -> list[SavedDiagram]:
    """The diagrams of a run (``<run_dir>/triplet_diagrams/epoch_*.npz``), by epoch."""
    out = []
    for path in sorted(Path(run_dir).glob("triplet_diagrams/epoch_*.npz")):
        with np.load(path) as z:
            out.append(SavedDiagram(int(z["epoch"]), z["hist"], z["edges"], path))
    return sorted(out, key=lambda d: d.epoch)


def first_seed_diagrams(cells: Sequence[Cell]) -> dict[str, list[SavedDiagram]]:
    """``{label: diagrams}`` of each cell's lowest-seed run, for :func:`diagram_grid`; cells
    without triplets (pair losses, or the callback disabled) are left out. Labels are the
    strategies, with the dataset appended when the cells span several datasets."""
    several = len({c.dataset for c in cells}) > 1
    rows = {}
    for cell in cells:
        run = min(cell.runs, key=lambda r: (r.seed is None, r.seed or 0))
        saved = load_triplet_diagrams(run.run_dir)
        if any(d.hist.any() for d in saved):  # pair losses save empty histograms
            rows[f"{cell.strategy} / {cell.dataset}" if several else cell.strategy] = saved
    return rows


def diagram_grid(rows: Mapping[str, Sequence[SavedDiagram]]) -> Figure:
    """A grid of triplet diagrams: one row per label (e.g. a strategy), one column per epoch;
    x = S_an, y = S_ap, log colour scale shared by all panels, the diagonal S_an = S_ap in red
    (triplets right of it are hard), and a red cross at the triplets' mean (S_an, S_ap), which
    makes a collapse (every triplet in the corner bin at (1, 1)) visible."""
    epochs = sorted({d.epoch for ds in rows.values() for d in ds})
    vmax = max((float(d.hist.max()) for ds in rows.values() for d in ds), default=1.0)
    norm = LogNorm(vmin=1, vmax=max(vmax, 1.0))
    fig = Figure(figsize=(2.6 * len(epochs) + 1.2, 2.7 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(epochs), squeeze=False, sharex=True, sharey=True)
    image = None
    for r, (label, diagrams) in enumerate(rows.items()):
        by_epoch = {d.epoch: d for d in diagrams}
        for c, epoch in enumerate(epochs):
            ax = axes[r, c]
            d = by_epoch.get(epoch)
            if d is not None:
                image = draw_triplet_diagram(ax, d.hist, d.edges, norm, linewidth=0.8)
            else:  # no diagram of this epoch: the diagonal alone
                ax.plot((-1, 1), (-1, 1), color="red", linewidth=0.8)
            title = f"{label}\nepoch {epoch}"
            if d is not None and d.hist.any():
                centres = (d.edges[:-1] + d.edges[1:]) / 2
                total = d.hist.sum()
                mean_an = float(d.hist.sum(axis=1) @ centres / total)
                mean_ap = float(d.hist.sum(axis=0) @ centres / total)
                ax.plot(mean_an, mean_ap, "x", color="red", markersize=7, clip_on=False)
                title += f", {int(total)} triplets"
            ax.set_title(title, fontsize="small")
            if c == 0:
                ax.set_ylabel("S_ap", fontsize="small")
            if r == len(rows) - 1:
                ax.set_xlabel("S_an", fontsize="small")
    if image is not None:
        fig.colorbar(image, ax=axes, label="triplets", shrink=0.8)
    return fig
