"""dml-eval --show N: a PNG grid of N queries with their top-k, and its table, whose cells are the
k-NN of the split's embeddings (recomputed here with dml.load_embedder and exact_knn) with the
worst queries by precision@k first."""

from __future__ import annotations

import json

import numpy as np
import torch
from hydra.utils import instantiate
from PIL import Image

import dml
from dml.cli.eval import main as dml_eval
from dml.eval import exact_knn

from .deploy_utils import untrained_checkpoint

SCORE_TOL = 1e-5  # float32 unit vectors embedded in other batches: ranks swap only within this


def test_show_writes_a_grid_of_the_knn(tmp_path, capsys):
    ckpt = untrained_checkpoint(tmp_path / "model.ckpt", "data=synthetic")
    png = tmp_path / "grid.png"
    dml_eval([str(ckpt), "--accelerator", "cpu", "--show", "5", "--show-k", "3",
              "--show-path", str(png), "module.nmi=false"])
    assert Image.open(png).size[0] > 100
    table = json.loads(png.with_suffix(".json").read_text())
    assert [row["kind"] for row in table] == ["worst"] * 3 + ["random"] * 2

    source = instantiate(torch.load(ckpt, weights_only=True)["dml_config"]["data"]["source"])
    records = source.splits()["test"]
    z = dml.load_embedder(ckpt, device="cpu")([source.load(r.item) for r in records])
    labels = np.array([r.label for r in records])
    scores, knn = exact_knn(z, z, 3, exclude_self=True)
    precision = (labels[knn.numpy()] == labels[:, None]).mean(axis=1)
    all_scores = (z @ z.T).numpy()
    for row in table:
        q, got = row["query"], np.array(row["neighbours"])
        assert str(records[q].item) == row["query_item"]
        assert row["correct"] == (labels[got] == labels[q]).tolist()
        same = got == knn[q].numpy()
        assert (same | (np.abs(all_scores[q, got] - scores[q].numpy()) <= SCORE_TOL)).all()
        assert np.allclose(row["scores"], all_scores[q, got], atol=SCORE_TOL)
    worst = max(precision[row["query"]] for row in table[:3])
    others = np.delete(precision, [row["query"] for row in table[:3]])
    assert worst <= others.min()
