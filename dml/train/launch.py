"""One DDP process group per Hydra job: :func:`job_ddp_strategy` is the Lightning strategy that
``conf/trainer/ddp.yaml`` names, and :func:`start_job` the preparation it runs first.

Lightning's DDP launcher records its rendezvous in environment variables of the launching
process and never destroys the process group before exit, and its worker processes re-run
``sys.argv``, which under a multirun is the whole sweep. A second job in the same process
(Hydra's basic launcher) therefore believes its workers already exist and reuses the finished
job's process group: that only works while the workers, replaying the whole sweep, happen to
run the same jobs in step (not when jobs differ in devices, or with adaptive sweepers).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch.distributed as dist

_RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_launch_state: tuple[dict[str, str | None], list[str]] | None = None


def start_job() -> None:
    """Prepare this process to launch the DDP group of a new job.

    Restores the rendezvous variables (``MASTER_ADDR/PORT``, ``NODE_RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``) to their values when the process started, so a job launched by the user or by
    Hydra picks a fresh free port and starts its own worker processes, while a worker started by
    a launcher (Lightning, ``torchrun``, SLURM tasks) keeps what it was given. Destroys a process
    group left by an earlier job of this process. Under a Hydra multirun, points ``sys.argv`` and
    ``hydra.run.dir`` at the current job, which is what Lightning's workers re-run.
    """
    global _launch_state
    if _launch_state is None:
        _launch_state = ({k: os.environ.get(k) for k in _RENDEZVOUS_VARS}, list(sys.argv))
    env, argv = _launch_state
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _relaunch_current_hydra_job(argv)


def _relaunch_current_hydra_job(argv: list[str]) -> None:
    """Under a Hydra multirun, set ``sys.argv`` to ``argv``'s program and config flags plus the
    current job's overrides, and ``hydra.run.dir`` to the job's output directory; otherwise
    nothing."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    from hydra._internal.utils import get_args_parser  # Hydra's own command-line grammar

    args, _ = get_args_parser().parse_known_args(argv[1:])
    flags = [
        f"--{name.replace('_', '-')}={value}"
        for name in ("config_path", "config_name", "config_dir")
        if (value := getattr(args, name)) is not None
    ]
    hydra_cfg = HydraConfig.get()
    sys.argv = [argv[0], *flags, *hydra_cfg.overrides.task]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def job_ddp_strategy(**kwargs: Any) -> Any:
    """Lightning's ``DDPStrategy(**kwargs)`` after :func:`start_job`: the strategy to name in a
    Trainer config (``conf/trainer/ddp.yaml``) so that each run or multirun job launches its own
    DDP group. On SLURM (one task per GPU) the tasks are the workers and nothing is re-launched."""
    from lightning.pytorch.strategies import DDPStrategy

    start_job()
    return DDPStrategy(**kwargs)
