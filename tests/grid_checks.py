"""Check a retrieval grid's table (``dml-eval --show``, the end of a ``dml-train`` run,
``dml-report RUN --show``) against the k-NN recomputed with ``dml.load_embedder`` and
``exact_knn``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

import dml
from dml.eval import exact_knn

SCORE_TOL = 1e-5  # float32 unit vectors embedded in other batches: ranks swap only within this


def assert_grid_is_knn(table: list[dict], ckpt: Path, k: int, worst: int) -> None:
    """Each row of ``table``, drawn from ``ckpt`` on its test split (leave-one-out), holds its
    query's exact top-``k`` (ranks swapped only between scores tied within :data:`SCORE_TOL`),
    their cosine scores and correctness; the first ``worst`` rows are the queries of the lowest
    precision@k."""
    source = instantiate(torch.load(ckpt, weights_only=True)["dml_config"]["data"]["source"])
    records = source.splits()["test"]
    z = dml.load_embedder(ckpt, device="cpu")([source.load(r.item) for r in records])
    labels = np.array([r.label for r in records])
    scores, knn = exact_knn(z, z, k, exclude_self=True)
    precision = (labels[knn.numpy()] == labels[:, None]).mean(axis=1)
    all_scores = (z @ z.T).numpy()
    for row in table:
        q, got = row["query"], np.array(row["neighbours"])
        assert len(got) == k
        assert str(records[q].item) == row["query_item"]
        assert row["correct"] == (labels[got] == labels[q]).tolist()
        same = got == knn[q].numpy()
        assert (same | (np.abs(all_scores[q, got] - scores[q].numpy()) <= SCORE_TOL)).all()
        assert np.allclose(row["scores"], all_scores[q, got], atol=SCORE_TOL)
    chosen = [row["query"] for row in table[:worst]]
    assert max(precision[chosen]) <= np.delete(precision, chosen).min()
