"""dml-eval --show N: a PNG grid of N queries with their top-k, and its table, whose cells are the
k-NN of the split's embeddings (recomputed here with dml.load_embedder and exact_knn) with the
worst queries by precision@k first."""

from __future__ import annotations

import json

from PIL import Image

from dml.cli.eval import main as dml_eval

from .deploy_utils import untrained_checkpoint
from .grid_checks import assert_grid_is_knn


def test_show_writes_a_grid_of_the_knn(tmp_path, capsys):
    ckpt = untrained_checkpoint(tmp_path / "model.ckpt", "data=synthetic")
    png = tmp_path / "grid.png"
    dml_eval([str(ckpt), "--accelerator", "cpu", "--show", "5", "--show-k", "3",
              "--show-path", str(png), "module.nmi=false"])
    assert Image.open(png).size[0] > 100
    table = json.loads(png.with_suffix(".json").read_text())
    assert [row["kind"] for row in table] == ["worst"] * 3 + ["random"] * 2
    assert_grid_is_knn(table, ckpt, k=3, worst=3)
