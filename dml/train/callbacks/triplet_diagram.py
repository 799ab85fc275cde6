"""Triplet diagram (the plots of Xuan et al. ECCV 2020): where the selected triplets lie in the
(S_an, S_ap) plane during an epoch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dml.report.diagrams import draw_triplet_diagram
from dml.train.wandb_image import log_image_to_wandb

_RANGE = (-1.0, 1.0)


def render_triplet_diagram(hist: np.ndarray, edges: np.ndarray, title: str) -> Figure:
    """Figure of a 2-D histogram ``hist[i, j]`` = number of triplets with S_an in bin i and S_ap
    in bin j, drawn by :func:`dml.report.diagrams.draw_triplet_diagram` (x = S_an, y = S_ap, log
    colour scale, the diagonal S_an = S_ap: triplets right of it are hard, S_an > S_ap), with
    axis labels, ``title``, legend and colour bar. Rendered with the Agg canvas, no global
    backend change."""
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = draw_triplet_diagram(ax, hist, edges)
    ax.set(xlabel="S_an (anchor-negative cosine)", ylabel="S_ap (anchor-positive cosine)")
    ax.set_title(f"{title} — {int(hist.sum())} triplets")
    ax.legend(loc="lower right", fontsize="small")
    fig.colorbar(image, ax=ax, label="triplets")
    return fig


class TripletDiagram(Callback):
    """Accumulates the cosine ``(S_an, S_ap)`` of the triplets the loss selected
    (``triplet_similarities`` of the training step's outputs) over the chosen epochs, into a
    ``bins`` × ``bins`` histogram on [-1, 1]² that counts each triplet of the global batch once.
    Under DDP with the module's ``cross_rank_mining`` every rank computes the loss on the same
    global batch and records the same triplets, so rank 0's histogram is the global one;
    otherwise each rank mines its own shard and the ranks' histograms are summed. At the end of
    such an epoch rank 0 writes
    ``<trainer.default_root_dir>/triplet_diagrams/epoch_XXX.png`` (the figure) and
    ``epoch_XXX.npz`` (``hist``, ``edges``, ``epoch``; ``hist[i, j]`` counts S_an in bin i and
    S_ap in bin j), and logs the image to a W&B logger if one is attached.

    ``epochs``: 0-based epoch indices to record (``None``: every epoch). Losses without triplets
    (``triplet_similarities is None``) contribute nothing.
    """

    def __init__(self, epochs: Sequence[int] | None = None, bins: int = 100) -> None:
        self.epochs = None if epochs is None else {int(e) for e in epochs}
        self.bins = bins
        self.edges = np.linspace(*_RANGE, bins + 1)
        self._hist: np.ndarray | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        recording = self.epochs is None or epoch in self.epochs
        self._hist = np.zeros((self.bins, self.bins)) if recording else None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        similarities = outputs.get("triplet_similarities") if isinstance(outputs, dict) else None
        if self._hist is None or similarities is None:
            return
        s_ap, s_an = (s.detach().float().cpu().numpy() for s in similarities)
        self._hist += np.histogram2d(s_an, s_ap, bins=(self.edges, self.edges))[0]

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._hist is None:
            return
        hist = self._hist
        if not getattr(pl_module, "cross_rank_mining", False):  # per-rank shards: add them up
            total = trainer.strategy.reduce(
                torch.as_tensor(hist, device=pl_module.device), reduce_op="sum"
            )
            hist = total.cpu().numpy()
        self._hist = None
        if not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        out = Path(trainer.default_root_dir) / "triplet_diagrams"
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"epoch_{epoch:03d}"
        np.savez(stem.with_suffix(".npz"), hist=hist, edges=self.edges, epoch=epoch)
        figure = render_triplet_diagram(hist, self.edges, f"epoch {epoch}")
        figure.savefig(stem.with_suffix(".png"), dpi=100)
        log_image_to_wandb(trainer.loggers, stem.with_suffix(".png"), trainer.global_step,
                           key="triplet_diagram")
