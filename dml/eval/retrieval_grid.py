"""Pictures of retrieval: queries and their top-k neighbours, correct and wrong ones marked.

:func:`retrieval_grid` chooses the queries, half of them the worst by precision@k (the fraction
of their top-k that share their label; among equal precision, the lower query index first) and
the rest at random (seeded) among the others, and returns their k-NN (:func:`dml.eval.exact_knn`,
the k-NN of :func:`dml.eval.retrieval_metrics`). :func:`draw_retrieval_grid` draws it: one row
per query, the query first (blue frame), then its neighbours best first, framed green when
correct and red when wrong, each titled with its cosine similarity. :func:`write_retrieval_grid`
does both for an evaluated split of a data module, with the grid's table as JSON beside the PNG
(``dml-eval --show``, the end of a ``dml-train`` run, ``dml-report RUN --show``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from dml.eval.knn import exact_knn

if TYPE_CHECKING:
    from dml.data import DMLDataModule

COLOURS = {"query": "#1f77b4", True: "#2ca02c", False: "#d62728"}


@dataclass(frozen=True)
class RetrievalGrid:
    """Row ``i``: query ``queries[i]`` (chosen as ``kinds[i]``: worst or random), its gallery
    neighbours ``neighbours[i]`` best first, their ``scores`` and whether each is ``correct``."""

    queries: list[int]
    kinds: list[str]
    neighbours: list[list[int]]
    scores: list[list[float]]
    correct: list[list[bool]]

    def table(self) -> list[dict[str, object]]:
        """The grid's cells as JSON-ready rows."""
        return [
            {"query": q, "kind": kind, "neighbours": nb, "scores": s, "correct": c}
            for q, kind, nb, s, c in zip(self.queries, self.kinds, self.neighbours, self.scores,
                                         self.correct, strict=True)
        ]


def retrieval_grid(
    query: Tensor,
    query_labels: Tensor,
    gallery: Tensor | None = None,
    gallery_labels: Tensor | None = None,
    n: int = 8,
    k: int = 5,
    seed: int = 0,
) -> RetrievalGrid:
    """``n`` queries (``ceil(n/2)`` worst by precision@k, the rest random) and their top-``k``;
    ``gallery=None``: leave-one-out among the queries. Queries without any item of their label
    in the gallery are never chosen."""
    leave_one_out = gallery is None
    query = F.normalize(query.float(), dim=1)
    gallery = query if leave_one_out else F.normalize(gallery.float(), dim=1)
    g_labels = query_labels if leave_one_out else gallery_labels
    k = min(k, gallery.shape[0] - int(leave_one_out))
    scores, idx = exact_knn(query, gallery, k, exclude_self=leave_one_out)
    correct = g_labels[idx] == query_labels[:, None]
    classes, ids = torch.unique(torch.cat([query_labels, g_labels]), return_inverse=True)
    in_gallery = torch.bincount(ids[len(query_labels) :], minlength=classes.numel())
    same = in_gallery[ids[: len(query_labels)]] - int(leave_one_out)
    eligible = (same > 0).nonzero().squeeze(1)
    precision = correct[eligible].float().mean(dim=1)
    n = min(n, eligible.numel())
    worst = eligible[torch.argsort(precision, stable=True)[: (n + 1) // 2]]
    rest = np.setdiff1d(eligible.numpy(), worst.numpy())
    rng = np.random.default_rng(seed)
    random = np.sort(rng.choice(rest, size=n - worst.numel(), replace=False))
    chosen = [*worst.tolist(), *random.tolist()]
    return RetrievalGrid(
        queries=chosen,
        kinds=["worst"] * worst.numel() + ["random"] * len(random),
        neighbours=idx[chosen].tolist(),
        scores=scores[chosen].tolist(),
        correct=correct[chosen].tolist(),
    )


def draw_retrieval_grid(
    grid: RetrievalGrid,
    query_image: Callable[[int], Image.Image],
    gallery_image: Callable[[int], Image.Image],
    path: str | os.PathLike,
    cell_inches: float = 1.3,
) -> None:
    """Save ``grid`` as a PNG at ``path``; ``query_image(i)`` / ``gallery_image(j)`` open the
    images of query ``i`` and gallery item ``j``."""
    rows, cols = len(grid.queries), 1 + max((len(nb) for nb in grid.neighbours), default=0)
    fig = Figure(figsize=(cols * cell_inches, rows * cell_inches * 1.15))
    FigureCanvasAgg(fig)
    for r, (q, kind) in enumerate(zip(grid.queries, grid.kinds, strict=True)):
        cells = [(query_image(q), COLOURS["query"], f"query {q} ({kind})")]
        for j, s, ok in zip(grid.neighbours[r], grid.scores[r], grid.correct[r], strict=True):
            cells.append((gallery_image(j), COLOURS[ok], f"{j}: {s:.3f}"))
        for c, (img, colour, title) in enumerate(cells):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            ax.imshow(np.asarray(img), cmap="gray" if img.mode == "L" else None)
            ax.set_title(title, fontsize=6, color=colour)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_retrieval_grid(
    datamodule: DMLDataModule,
    split: str,
    parts: list[tuple[Tensor, Tensor]],
    path: Path,
    n: int,
    k: int,
) -> RetrievalGrid:
    """Draw ``n`` queries of the evaluated ``split`` with their top-``k`` into the PNG ``path``
    and write the grid's table (with each query's item) to the ``.json`` beside it. ``parts``:
    the module's ``(embeddings, labels)`` of the split's eval loaders in dataset order, one part
    (leave-one-out) or two (query → gallery)."""
    names = ("query", "gallery") if len(parts) == 2 else (split, split)
    (q, ql), (g, gl) = parts[0], parts[-1]
    grid = retrieval_grid(q, ql, *((g, gl) if len(parts) == 2 else (None, None)), n=n, k=k)
    datasets = [datamodule.datasets[name] for name in names]

    def opener(dataset):
        return lambda i: datamodule.source.load(dataset.records[i].item)

    draw_retrieval_grid(grid, opener(datasets[0]), opener(datasets[1]), path)
    table = [{**row, "query_item": str(datasets[0].records[row["query"]].item)}
             for row in grid.table()]
    Path(path).with_suffix(".json").write_text(json.dumps(table, indent=1) + "\n")
    return grid
