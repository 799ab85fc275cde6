"""dml on SLURM: what a job asks for, and how a requeued job continues its own run.

* **GPUs.** ``conf/hydra/launcher/slurm.yaml`` asks for
  ``${dml.slurm_gpus:${trainer.accelerator},${trainer.devices}}`` GPUs per node
  (:func:`gpus_per_node`, registered by :func:`dml.runs.run_dir.register_resolvers`): the
  trainer's devices when it trains on GPUs, none otherwise (a CPU partition refuses a GPU
  request).
* **Preemption and time limits: one mechanism.** submitit (the launcher) has SLURM send ``USR2``
  ``hydra.launcher.signal_delay_s`` seconds before the time limit; its handler requeues the job
  (``scontrol requeue``, up to ``hydra.launcher.max_num_timeout`` times). A preempted job is
  requeued by SLURM itself. Either way SLURM starts the same job again (same job id,
  ``SLURM_RESTART_COUNT`` > 0) with the same overrides, into the same run directory: dml-train
  then resumes that run from its ``last.ckpt`` (:func:`requeued`) instead of refusing a
  directory that already holds a run. The job id a run directory was first claimed by is kept
  in its ``.slurm_job`` (:func:`record_job`). Lightning's own SLURM auto-requeue (``USR1``, an
  ``hpc_ckpt`` saved mid-epoch and loaded instead of ``last.ckpt``) is turned off
  (:func:`cluster_plugins`), so the signal sent and the signal handled agree and a run resumes
  only from an epoch's end: bit-identical to an uninterrupted run, at the price of the unfinished
  epoch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dml.files import write_text_atomic

JOB_FILE = ".slurm_job"
GPU_ACCELERATORS = ("gpu", "cuda")


def gpus_per_node(accelerator: str, devices: Any) -> Any:
    """``${dml.slurm_gpus:<accelerator>,<devices>}``: ``devices`` if ``accelerator`` is a GPU
    one, else None (no GPU request; ``auto`` included: on a GPU partition set
    ``trainer.accelerator=gpu``, as ``trainer=ddp`` does)."""
    return devices if str(accelerator).lower() in GPU_ACCELERATORS else None



def job_id() -> str | None:
    """This process's SLURM job id (an array task has its own), or None outside SLURM."""
    return os.environ.get("SLURM_JOB_ID") or None


def record_job(run_dir: Path) -> None:
    """Keep the SLURM job that claims ``run_dir`` in ``run_dir/.slurm_job`` (nothing outside
    SLURM; unchanged when a requeued start of the same job claims it again)."""
    job = job_id()
    if job is None:
        return
    path = run_dir / JOB_FILE
    if not path.is_file() or path.read_text().strip() != job:
        write_text_atomic(path, job + "\n")


def requeued(run_dir: Path) -> bool:
    """True if this process is a SLURM job started again (requeued after preemption or its time
    limit: ``SLURM_RESTART_COUNT`` > 0) whose earlier start claimed ``run_dir`` and wrote its
    records there: it resumes that run. Every rank of a DDP job reads the same answer."""
    from dml.runs.run_dir import holds_run

    job = job_id()
    if job is None or int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0:
        return False
    path = run_dir / JOB_FILE
    return holds_run(run_dir) and path.is_file() and path.read_text().strip() == job


def cluster_plugins() -> list:
    """The Trainer's cluster environment under SLURM: Lightning's, without its auto-requeue (see
    the module docstring); outside SLURM none (Lightning chooses)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
