"""Resuming a run never runs foreign code, never mixes experiments or loses a record, and an
interrupted run says so. ``dml-train resume=<dir>`` trusts a run directory only for what
dml-train itself wrote there: overrides that name code outside the allow-list, set ``hydra.*``,
or make the run a study's trial are refused in one line before anything runs or is written."""

import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import yaml

from dml.errors import RunDirError
from dml.train.run import train

from .test_report import fake_run
from .test_training_promises import TINY_CLI, last_line, run_cli, run_records
from .training_utils import tiny_config


def planted_run(run_dir: Path, *overrides: str) -> Path:
    """A run directory whose recorded overrides are ``TINY_CLI`` plus ``overrides``, as someone
    else's folder could hold it."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*TINY_CLI, *overrides]))
    (run_dir / "config.yaml").write_text("seed: 0\n")
    return run_dir


def copy_to(marker: Path) -> str:
    return f"{{_target_: shutil.copyfile, src: {__file__}, dst: {marker}}}"


@pytest.mark.parametrize("planted", ["callback", "hydra callback"])
def test_resume_refuses_overrides_that_name_untrusted_code(planted, tmp_path):
    marker = tmp_path / "pwned"
    override, error = {
        "callback": (f"+callbacks.evil={copy_to(marker)}",
                     "names callbacks.evil._target_='shutil.copyfile', not a dml or vetted"),
        "hydra callback": (f"+hydra.callbacks.evil={copy_to(marker)}", "sets '+hydra.callbacks"),
    }[planted]
    run_dir = planted_run(tmp_path / "run", override)
    records = run_records(run_dir)
    proc = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last_line(proc).startswith(f"error: cannot resume {run_dir}: ")
    assert error in last_line(proc)
    assert not marker.exists() and run_records(run_dir) == records


def test_resume_of_a_tuner_trial_is_refused_before_anything_is_written(tmp_path):
    study = tmp_path / "study"
    run_dir = planted_run(study / "trial_0", "+trial.number=0", "+trial.study=study",
                          f"+trial.storage={study / 'optuna.journal'}", "+trial.objective=val")
    records = run_records(run_dir)
    proc = run_cli(f"resume={run_dir}", "trainer.max_epochs=3", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last_line(proc) == (f"error: cannot resume {run_dir}: it is a trial of the study in "
                               f"{study} and belongs to it; rerun the study's command to "
                               "continue its trials")
    assert run_records(run_dir) == records


def test_resume_with_another_loss_is_refused_unless_forced_and_then_recorded(tmp_path):
    train(tiny_config(tmp_path, "trainer.max_epochs=1", "test=false"))
    records = run_records(tmp_path)
    resume = ("ckpt_path=last", "trainer.max_epochs=2", "test=false", "loss=contrastive")
    with pytest.raises(RunDirError, match=(
            rf"^resuming {tmp_path}/checkpoints/last.ckpt would change loss._target_ from "
            r"'dml.losses.MultiSimilarityLoss' to 'dml.losses.ContrastiveLoss' and \d+ more "
            r"setting\(s\), mixing two experiments in one run: .* pass resume_changes=true")):
        train(tiny_config(tmp_path, *resume))
    assert run_records(tmp_path) == records
    train(tiny_config(tmp_path, *resume, "resume_changes=true"))
    [change] = json.loads((tmp_path / "changes.json").read_text())
    assert change["epoch"] == 1 and change["changes"]["loss._target_"] == [
        "dml.losses.MultiSimilarityLoss", "dml.losses.ContrastiveLoss"]


def test_resume_dropping_a_memory_with_resume_changes_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*TINY_CLI, "model.backbone=conv4", "trainer.max_epochs=1", "memory=xbm",
                   "memory.size=64", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = run_records(run_dir)
    # memory=null is Hydra's ~memory, and the saved memory.size=64 goes with the memory
    proc = run_cli(f"resume={run_dir}", "memory=null", "resume_changes=true",
                   "trainer.max_epochs=2", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last_line(proc) == (
        f"error: {run_dir}/checkpoints/last.ckpt does not fit this config's model or loss "
        '(Unexpected key(s) in state_dict: "loss.memory_embeddings", "loss.memory_labels", '
        '"loss.memory_count", "loss.memory_next", "loss.steps".): resume_changes=true allows '
        "only changes that fit the run's weights and state (not another model shape, nor adding "
        "or dropping a memory): train the new setting in a new directory (hydra.run.dir=...)")
    assert run_records(run_dir) == records


def test_a_run_that_trained_but_lost_last_ckpt_is_refused_naming_what_is_missing(tmp_path):
    train(tiny_config(tmp_path, "trainer.max_epochs=1", "test=false"))
    (tmp_path / "checkpoints" / "last.ckpt").unlink()
    records = run_records(tmp_path)
    with pytest.raises(RunDirError) as info:
        train(tiny_config(tmp_path, "ckpt_path=last", "trainer.max_epochs=2", "test=false"))
    assert str(info.value) == (
        f"cannot resume {tmp_path}: {tmp_path}/checkpoints/last.ckpt is missing but the run has "
        "trained (metrics.json, checkpoints/best.ckpt exist): restore last.ckpt, or train into "
        "a new directory (hydra.run.dir=...)")
    assert run_records(tmp_path) == records


class SendSigterm(L.Callback):
    """Sends this process SIGTERM (as a scheduler's time limit does) at the start of ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_exits_non_zero_and_leaves_a_marker_that_dml_report_shows(tmp_path, capsys):
    from dml.cli.report import main as dml_report

    run_dir = tmp_path / "sweep" / "1"
    proc = run_cli(*TINY_CLI, "+callbacks.term._target_=tests.test_resume_safety.SendSigterm",
                   "+callbacks.term.epoch=1", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last_line(proc) == (f"error: {run_dir} was interrupted (SIGTERM at epoch 1): resume "
                               f"it with `dml-train resume={run_dir}`")
    assert (run_dir / "interrupted").read_text() == "SIGTERM at epoch 1\n"
    assert not (run_dir / "metrics.json").exists()
    fake_run(tmp_path / "sweep" / "0", "sct", "cub200", 0, {"recall@1": 0.5})
    dml_report([str(tmp_path / "sweep"), "--out", str(tmp_path / "report")])
    assert "`1` (interrupted: SIGTERM at epoch 1)" in capsys.readouterr().out
    train(tiny_config(run_dir, "trainer.max_epochs=2", "test=false", "ckpt_path=last"))
    assert not (run_dir / "interrupted").exists()  # resumed and finished


def test_resume_of_a_directory_that_is_not_a_run_is_one_line(tmp_path, monkeypatch, capsys):
    from dml.cli.train import main

    monkeypatch.setattr("sys.argv", ["dml-train", f"resume={tmp_path}"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: cannot resume {tmp_path}: {tmp_path}/.hydra/overrides.yaml not found (is it a "
        "dml-train run directory?)\n")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without GPU")
def test_trainer_ddp_without_a_gpu_names_ddp_cpu_before_anything_is_written(tmp_path):
    from dml.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^trainer.accelerator=gpu but no CUDA GPU is visible: "
                                          r"for DDP on CPU processes use trainer=ddp_cpu"):
        train(tiny_config(tmp_path, "trainer=ddp"))
    assert [p.name for p in tmp_path.iterdir()] == [".dml.lock"]
