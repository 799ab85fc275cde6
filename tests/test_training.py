import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

import dml
from dml.cli.train import resume_argv
from dml.data import DatasetError
from dml.errors import ConfigError
from dml.losses import DMLLoss
from dml.train.module import NonFiniteLossError
from dml.train.run import train

from .training_utils import REPO, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, train(tiny_config(run_dir))


def test_run_writes_metrics_checkpoints_logs_and_config(trained):
    run_dir, result = trained
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == result
    assert set(saved["test"]) >= {"recall@1", "recall@8", "map@r", "r_precision"}
    assert saved["val"]["recall@1"] >= 0
    assert Path(saved["checkpoint"]).name == "best.ckpt"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "csv" / "version_0" / "metrics.csv").is_file()
    assert "backbone: resnet10t" in (run_dir / "config.yaml").read_text()
    assert not (run_dir / "retrieval_grid.png").exists()  # eval.show=0: no grid
    assert not list((run_dir / "checkpoints").glob(".*tmp"))  # atomic writes leave no temp files


def test_same_seed_gives_identical_metrics(trained, tmp_path):
    _, first = trained
    again = train(tiny_config(tmp_path))
    assert again["test"] == first["test"] and again["val"] == first["val"]


class StopAfter(L.Callback):
    """Simulates a crash: raise at a given step of a given epoch."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated crash")


def test_killed_run_resumes_exactly(trained, tmp_path):
    full_dir, _ = trained
    crash = tiny_config(
        tmp_path,
        "+callbacks.crash._target_=tests.test_training.StopAfter",
        "+callbacks.crash.epoch=1",
        "+callbacks.crash.batch=2",
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crash)
    killed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    before = killed["callbacks"]["WallClock"]["elapsed_s"]
    result = train(tiny_config(tmp_path, "ckpt_path=last"))
    full = torch.load(full_dir / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == full["epoch"] and resumed["global_step"] == full["global_step"]
    for k, v in full["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][k], v, rtol=0, atol=0, msg=k)
    # the run's wall time counts the killed process up to its last checkpoint, then this one
    assert 0 < before < resumed["callbacks"]["WallClock"]["elapsed_s"]
    assert resumed["callbacks"]["WallClock"]["elapsed_s"] <= result["wall_time_s"] + 0.05  # 0.1 s


def test_wall_time_counts_the_final_evaluation_once(tmp_path):
    # The final validate/test reload this process's own checkpoint: its saved elapsed time must
    # not be added again (it was: a run recorded about twice its time).
    started = time.time()
    result = train(tiny_config(tmp_path, "trainer.max_epochs=1"))
    assert 0 < result["wall_time_s"] <= time.time() - started + 0.05  # rounded to 0.1 s


def test_resume_argv_reuses_the_runs_overrides(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- loss=sct\n- seed=3\n")
    assert resume_argv([f"resume={tmp_path}", "trainer.max_epochs=9"]) == [
        "loss=sct",
        "seed=3",
        "trainer.max_epochs=9",
        f"hydra.run.dir={tmp_path}",
        "ckpt_path=last",
    ]
    assert resume_argv(["seed=1"]) == ["seed=1"]


class NaNLoss(DMLLoss):
    def compute(self, embeddings, labels, out, indices=None):
        return embeddings.sum() * float("nan")


def test_nan_loss_is_caught_and_reported(tmp_path):
    cfg = tiny_config(tmp_path, "~loss", "+loss._target_=tests.test_training.NaNLoss")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0, batch 0"):
        train(cfg)


def test_a_loss_that_is_not_a_dml_loss_is_a_config_error(tmp_path):
    cfg = tiny_config(tmp_path, "~loss", "+loss._target_=torch.nn.MSELoss")
    with pytest.raises(ConfigError, match=r"loss\._target_ builds a MSELoss, not a dml\.losses"):
        train(cfg)


def test_bad_configs_give_one_line_errors(tmp_path):
    with pytest.raises(Exception) as info:
        train(tiny_config(tmp_path, "model.backbone=resnet_18"))
    cause = info.value.__cause__ or info.value
    assert isinstance(cause, ConfigError) and "did you mean" in str(cause)
    with pytest.raises(DatasetError, match="K=99"):
        train(tiny_config(tmp_path, "data.batch_k=99"))


def test_cli_reports_unknown_backbone_in_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dml.cli.train",
            "data=synthetic",
            "logger=csv",
            "model.backbone=not_a_model",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown backbone 'not_a_model'")


def test_cli_reports_missing_data_in_one_line(tmp_path):
    env = {**os.environ, "DML_DATA_DIR": str(tmp_path / "nowhere")}
    proc = subprocess.run(
        [sys.executable, "-m", "dml.cli.train", "logger=csv", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Omniglot archive not found: {tmp_path}/nowhere/omniglot/")
    assert "DML_DATA_DIR" in last


def test_load_embedder_matches_the_evaluated_model(trained):
    _run_dir, result = trained
    embed = dml.load_embedder(result["checkpoint"], device="cpu")
    images = [Image.new("L", (16, 16), v) for v in (0, 128, 255)]
    z = embed(images)
    assert z.shape == (3, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    ckpt = torch.load(result["checkpoint"], weights_only=False)
    net = embed.net
    direct = net(torch.stack([embed.transform(i) for i in images]))
    torch.testing.assert_close(z, direct)
    assert any(
        torch.equal(v, net.state_dict()[k[4:]])
        for k, v in ckpt["state_dict"].items()
        if k.startswith("net.")
    )


def test_dml_eval_reproduces_the_test_metrics(trained, tmp_path, capsys):
    from dml.cli.eval import main

    _run_dir, result = trained
    main([result["checkpoint"], "--output", str(tmp_path / "m.json"), "--accelerator", "cpu"])
    out = json.loads((tmp_path / "m.json").read_text())
    for k, v in result["test"].items():
        assert out[k] == pytest.approx(v, abs=1e-6), k


def test_the_wandb_group_resolver_is_registered_explicitly_not_on_import():
    code = (
        "from omegaconf import OmegaConf\n"
        "import dml.runs.records, dml.runs.run_dir\n"
        "assert not OmegaConf.has_resolver('dml.sweep_group'), 'registered on import'\n"
        "dml.runs.run_dir.register_resolvers()\n"
        "assert OmegaConf.create({'g': '${dml.sweep_group:}'}).g is None\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
