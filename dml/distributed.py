"""Distributed training that means the same as one big GPU.

* :func:`gather_batch`: the global batch for cross-rank mining, with gradients flowing back
  into this rank's shard only, scaled so that DDP's gradient average gives the single-process
  gradient of the loss on the global batch;
* :func:`gather_in_dataset_order`: evaluation embeddings of every rank, in dataset order, without
  the duplicates a distributed sampler pads with; :func:`broadcast_object` shares what rank 0
  computed from them;
* :func:`job_ddp_strategy`: Lightning's DDP strategy for a Hydra job, so that every job of a
  multirun launches its own process group on its own port.

Without an initialised process group everything is the single-process identity.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

T = TypeVar("T")


def rank_and_world_size(trainer: Trainer | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: of ``trainer`` when one is given (Lightning's global rank and world
    size, known before its process group starts), else of the default process group; ``(0, 1)``
    with neither."""
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_shards(x: Tensor) -> list[Tensor]:
    """Every rank's ``x`` (sizes along dim 0 may differ between ranks), in rank order."""
    _, world = rank_and_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_list = [int(s) for s in sizes]
    longest = max(sizes_list)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    shards = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(shards, padded.contiguous())
    return [s[:n] for s, n in zip(shards, sizes_list, strict=True)]


def all_gather_cat(x: Tensor) -> Tensor:
    """The concatenation along dim 0 of ``x`` from every rank, in rank order (sizes may differ);
    no gradient. ``x`` itself when not distributed."""
    if rank_and_world_size()[1] == 1:
        return x
    return torch.cat(_gather_shards(x.detach()))


class _GlobalBatch(torch.autograd.Function):
    """Forward: :func:`all_gather_cat`. Backward: the gradient of this rank's rows only, times
    ``grad_scale``."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, grad_scale: float) -> Tensor:
        shards = _gather_shards(local.detach())
        start = sum(s.shape[0] for s in shards[: rank_and_world_size()[0]])
        ctx.span, ctx.grad_scale = (start, start + local.shape[0]), grad_scale
        return torch.cat(shards)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        start, stop = ctx.span
        return grad[start:stop] * ctx.grad_scale, None


def gather_batch(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The global batch: every rank's ``embeddings`` and ``labels`` concatenated in rank order,
    so that miners and losses see all ``B = Σ_r B_r`` samples.

    Gradients: every rank computes the same loss ``L`` on the global batch, but gradient flows
    back only into its own shard ``S_r``, multiplied by the world size ``W``. Rank ``r``'s
    parameter gradient is then ``W Σ_{i∈S_r} (∂L/∂e_i)(∂e_i/∂θ)`` and DDP's average over ranks
    gives ``Σ_i (∂L/∂e_i)(∂e_i/∂θ) = ∂L/∂θ``, exactly the single-process gradient of ``L`` on the
    global batch. The gradient, not the loss, is scaled: parameters of the loss itself (learned
    temperatures, proxies) already receive the full ``∂L/∂w`` on every rank, which the average
    leaves unchanged, and the loss value logged is the true one.

    Not distributed: ``(embeddings, labels)`` unchanged.
    """
    world = rank_and_world_size()[1]
    if world == 1:
        return embeddings, labels
    return _GlobalBatch.apply(embeddings, float(world)), all_gather_cat(labels)


def gather_in_dataset_order(
    embeddings: Tensor, labels: Tensor, indices: Tensor
) -> tuple[Tensor, Tensor]:
    """Evaluation outputs of every rank, sorted by dataset index, each index kept once (a
    distributed sampler pads the last shard with repeated samples). Single process: the outputs
    sorted by index. Returns ``(embeddings, labels)``."""
    embeddings, labels, indices = (all_gather_cat(t) for t in (embeddings, labels, indices))
    order = torch.argsort(indices, stable=True)
    embeddings, labels, indices = embeddings[order], labels[order], indices[order]
    first = torch.ones_like(indices, dtype=torch.bool)
    first[1:] = indices[1:] != indices[:-1]
    return embeddings[first], labels[first]


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` as given on rank ``src``, on every rank (picklable objects); ``obj`` itself when not
    distributed. Lets one rank compute a result (e.g. retrieval metrics) that all ranks use."""
    if rank_and_world_size()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ---- one DDP process group per Hydra job ------------------------------------------------------
# Lightning's DDP launcher records its rendezvous in environment variables of the launching
# process and never destroys the process group before exit, and its worker processes re-run
# ``sys.argv``, which under a multirun is the whole sweep. A second job in the same process
# (Hydra's basic launcher) therefore believes its workers already exist and reuses the finished
# job's process group: that only works while the workers, replaying the whole sweep, happen to
# run the same jobs in step (not when jobs differ in devices, or with adaptive sweepers).
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
