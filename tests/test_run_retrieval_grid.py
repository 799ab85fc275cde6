"""The retrieval grid of a run (README: Using a trained model): a real ``dml-train`` run draws
its final evaluation's grid (``eval.show`` queries, top-``eval.show_k``) into its directory from
the embeddings that evaluation computed, and logs it to its (offline) W&B run as an image;
``dml-report RUN --show`` draws it again from the run's selected checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from PIL import Image

from dml.cli.report import main as dml_report
from dml.train.run import train

from .grid_checks import assert_grid_is_knn
from .training_utils import REPO, TINY, tiny_config
from .wandb_offline import offline_runs, records

N, K = 4, 3
KINDS = ["worst"] * 2 + ["random"] * 2


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("grid") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "dml.cli.train", *TINY, "logger=default", "trainer.max_epochs=1",
         f"eval.show={N}", f"eval.show_k={K}", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"retrieval grid: {run_dir / 'retrieval_grid.png'}" in proc.stdout
    return run_dir


def table(png: Path) -> list[dict]:
    return json.loads(png.with_suffix(".json").read_text())


def test_a_run_ends_with_the_grid_of_its_test_knn(run):
    png = run / "retrieval_grid.png"
    assert Image.open(png).size[0] > 100
    rows = table(png)
    assert [row["kind"] for row in rows] == KINDS
    assert_grid_is_knn(rows, run / "checkpoints" / "best.ckpt", k=K, worst=2)


def test_the_wandb_run_holds_the_grid_image(run):
    (wandb_run,) = offline_runs(run)
    (path,) = wandb_run.folder.glob("run-*.wandb")
    logged = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            logged.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                           for i in record.history.item})
    assert logged["test/retrieval_grid/_type"] == "images/separated"
    assert "2 worst by precision@3" in logged["test/retrieval_grid/captions"][0]
    (name,) = logged["test/retrieval_grid/filenames"]
    drawn = (run / "retrieval_grid.png").read_bytes()
    assert (wandb_run.folder / "files" / name).read_bytes() == drawn


def test_dml_report_draws_a_runs_grid_from_its_checkpoint(run, tmp_path, capsys):
    out = tmp_path / "report"
    dml_report([str(run), "--show", str(N), "--show-k", str(K), "--out", str(out)])
    assert str(out / "retrieval_grid.png") in capsys.readouterr().out
    rows = table(out / "retrieval_grid.png")
    assert Image.open(out / "retrieval_grid.png").size[0] > 100
    at_end = table(run / "retrieval_grid.png")  # the same checkpoint, split and seed
    assert [row["query"] for row in rows] == [row["query"] for row in at_end]
    assert_grid_is_knn(rows, run / "checkpoints" / "best.ckpt", k=K, worst=2)


def test_a_run_without_test_draws_its_validation_grid(tmp_path):
    cfg = tiny_config(tmp_path, "test=false", "trainer.max_epochs=1", "eval.show=2",
                      "eval.show_k=2")
    train(cfg)
    rows = table(tmp_path / "retrieval_grid.png")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    val = [str(r.item) for r in datamodule.datasets["val"].records]
    assert [row["kind"] for row in rows] == ["worst", "random"]
    assert all(val[row["query"]] == row["query_item"] for row in rows)


def test_a_grid_that_cannot_be_drawn_warns_and_the_run_still_succeeds(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("dml.train.run.write_run_grid", broken)
    cfg = tiny_config(tmp_path, "test=false", "trainer.max_epochs=1", "eval.show=2")
    with pytest.warns(RuntimeWarning, match="retrieval grid not drawn: No space left on device"):
        result = train(cfg)
    assert json.loads((tmp_path / "metrics.json").read_text())["val"] == result["val"]
