"""Every run records the code that made it (``metrics.json`` ``provenance``): the commit and dirty
flag of the checkout it ran from, the library versions, host and GPU; ``dml-report`` lists the
commits of a table and warns when they mix. Through ``dml-train`` and ``dml-report`` run from a
git checkout made in tmp_path (outside git, the installed wheel: tests/test_install.py)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from .training_utils import REPO, TINY


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def checkout(where: Path) -> Path:
    """A git repository holding the package, its configs and the sweeper plugin, committed."""
    where.mkdir()
    for name in ("dml", "conf", "hydra_plugins"):  # dml/conf stays a link to ../conf
        shutil.copytree(REPO / name, where / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", ".gitignore"):
        shutil.copy2(REPO / name, where / name)
    git(where, "init", "-q")
    git(where, "add", ".")
    git(where, "commit", "-q", "-m", "code")
    return where


def run_from(repo: Path, cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def train(repo: Path, cwd: Path, run_dir: str) -> dict:
    proc = run_from(repo, cwd, "dml.cli.train", *TINY, "trainer.max_epochs=1", "test=false",
                    f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((cwd / run_dir / "metrics.json").read_text())["provenance"]


def test_runs_record_their_commit_and_dirty_flag_and_the_report_warns_when_they_mix(tmp_path):
    repo = checkout(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")
    (repo / "notes.txt").write_text("not code: a new file outside dml/, conf/, hydra_plugins/\n")
    clean = train(repo, tmp_path, "sweep/clean")
    assert clean["dml"] == "0.1.0" and (clean["commit"], clean["dirty"]) == (head, False)
    assert clean["python"] == platform.python_version() and clean["host"] == socket.gethostname()
    for name in ("torch", "lightning", "timm", "optuna"):
        assert clean[name] == metadata.version(name)
    assert clean["cuda"] == torch.version.cuda
    assert clean["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)

    config = repo / "conf" / "config.yaml"
    config.write_text(config.read_text() + "# edited, not committed\n")
    now = run_from(repo, tmp_path, "dml.provenance")  # what the next run would record
    assert now.returncode == 0, now.stderr[-3000:]
    assert (json.loads(now.stdout)["commit"], json.loads(now.stdout)["dirty"]) == (head, True)

    other = tmp_path / "sweep" / "dirty"  # a run of the edited code (its record, not its run)
    shutil.copytree(tmp_path / "sweep" / "clean", other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["provenance"]["dirty"] = True
    (other / "metrics.json").write_text(json.dumps(metrics))
    mixed = run_from(repo, tmp_path, "dml.cli.report", "sweep", "--split", "val")
    assert mixed.returncode == 0, mixed.stderr[-3000:]
    assert f"- code: `{head[:12]}` (1 run), `{head[:12]}+dirty` (1 run)" in mixed.stdout
    warning = (f"warning: the table mixes runs of 2 code versions ({head[:12]}, "
               f"{head[:12]}+dirty)")
    assert warning in mixed.stdout and warning in mixed.stderr
    one = run_from(repo, tmp_path, "dml.cli.report", "sweep/clean", "--split", "val")
    assert one.returncode == 0, one.stderr[-3000:]
    assert f"- code: `{head[:12]}` (1 run)" in one.stdout and "warning" not in one.stderr
