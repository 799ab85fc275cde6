"""Class-balanced P×K batches, reproducible per epoch and shardable across ranks."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from dml.errors import DatasetError
from dml.train.seeding import epoch_seed


class PKBatchSampler(Sampler[list[int]]):
    """Yields batches of ``P`` distinct classes × ``K`` images each.

    An epoch: every class's images are shuffled and cut into chunks of ``K`` (a last short chunk,
    and every class with fewer than ``K`` images, is filled up by sampling that class's images
    with replacement; such classes are counted in ``undersized_classes``). Batches then draw ``P``
    distinct classes with probability proportional to their remaining chunks and take one chunk
    from each, so an epoch covers every image about once. The order depends only on
    ``(seed, epoch)``: :meth:`set_epoch` chooses the epoch.

    Who calls :meth:`set_epoch`: Lightning (like PyTorch's own loops) calls it at every epoch start
    on ``dataloader.sampler`` and on ``dataloader.batch_sampler.sampler``, never on the batch
    sampler itself. :attr:`sampler` is therefore this object, so that the call reaches it.

    Distributed: all ranks generate the same *global* batch of ``P`` classes and rank ``r`` of
    ``world_size`` takes classes ``r::world_size``, so no class is split across ranks within a step
    and every rank yields the same number of batches. ``P`` must be divisible by ``world_size``.
    """

    def __init__(
        self,
        labels: Sequence[int] | torch.Tensor,
        p: int,
        k: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        if p < 1 or k < 1:
            raise DatasetError(f"P and K must be >= 1, got P={p}, K={k}")
        if p % world_size:
            raise DatasetError(f"P={p} classes per batch is not divisible by {world_size} ranks")
        classes, counts = torch.unique(labels, return_counts=True)
        if len(classes) < p:
            raise DatasetError(
                f"P={p} classes per batch but the training split has only {len(classes)} classes: "
                "lower data.batch_p"
            )
        if int(counts.max()) < k:
            raise DatasetError(
                f"K={k} images per class but no training class has more than {int(counts.max())}: "
                "lower data.batch_k"
            )
        order = torch.argsort(labels, stable=True)
        self.class_indices = list(torch.split(order, counts.tolist()))
        self.p, self.k, self.seed = p, k, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.undersized_classes = int((counts < k).sum())
        if self.undersized_classes:
            warnings.warn(
                f"{self.undersized_classes} of {len(classes)} classes have fewer than K={k} "
                "images; they are sampled with replacement",
                stacklevel=2,
            )
        chunks = sum(-(-int(c) // k) for c in counts)
        self.num_batches = max(1, chunks // p)

    @property
    def sampler(self) -> PKBatchSampler:
        """Itself: the ``batch_sampler.sampler`` on which training loops call ``set_epoch``."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def _chunks(self, g: torch.Generator) -> list[list[torch.Tensor]]:
        out = []
        for idx in self.class_indices:
            perm = idx[torch.randperm(len(idx), generator=g)]
            short = -len(perm) % self.k
            if short:
                fill = idx[torch.randint(len(idx), (short,), generator=g)]
                perm = torch.cat([perm, fill])
            out.append(list(perm.view(-1, self.k)))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        chunks = self._chunks(g)
        remaining = torch.tensor([len(c) for c in chunks], dtype=torch.float)
        for _ in range(self.num_batches):
            if int((remaining > 0).sum()) < self.p:  # too few classes left: refill and go on
                chunks = self._chunks(g)
                remaining = torch.tensor([len(c) for c in chunks], dtype=torch.float)
            picked = torch.multinomial(remaining, self.p, replacement=False, generator=g)
            remaining[picked] -= 1
            batch = [chunks[c].pop() for c in picked.tolist()]
            yield torch.cat(batch[self.rank :: self.world_size]).tolist()
