"""The training loop's promises, tested where users meet them: through ``dml.train.run.train`` (the
function behind ``dml-train``) with a real Lightning ``Trainer``."""

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra.utils import instantiate

from dml.data import PKBatchSampler
from dml.errors import CheckpointError, ConfigError, DivergenceError, RunDirError
from dml.train.checkpointing import first_non_finite

from .training_utils import REPO, TINY, tiny_config


class RecordBatches(L.Callback):
    """Appends ``[epoch, batch_idx, dataset indices]`` of every training batch to a JSON-lines file;
    raises at ``crash_at`` = ``[epoch, batch_idx]`` (a simulated kill)."""

    def __init__(self, path: str, crash_at: list[int] | None = None) -> None:
        self.path, self.crash_at = Path(path), crash_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if [trainer.current_epoch, batch_idx] == self.crash_at:
            raise RuntimeError("simulated crash")
        with self.path.open("a") as f:
            f.write(json.dumps([trainer.current_epoch, batch_idx, batch[2].tolist()]) + "\n")


def recorded(path: Path) -> dict[int, list[list[int]]]:
    epochs: dict[int, list[list[int]]] = {}
    for line in path.read_text().splitlines():
        epoch, batch_idx, indices = json.loads(line)
        assert batch_idx == len(epochs.setdefault(epoch, []))
        epochs[epoch].append(indices)
    return epochs


def expected_batches(cfg, epochs: int) -> dict[int, list[list[int]]]:
    """What :class:`PKBatchSampler` gives for (seed, epoch) on the run's training split."""
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    labels = datamodule.datasets["train"].labels
    sampler = PKBatchSampler(labels, cfg.data.batch_p, cfg.data.batch_k, cfg.seed)
    out = {}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out[epoch] = list(sampler)
    return out


def record_overrides(log: Path, crash_at: str | None = None) -> list[str]:
    out = [
        "+callbacks.record._target_=tests.test_training_promises.RecordBatches",
        f"+callbacks.record.path={log}",
    ]
    return [*out, f"+callbacks.record.crash_at={crash_at}"] if crash_at else out


def test_every_epoch_draws_the_samplers_batches_for_that_epoch(tmp_path):
    from dml.train.run import train

    log = tmp_path / "batches.jsonl"
    run = tmp_path / "run"
    cfg = tiny_config(run, "trainer.max_epochs=3", "test=false", *record_overrides(log))
    train(cfg)
    seen, expected = recorded(log), expected_batches(cfg, 3)
    assert seen == expected
    assert seen[0] != seen[1] != seen[2] != seen[0]  # new batches every epoch


def test_a_resumed_run_continues_with_the_right_epochs_batches(tmp_path):
    from dml.train.run import train

    log = tmp_path / "batches.jsonl"
    run = tmp_path / "run"
    crash = tiny_config(run, "trainer.max_epochs=3", "test=false", *record_overrides(log, "[1,2]"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crash)
    log.write_text("")  # what the resumed run draws
    train(tiny_config(run, "trainer.max_epochs=3", "test=false", "ckpt_path=last",
                      *record_overrides(log)))
    expected = expected_batches(crash, 3)
    assert recorded(log) == {1: expected[1], 2: expected[2]}


# ---- divergence ----
class PoisonBuffer(L.Callback):
    """Sets a BatchNorm running variance to inf at ``hook`` of epoch ``epoch`` (a diverging step
    that the loss does not see)."""

    def __init__(self, epoch: int, hook: str = "batch") -> None:
        self.epoch, self.hook = epoch, hook

    def _poison(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            bn = next(m for m in pl_module.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.hook == "batch" and batch_idx == 1:
            self._poison(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.hook == "epoch_end":
            self._poison(trainer, pl_module)


def assert_checkpoints_finite(run_dir: Path) -> list[str]:
    names = []
    for path in sorted((run_dir / "checkpoints").glob("*.ckpt")):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert first_non_finite(state.items()) is None, path
        names.append(path.name)
    return names


@pytest.mark.parametrize("hook", ["batch", "epoch_end"])
def test_a_diverging_run_stops_before_a_checkpoint_holds_it(tmp_path, hook):
    """``batch``: caught after the step that diverged; ``epoch_end``: after the last step's check,
    just before last.ckpt is written: the checkpoint gate refuses to write it."""
    from dml.train.run import train

    poison = [
        "+callbacks.poison._target_=tests.test_training_promises.PoisonBuffer",
        "+callbacks.poison.epoch=1",
        f"+callbacks.poison.hook={hook}",
    ]
    with pytest.raises(DivergenceError, match=r"running_var is not finite .*epoch 1"):
        train(tiny_config(tmp_path, "trainer.max_epochs=3", *poison))
    assert assert_checkpoints_finite(tmp_path) == ["best.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not (tmp_path / "metrics.json").exists()


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dml.cli.train", *args],
        capture_output=True, text=True, cwd=cwd, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


TINY_CLI = [*TINY, "trainer.max_epochs=2", "test=false"]


def last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("loss", ["multisimilarity", "triplet_batchhard"])
def test_a_huge_learning_rate_stops_in_one_line_with_finite_checkpoints(tmp_path, loss):
    proc = run_cli(*TINY_CLI, "model.backbone=conv4", f"loss={loss}", "optimizer.lr=1e6",
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last_line(proc).startswith("error: training diverged: ")
    assert "Traceback" not in proc.stderr
    assert_checkpoints_finite(tmp_path)


def test_a_nan_loss_reaches_the_user_as_one_line(tmp_path):
    proc = run_cli(*TINY_CLI, "~loss", "+loss._target_=tests.test_training.NaNLoss",
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_line(proc).startswith("error: training diverged: the loss is nan at epoch 0")


# ---- a run directory belongs to one run ----
class StartSecondRun(L.Callback):
    """While this run trains, starts another run (other seed) in the same directory."""

    def __init__(self, outcome: str) -> None:
        self.outcome = Path(outcome)

    def on_train_epoch_start(self, trainer, pl_module):
        from dml.train.run import train

        if trainer.current_epoch == 0:
            try:
                train(tiny_config(trainer.default_root_dir, "seed=2"))
            except RunDirError as e:
                self.outcome.write_text(str(e))


def test_a_second_run_cannot_write_into_a_live_or_finished_run(tmp_path):
    from dml.train.run import train

    run, outcome = tmp_path / "run", tmp_path / "outcome.txt"
    first = train(tiny_config(
        run, "seed=1",
        "+callbacks.second._target_=tests.test_training_promises.StartSecondRun",
        f"+callbacks.second.outcome={outcome}",
    ))
    assert "is in use by another run (pid" in outcome.read_text()
    records = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "csv" not in p.parts}
    with pytest.raises(RunDirError, match="already holds a run: resume it with"):
        train(tiny_config(run, "seed=2"))
    assert {p: p.read_bytes() for p in records} == records
    assert json.loads((run / "metrics.json").read_text()) == first
    assert "seed: 1" in (run / "config.yaml").read_text()


def test_only_its_own_slurm_job_started_again_resumes_a_run(tmp_path, monkeypatch):
    """A SLURM job started again (requeued after preemption or its time limit:
    ``SLURM_RESTART_COUNT`` > 0, same ``SLURM_JOB_ID``) resumes the run its first start began in
    its directory (on a real SLURM: tests/test_slurm.py); another job, or a first start, is
    refused. Started again after its run finished, it returns the run's metrics."""
    from dml.train.run import train

    run, log = tmp_path / "run", tmp_path / "batches.jsonl"
    args = ["trainer.max_epochs=2", "test=false"]
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(run, *args, *record_overrides(log, "[1,0]")))
    for job, restarts in (("42", "1"), ("41", "0")):
        monkeypatch.setenv("SLURM_JOB_ID", job)
        monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
        with pytest.raises(RunDirError, match="already holds a run"):
            train(tiny_config(run, *args))
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    log.write_text("")
    cfg = tiny_config(run, *args, *record_overrides(log))
    result = train(cfg)
    expected = expected_batches(cfg, 2)
    assert recorded(log) == {1: expected[1]} and result["epochs"] == 2  # resumed at epoch 1
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert train(tiny_config(run, *args, *record_overrides(log))) == result
    assert recorded(log) == {1: expected[1]}  # nothing trained again


def test_jobs_started_in_the_same_second_get_their_own_default_directories():
    """The default ``hydra.run.dir`` / ``sweep.dir`` of conf/config.yaml, resolved at two times
    within one second (as Hydra's ``now`` resolver would), differ."""
    hydra = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())["hydra"]
    at = [datetime(2026, 12, 1, 9, 30, 15, 1000), datetime(2026, 12, 1, 9, 30, 15, 2000)]
    for template in (hydra["run"]["dir"], hydra["sweep"]["dir"]):
        dirs = [re.sub(r"\$\{now:([^}]*)\}", lambda m, t=t: t.strftime(m.group(1)), template)
                for t in at]
        assert dirs[0] != dirs[1], template


def run_records(run_dir: Path) -> dict[Path, bytes]:
    """Every file of a run directory but its lock file, with its content."""
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".dml.lock"}


def test_a_refused_resume_rewrites_nothing(tmp_path):
    proc = run_cli(*TINY_CLI, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = run_records(tmp_path)
    last = f"{tmp_path}/checkpoints/last.ckpt"
    for extra, error in [
        ([], f"{last} has trained 2 epochs"),
        (["trainer.max_epochs=1"], f"{last} has trained 2 epochs"),
        (["trainer.max_epochs=3", "model.embedding_dim=8"], f"{last} does not fit this config"),
    ]:
        proc = run_cli(f"resume={tmp_path}", *extra, cwd=tmp_path.parent)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert last_line(proc).startswith(f"error: {error}")
    assert run_records(tmp_path) == records
    # a checkpoint from elsewhere starts a new run: it may not write into a finished one
    elsewhere = tmp_path.parent / f"{tmp_path.name}_other.ckpt"
    elsewhere.write_bytes(Path(last).read_bytes())
    proc = run_cli(*TINY_CLI, f"ckpt_path={elsewhere}", f"hydra.run.dir={tmp_path}")
    assert last_line(proc).startswith(f"error: {tmp_path} already holds a run")
    assert run_records(tmp_path) == records


def test_resume_of_a_directory_without_a_run_is_refused(tmp_path):
    from dml.train.run import train

    with pytest.raises(RunDirError, match="holds no run to resume"):
        train(tiny_config(tmp_path, "ckpt_path=last"))


def test_resume_of_a_run_killed_in_its_first_epoch_starts_it_again(tmp_path):
    from dml.train.run import train

    crash = tiny_config(tmp_path, *record_overrides(tmp_path / "x.jsonl", "[0,2]"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crash)
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()
    with pytest.warns(UserWarning, match="stopped before its first epoch ended"):
        result = train(tiny_config(tmp_path, "ckpt_path=last"))
    assert result["epochs"] == 2


def test_resume_from_a_truncated_checkpoint_names_it(tmp_path):
    from dml.train.run import train

    train(tiny_config(tmp_path, "trainer.max_epochs=1", "test=false"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    stale = tmp_path / "checkpoints" / ".last.ckpt.99999.tmp"  # a writer killed mid-write
    stale.write_bytes(b"partial")
    with pytest.raises(CheckpointError, match=f"{last} is truncated or not a checkpoint"):
        train(tiny_config(tmp_path, "trainer.max_epochs=2", "ckpt_path=last"))
    assert not stale.exists()


# ---- configurations that cannot train are refused before training ----
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.batch_k=1", "loss=triplet_batchhard"], "data.batch_k=1 images per batch form no"),
        (["data.batch_p=1"], "data.batch_p=1 classes"),
        (["optimizer.lr=-1"], "optimizer: Invalid learning rate: -1"),
        (["module.eval_ks=[0,100]"], r"module.eval_ks must be a list of positive integers"),
        (["eval.show=-1"], r"eval.show must be an integer >= 0 \(the queries of the end-of-run"),
        (["eval.show=4", "eval.show_k=0"], r"eval.show_k must be an integer >= 1"),
    ],
)
def test_configs_that_cannot_train_fail_before_training(tmp_path, overrides, message):
    from dml.train.run import train

    with pytest.raises(ConfigError, match=message):
        train(tiny_config(tmp_path, *overrides))
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "checkpoints").exists()
