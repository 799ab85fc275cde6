"""A tiny sweep end to end: `dml-train -m` (2 strategies × 2 seeds) then `dml-report`."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STRATEGIES, SEEDS = ("sct", "triplet_batchhard"), (0, 1)
SWEEP = [
    "data=synthetic",
    "logger=csv",
    "model.backbone=test_resnet",
    "model.embedding_dim=8",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "module.nmi=false",
    "eval.show=0",
    "++callbacks.triplet_diagram._target_=dml.train.callbacks.triplet_diagram.TripletDiagram",
    "++callbacks.triplet_diagram.bins=20",
    f"loss={','.join(STRATEGIES)}",
    f"seed={','.join(map(str, SEEDS))}",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model: threads only add overhead


def run_tiny_sweep(base: Path) -> Path:
    """The sweep's directory under ``base``, running the sweep once per test session (the notebook
    test reuses it)."""
    sweep = base / "tiny_sweep"
    if not (sweep / "multirun.yaml").is_file():
        proc = subprocess.run(
            [str(BIN / "dml-train"), "-m", *SWEEP, f"hydra.sweep.dir={sweep}"],
            capture_output=True, text=True, cwd=REPO, env=ENV, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return run_tiny_sweep(tmp_path_factory.getbasetemp())


def test_sweep_runs_every_job(sweep):
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == len(STRATEGIES) * len(SEEDS)
    for job in jobs:
        assert set(json.loads((job / "metrics.json").read_text())["test"]) >= {"recall@1", "map@r"}
        assert [p.name for p in sorted((job / "triplet_diagrams").glob("*.npz"))] == [
            "epoch_000.npz", "epoch_001.npz"
        ]


def test_dml_report_makes_the_table_and_the_plot(sweep, tmp_path):
    proc = subprocess.run(
        [str(BIN / "dml-report"), str(sweep), "--paper", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # the reference: metrics.json of each job, grouped by the loss in its overrides
    values: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    for job in sweep.iterdir():
        if (job / "metrics.json").is_file():
            loss = next(o for o in (job / ".hydra" / "overrides.yaml").read_text().split()
                        if o.startswith("loss="))[5:]
            values[loss].append(json.loads((job / "metrics.json").read_text())["test"])
    text = (tmp_path / "report.md").read_text()
    assert proc.stdout.startswith(text)
    assert f"- command: `dml-train -m {' '.join(SWEEP)}`" in text  # how to make it again
    assert "sweep wall time" in text
    for s in STRATEGIES:
        row = next(line for line in text.splitlines() if line.startswith(f"| {s} |"))
        cells = row.strip("| \n").split(" | ")
        assert cells[1] == str(len(SEEDS)) and cells[-1] == "—"  # no paper number on synthetic
        for column, metric in ((2, "recall@1"), (3, "map@r")):
            v = np.array([m[metric] for m in values[s]])
            assert cells[column] == f"{100 * v.mean():.1f} ± {100 * v.std(ddof=1):.1f}"
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert sorted(r["strategy"] for r in rows) == list(STRATEGIES)
    assert all(r["dataset"] == "synthetic" and r["seeds"] == "0 1" for r in rows)
    with Image.open(tmp_path / "report.png") as img:
        assert img.format == "PNG" and min(img.size) > 100
