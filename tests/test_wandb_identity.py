"""W&B runs a team can read (README: W&B), read from the offline run files a real ``dml-train``
wrote: name, job type, tags, the code that made the run in its config, and a resumed run that
continues the same W&B run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dml.wandb_run import ID_FILE, group_name

from .training_utils import REPO, TINY
from .wandb_offline import offline_runs


def dml_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dml.cli.train", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_resumed_run_continues_the_same_named_and_tagged_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    first = dml_train(*TINY, "logger=default", "memory=xbm", "seed=3", "trainer.max_epochs=1",
                      "test=false", f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = dml_train(f"resume={run_dir}", "trainer.max_epochs=2")  # its own overrides
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = offline_runs(run_dir)
    assert len(runs) == 2  # one offline folder per process, both of one W&B run
    kept = (run_dir / ID_FILE).read_text().strip()
    assert [r.run.run_id for r in runs] == [kept, kept] and len(kept) == 8
    for r in runs:
        assert r.run.display_name == "multisimilarity+xbm-seed3"
        assert r.run.job_type == "train"
        assert list(r.run.tags) == ["loss=multisimilarity", "memory=xbm", "synthesis=none",
                                    "data=synthetic", "seed=3"]
        assert r.run.run_group == ""  # a single run: no sweep, no group
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert runs[-1].config["provenance"] == metrics["provenance"]  # the code, in W&B


def test_groups_of_directories_with_the_same_name_differ(tmp_path):
    a, b = tmp_path / "studies" / "a" / "hcl", tmp_path / "studies" / "b" / "hcl"
    assert group_name(a) != group_name(b)
    assert group_name(a).startswith("a/hcl-") and group_name(b).startswith("b/hcl-")
    assert group_name(a) == group_name(tmp_path / "studies" / "x" / ".." / "a" / "hcl")
    assert len(group_name(tmp_path / ("x" * 300))) <= 128
