"""Distributed training that means the same as one big GPU.

* :func:`gather_batch`: the global batch for cross-rank mining, with gradients flowing back
  into this rank's shard only, scaled so that DDP's gradient average gives the single-process
  gradient of the loss on the global batch;
* :func:`gather_in_dataset_order`: evaluation embeddings of every rank, in dataset order, without
  the duplicates a distributed sampler pads with; :func:`broadcast_object` shares what rank 0
  computed from them;
* :func:`rank_and_world_size`: this process's place in the group.

Without an initialised process group everything is the single-process identity. Launching a DDP
group per Hydra job is :mod:`dml.train.launch`'s.
"""

from __future__ import annotations

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
