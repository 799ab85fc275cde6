"""Launching: the SLURM sweep command of docs/cluster.md (submitted to a fake ``sbatch``), the DDP
trainer configs, and the per-job reset that lets every Hydra multirun job start its own DDP group.
"""

from __future__ import annotations

import itertools
import os
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from dml.runs.run_dir import register_resolvers
from dml.train import launch
from dml.wandb_run import group_name

REPO = Path(__file__).resolve().parents[1]
FAKE_SBATCH = """#!/bin/sh
cp "$1" "$SBATCH_CAPTURE"
echo "sbatch: fake (test): not submitted" >&2
exit 1
"""


def compose_job(overrides: list[str], **hydra: object) -> DictConfig:
    """A job's config, with Hydra's runtime set (``hydra`` values first) so that
    ``${hydra:...}`` interpolations resolve and ``HydraConfig.get()`` is this job's; dml's
    resolvers registered, as ``dml-train`` does."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        for key, value in hydra.items():
            OmegaConf.update(cfg.hydra, key, value)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def hydra_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever HydraConfig a test sets is undone afterwards."""
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)


def docs_slurm_command() -> list[str]:
    text = (REPO / "docs" / "cluster.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    (command,) = [b for b in blocks if "hydra/launcher=slurm" in b and "search=" not in b]
    return shlex.split(command.replace("\\\n", " "))


def sweep_values(argv: list[str], key: str) -> list[str]:
    (value,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"{key}=")]
    return value.split(",")


@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> tuple[list[str], dict[str, str], list[list[str]]]:
    """Runs the documented command with fake ``sbatch``/``srun`` on PATH; returns its arguments,
    the ``#SBATCH`` options of the submission script and every job's overrides."""
    tmp = tmp_path_factory.mktemp("slurm")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, script in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 1\n")):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    argv = docs_slurm_command()
    assert argv[:2] == ["dml-train", "-m"]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "SBATCH_CAPTURE": str(tmp / "submission.sh")}
    proc = subprocess.run(
        [sys.executable, "-m", "dml.cli.train", *argv[1:], f"hydra.sweep.dir={tmp / 'sweep'}"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
    )
    assert "sbatch: fake (test)" in proc.stderr, proc.stderr[-3000:]
    script = (tmp / "submission.sh").read_text()
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", script, re.M))
    jobs = []
    for pkl in (tmp / "sweep" / ".submitit").glob("*.pkl"):
        with pkl.open("rb") as f:
            jobs.append(list(pickle.load(f).args[0]))
    return argv, options, jobs


def test_docs_sweep_is_one_array_job_of_multi_gpu_ddp_tasks(submitted):
    argv, options, jobs = submitted
    losses, seeds = sweep_values(argv, "loss"), sweep_values(argv, "seed")
    (gpus,) = sweep_values(argv, "trainer.devices")
    (nodes,) = sweep_values(argv, "trainer.num_nodes")
    n = len(losses) * len(seeds)
    assert len(losses) >= 5 and len(seeds) == 3
    assert options["array"] == f"0-{n - 1}%{n}"
    assert options["gpus-per-node"] == options["ntasks-per-node"] == gpus != "1"
    assert options["nodes"] == nodes
    assert options["partition"] == sweep_values(argv, "hydra.launcher.partition")[0]
    assert options["time"] == sweep_values(argv, "hydra.launcher.timeout_min")[0]
    assert len(jobs) == n
    points = {(o["loss"], o["seed"]) for o in
              (dict(a.split("=", 1) for a in job if not a.startswith("+")) for job in jobs)}
    assert points == set(itertools.product(losses, seeds))


def test_every_job_of_the_docs_sweep_composes_for_ddp_and_wandb(submitted, hydra_runtime):
    _, options, jobs = submitted
    for job in jobs:
        cfg = compose_job(job, mode="MULTIRUN", **{"sweep.dir": "/scratch/multirun/x"})
        world = cfg.trainer.devices * cfg.trainer.num_nodes
        assert world == int(options["ntasks-per-node"]) * int(options["nodes"])
        assert cfg.trainer.strategy._target_ == "dml.train.launch.job_ddp_strategy"
        assert cfg.data.batch_p % world == 0, "the P×K sampler needs P divisible by the ranks"
        assert cfg.module.cross_rank_mining is True
        choice = cfg.hydra.runtime.choices.loss
        wandb = cfg.logger.wandb
        assert wandb.offline is False and wandb.group == group_name("/scratch/multirun/x")
        assert wandb.job_type == "train" and wandb.name == f"{choice}-seed{cfg.seed}"
        assert list(wandb.tags) == [f"loss={choice}", "memory=none", "synthesis=none",
                                    "data=cub200", f"seed={cfg.seed}"]
        assert cfg.loss._target_.startswith("dml.losses")


def test_slurm_launcher_takes_gpus_and_nodes_from_the_trainer(hydra_runtime):
    cfg = compose_job(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8",
                       "trainer.num_nodes=2", "hydra.launcher.partition=a100"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (8, 8, 2)
    assert launcher.partition == "a100" and launcher.timeout_min > 0


def test_ddp_trainer_configs(hydra_runtime, monkeypatch):
    monkeypatch.setattr(launch, "_launch_state", None)
    gpu = compose_job(["trainer=ddp"]).trainer
    assert gpu.accelerator == "gpu" and gpu.sync_batchnorm and not gpu.use_distributed_sampler
    cfg = compose_job(["trainer=ddp_cpu", "trainer.devices=3"])
    trainer = instantiate(cfg.trainer, logger=False)
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.world_size == 3 and trainer.strategy.root_device.type == "cpu"
    assert not cfg.trainer.sync_batchnorm


RENDEZVOUS = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "41234", "NODE_RANK": "0",
              "LOCAL_RANK": "0", "WORLD_SIZE": "2"}


def set_multirun_job(task: list[str], output_dir: str) -> DictConfig:
    return compose_job([], **{"mode": RunMode.MULTIRUN, "overrides.task": task,
                              "runtime.output_dir": output_dir})


def test_each_multirun_job_starts_a_fresh_ddp_group(hydra_runtime, monkeypatch, tmp_path):
    monkeypatch.setattr(launch, "_launch_state", None)
    for key in RENDEZVOUS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(sys, "argv", ["dml-train", "-m", "-cn", "config", "loss=sct,nca_hardest",
                                      "seed=0,1"])
    set_multirun_job(["loss=sct", "seed=0"], "/sweep/0")
    launch.start_job()
    # Lightning's workers re-run sys.argv + hydra.run.dir: now this job, not the whole sweep.
    assert sys.argv == ["dml-train", "--config-name=config", "loss=sct", "seed=0"]
    assert HydraConfig.get().run.dir == "/sweep/0"

    os.environ.update(RENDEZVOUS)  # what Lightning leaves behind after launching job 0
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    set_multirun_job(["loss=nca_hardest", "seed=1"], "/sweep/3")
    launch.start_job()
    assert not dist.is_initialized()
    assert not set(RENDEZVOUS) & set(os.environ)  # a new free port, new worker processes
    assert sys.argv == ["dml-train", "--config-name=config", "loss=nca_hardest", "seed=1"]
    assert HydraConfig.get().run.dir == "/sweep/3"


def test_a_launched_worker_keeps_its_rendezvous_and_arguments(hydra_runtime, monkeypatch):
    monkeypatch.setattr(launch, "_launch_state", None)
    worker = {**RENDEZVOUS, "LOCAL_RANK": "1"}
    for key, value in worker.items():
        monkeypatch.setenv(key, value)
    argv = ["dml-train", "loss=sct", "hydra.run.dir=/sweep/0"]
    monkeypatch.setattr(sys, "argv", list(argv))
    compose_job([])  # a single run (the worker's own Hydra mode), not a multirun
    launch.start_job()
    assert {k: os.environ[k] for k in worker} == worker and sys.argv == argv


@pytest.mark.parametrize(("trainer", "gpus"), [([], None), (["trainer=ddp_cpu"], None),
                                               (["trainer.accelerator=cpu"], None),
                                               (["trainer=ddp", "trainer.devices=4"], 4),
                                               (["trainer.accelerator=cuda"], 1)])
def test_the_slurm_launcher_asks_for_gpus_only_when_the_trainer_uses_them(hydra_runtime, trainer,
                                                                          gpus):
    """A CPU partition refuses any GPU request (``sbatch: error: Invalid generic resource``):
    the default trainer (``accelerator: auto``) and CPU trainers ask for none."""
    cfg = compose_job(["hydra/launcher=slurm", *trainer])
    assert cfg.hydra.launcher.gpus_per_node == gpus
    assert cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices


def test_on_slurm_lightning_does_not_requeue_on_its_own(monkeypatch):
    """Under SLURM the trainer gets Lightning's SLURM environment without its auto-requeue
    (USR1, a mid-epoch hpc_ckpt): submitit's USR2 requeue and dml's resume from last.ckpt are the
    one mechanism (dml/slurm.py); outside SLURM Lightning chooses."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from dml.slurm import cluster_plugins

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert cluster_plugins() == []
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    (env,) = cluster_plugins()
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue is False
