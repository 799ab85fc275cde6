"""Cross-batch memory (XBM) around any triplet or pair loss."""

from __future__ import annotations

import os
from typing import ClassVar

import torch
from torch import Tensor

from dml.config_checks import check_int, check_range
from dml.errors import ConfigError
from dml.losses.base import DMLLoss, LossResult, References, check_wrappable


def physical_memory() -> int | None:
    """This machine's RAM in bytes, None where the platform does not tell."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


class CrossBatchMemory(DMLLoss):
    """Cross-batch memory (Wang, Zhang, Huang, Scott, "Cross-Batch Memory for Embedding
    Learning", CVPR 2020) around a triplet or pair loss ``L``:

        L_XBM = L(B, B) + λ · L(B, M)

    with ``B`` the batch (anchors, with gradient) and ``M`` a FIFO queue of the detached
    embeddings and labels of the last ``size`` training embeddings of *past* steps. In
    ``L(B, M)`` anchors come from the batch and positives and negatives from the memory: the
    loss's miner mines the B×|M| matrix (an anchor's own earlier embeddings are positives; a class
    present only in the memory gives negatives only). The current batch is enqueued after its loss
    (the authors' code enqueues it first, so their memory term holds the batch's own pairs a
    second time, detached; here they are in ``L(B, B)`` once). ``λ = weight >= 0``.

    Warm-up: the memory is neither used nor filled before ``warmup_steps`` training steps (calls
    of the loss in training mode: micro-batches under gradient accumulation) and
    ``warmup_epochs`` epochs have passed (the authors start it at an iteration, ``START_ITERATION``,
    because early embeddings drift too fast to be remembered). Outside training mode the memory
    is neither used nor changed. Under DDP with cross-rank mining the loss sees the global batch,
    so every rank enqueues the same embeddings and the memory is identical on all ranks. The
    memory is a set of buffers: saved in checkpoints, so resuming continues exactly; it costs
    ``size · (embedding_dim · 4 + 8)`` bytes in float32.

    Statistics count the tuples of both terms: the triplets' ``(S_ap, S_an)`` (so
    ``hard_fraction``, ``mean_s_ap``, ``mean_s_an`` and the triplet diagram) and a pair loss's
    means are over the batch's and the memory's tuples together, ``active_fraction`` is weighted by
    tuples (triplets) or candidate pairs (pairs), ``memory_fraction`` is the share of tuples taken
    from the memory and ``memory_size`` its filling. ``mean_pairwise_sim`` (the collapse indicator)
    stays over the batch; the result's ``tuples`` are the batch term's.
    """

    buffers_from_global_batch: ClassVar[bool] = True  # the memory: the same on every rank

    def __init__(self, loss: DMLLoss, size: int = 4096, embedding_dim: int = 128,
                 weight: float = 1.0, warmup_steps: int = 0, warmup_epochs: int = 0) -> None:
        check_wrappable(loss, "memory=xbm")
        check_int("memory.size", size, 1, "embeddings kept", 4096)
        check_int("memory.embedding_dim", embedding_dim, 1, "the model's embedding size", 128)
        check_range("memory.weight", weight, 0)
        check_int("memory.warmup_steps", warmup_steps, 0, "steps before the memory starts", 0)
        check_int("memory.warmup_epochs", warmup_epochs, 0, "epochs before the memory starts", 0)
        need, ram = size * (embedding_dim * 4 + 8), physical_memory()
        if ram is not None and need > ram:
            raise ConfigError(f"memory.size={size} needs {need / 2**30:.1f} GiB "
                              f"(size x (embedding_dim x 4 + 8) bytes), more than this machine's "
                              f"{ram / 2**30:.1f} GiB: set a smaller memory.size")
        super().__init__()
        self.loss, self.weight = loss, weight
        self.warmup_steps, self.warmup_epochs = warmup_steps, warmup_epochs
        self.epoch = 0
        self.register_buffer("memory_embeddings", torch.zeros(size, embedding_dim))
        self.register_buffer("memory_labels", torch.zeros(size, dtype=torch.long))
        self.register_buffer("memory_count", torch.zeros((), dtype=torch.long))  # entries filled
        self.register_buffer("memory_next", torch.zeros((), dtype=torch.long))  # next write slot
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps seen

    @property
    def size(self) -> int:
        """The memory's capacity (embeddings)."""
        return self.memory_labels.numel()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loss.set_epoch(epoch)

    def memory(self) -> References:
        """A copy of the remembered embeddings and labels, in storage order (a copy: the
        backward pass may need them after the next enqueue)."""
        count = int(self.memory_count)
        return References(self.memory_embeddings[:count].clone(),
                          self.memory_labels[:count].clone())

    def check_fits(self, batch: int, embedding_dim: int) -> None:
        """A :class:`ConfigError` unless the memory holds a batch of ``batch`` embeddings of
        size ``embedding_dim`` (training checks this before it writes anything; each step checks
        the batch again, which under cross-rank mining is all ranks' batches together)."""
        if batch > self.size:
            raise ConfigError(
                f"memory.size={self.size} is smaller than the batch ({batch} embeddings, "
                f"all ranks together under cross-rank mining): set memory.size >= {batch}"
            )
        if embedding_dim != self.memory_embeddings.shape[1]:
            raise ConfigError(
                f"memory.embedding_dim={self.memory_embeddings.shape[1]} differs from the "
                f"model's embedding size {embedding_dim}: leave memory.embedding_dim at its "
                "default ${model.embedding_dim}"
            )

    def compute(self, embeddings: Tensor, labels: Tensor, out: LossResult,
                indices: tuple[Tensor, ...] | None = None) -> Tensor:
        self.check_fits(labels.numel(), embeddings.shape[1])
        batch = self.loss.result(embeddings, labels, indices)
        active = self.training and self._warm()
        count = int(self.memory_count)  # before this step's enqueue
        remembered = self.memory() if active and count > 0 else None
        parts = [batch]
        if remembered is not None:
            parts.append(self.loss.result(embeddings, labels, references=remembered))
        batch_size = labels.numel()
        candidates = [batch_size * (batch_size - 1), batch_size * count]
        _merge_stats(out, parts, candidates)
        out.stats["memory_size"] = self.memory_count.detach().float()
        if self.training:
            self.steps += 1
            if active:
                self._enqueue(embeddings.detach(), labels)
        if remembered is None:
            return batch.value
        return batch.value + self.weight * parts[1].value

    def _warm(self) -> bool:
        return int(self.steps) >= self.warmup_steps and self.epoch >= self.warmup_epochs

    def _enqueue(self, embeddings: Tensor, labels: Tensor) -> None:
        slots = (self.memory_next + torch.arange(labels.numel(), device=labels.device)) % self.size
        self.memory_embeddings[slots] = embeddings.to(self.memory_embeddings.dtype)
        self.memory_labels[slots] = labels.to(self.memory_labels.device)
        self.memory_next.copy_((self.memory_next + labels.numel()) % self.size)
        self.memory_count.clamp_(max=self.size - labels.numel()).add_(labels.numel())

    def extra_repr(self) -> str:
        return (f"size={self.size}, weight={self.weight}, warmup_steps={self.warmup_steps}, "
                f"warmup_epochs={self.warmup_epochs}")


def _weighted(values: list[Tensor], weights: list[int]) -> Tensor:
    """Weighted mean of 0-d ``values``, ignoring those of weight 0 (NaN if all weigh 0)."""
    kept = [(v, w) for v, w in zip(values, weights, strict=True) if w > 0]
    if not kept:
        return values[0].new_tensor(float("nan"))
    return sum(v * w for v, w in kept) / sum(w for _, w in kept)


def _tuple_count(result: LossResult) -> int:
    """Number of triplets, or of positive plus negative pairs, a loss used."""
    if result.tuples is None:
        return 0
    if len(result.tuples) == 3:
        return result.tuples[0].numel()
    return result.tuples[0].numel() + result.tuples[2].numel()


def _merge_stats(out: LossResult, parts: list[LossResult], candidates: list[int]) -> None:
    """The statistics of the batch term and the memory term (if any) as one set of tuples;
    ``candidates``: the pairs each term could use (weights of a pair loss's active fraction)."""
    first = parts[0]
    out.adopt(first)
    counts = [_tuple_count(part) for part in parts]
    total = sum(counts)
    share = sum(counts[1:]) / total if total else float("nan")
    out.stats["memory_fraction"] = out.stats["mean_pairwise_sim"].new_tensor(share)
    if len(parts) == 1:
        return
    if first.triplet_similarities is not None:
        s_ap, s_an = zip(*(part.triplet_similarities for part in parts), strict=True)
        out.record_triplets(torch.cat(s_ap), torch.cat(s_an))
        out.stats["active_fraction"] = _weighted(
            [part.stats["active_fraction"] for part in parts], counts)
        return
    for key, column in (("mean_s_ap", 0), ("mean_s_an", 2)):
        weights = [part.tuples[column].numel() for part in parts]
        out.stats[key] = _weighted([part.stats[key] for part in parts], weights)
    out.stats["active_fraction"] = _weighted(
        [part.stats["active_fraction"] for part in parts], candidates)
