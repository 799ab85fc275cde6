"""A run directory belongs to one run.

:func:`claim` takes ``run_dir`` for this process under an exclusive lock (``.dml.lock``) held for
the whole run, and refuses when

* another live process holds it (two jobs given the same ``hydra.run.dir``), or
* it already holds a run's records and this run does not resume it (a SLURM job requeued after
  preemption or its time limit resumes its own run: :mod:`dml.slurm`).

So a run's ``config.yaml``, ``.hydra/``, checkpoints and ``metrics.json`` are only ever written by
that run (or by a resumption of it) and only after these checks: a failed or refused start
rewrites nothing. Temporary files of a writer that was killed mid-write are removed.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dml.errors import RunDirError
from dml.files import locked, write_text_atomic
from dml.slurm import gpus_per_node, record_job


def register_resolvers() -> None:
    """Register the W&B identity resolvers that ``conf/logger/default.yaml`` names
    (:data:`dml.wandb_run.RESOLVERS`: ``${dml.sweep_group:}``, ``${dml.run_name:...}``,
    ``${dml.run_tags:...}``) and ``${dml.slurm_gpus:...}`` (:func:`dml.slurm.gpus_per_node`), which
    ``conf/hydra/launcher/slurm.yaml`` names; called before a run's config is resolved
    (``dml-train``, :func:`dml.train.run.train`). Registering again replaces them."""
    from dml.wandb_run import RESOLVERS

    for name, resolver in {**RESOLVERS, "dml.slurm_gpus": gpus_per_node}.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)

LOCK_FILE = ".dml.lock"
RECORDS = ("config.yaml", "metrics.json", "checkpoints")


def holds_run(run_dir: Path) -> bool:
    """True if a run has written its records in ``run_dir``."""
    return any((run_dir / name).exists() for name in RECORDS)


def resume_overrides(run_dir: Path) -> list[str]:
    """``["ckpt_path=last"]`` if ``run_dir`` holds a run (a job started there before an
    interruption continues it), else ``[]``: how a study's jobs pick up their own runs."""
    return ["ckpt_path=last"] if holds_run(run_dir) else []


def is_launch_rank_zero() -> bool:
    """True unless the environment names this process a non-zero rank of a distributed job
    (``RANK``, ``LOCAL_RANK``, ``NODE_RANK``, ``SLURM_PROCID``): the process that owns the run
    directory. Read before any process group exists (Lightning's DDP workers, torchrun and SLURM
    tasks all set these)."""
    names = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all(os.environ.get(name, "0") == "0" for name in names)


@contextlib.contextmanager
def claim(run_dir: Path, resume: bool) -> Iterator[None]:
    """Hold ``run_dir`` for this run (see the module docstring); the lock is released on exit."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            lock = stack.enter_context(locked(run_dir / LOCK_FILE, wait=False))
        except BlockingIOError:
            owner = (run_dir / LOCK_FILE).read_text().strip() or "another process"
            raise RunDirError(
                f"{run_dir} is in use by another run ({owner}): give this run its own directory "
                "(hydra.run.dir=...)"
            ) from None
        if resume and not holds_run(run_dir):
            raise RunDirError(f"{run_dir} holds no run to resume: train without ckpt_path=last")
        if not resume and holds_run(run_dir):
            raise RunDirError(
                f"{run_dir} already holds a run: resume it with `dml-train resume={run_dir}`, "
                "or train into a new directory (hydra.run.dir=...)"
            )
        if lock is not None:
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            lock.flush()
        record_job(run_dir)
        for folder in (run_dir, run_dir / "checkpoints"):
            for stale in folder.glob(".*.tmp"):  # a writer killed mid-write; the dir is ours now
                stale.unlink(missing_ok=True)
        yield


INTERRUPTED = "interrupted"


def mark_interrupted(run_dir: Path, reason: str | None) -> None:
    """Leave ``reason`` in the run's ``interrupted`` marker (None: remove it, the run finished)."""
    if reason is None:
        (run_dir / INTERRUPTED).unlink(missing_ok=True)
    else:
        write_text_atomic(run_dir / INTERRUPTED, reason + "\n")


def interruption(run_dir: Path) -> str | None:
    """Why the run in ``run_dir`` was interrupted (its ``interrupted`` marker), else None."""
    marker = run_dir / INTERRUPTED
    return marker.read_text().strip() or "interrupted" if marker.is_file() else None


def write_records(run_dir: Path, cfg: DictConfig) -> None:
    """``config.yaml`` (resolved) and, under Hydra, ``.hydra/{config,hydra,overrides}.yaml``:
    Hydra's own record, written here (``hydra.output_subdir: null``) so that only the owner of
    ``run_dir`` writes it, and only once the run has passed its checks."""
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    record = run_dir / ".hydra"
    record.mkdir(exist_ok=True)
    task_overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("ckpt_path=")]
    for name, node in (
        ("config.yaml", cfg),
        ("hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
        ("overrides.yaml", OmegaConf.create(task_overrides)),
    ):
        write_text_atomic(record / name, OmegaConf.to_yaml(node))
