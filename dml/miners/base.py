"""Miner interfaces: select index tuples from a pairwise matrix and the labels of a batch.

A matrix is B×B (the batch against itself), or B×N against ``N`` reference embeddings (a
cross-batch memory, synthetic points) whose labels ``ref_labels`` are given: anchors are then the
batch's rows and positives and negatives the references' columns. ``allowed`` (B×N booleans)
restricts which references each anchor may use (e.g. not itself, only its own synthetic
negatives); by default every reference is allowed."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from dml.distances import Distance, get_distance

Triplets = tuple[Tensor, Tensor, Tensor]
"""``(a, p, n)``: LongTensors of equal length; ``labels[a] == labels[p] != labels[n]``."""

Pairs = tuple[Tensor, Tensor, Tensor, Tensor]
"""``(a1, p, a2, n)``: positive pairs ``(a1, p)`` and negative pairs ``(a2, n)``."""


def label_masks(labels: Tensor, ref_labels: Tensor | None = None,
                allowed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(positive, negative)`` boolean masks: same label / other label, B×B off the diagonal
    (the batch against itself), or B×N against ``ref_labels`` where ``allowed`` (default
    everywhere)."""
    if ref_labels is not None:
        same = labels[:, None] == ref_labels[None, :]
        if allowed is None:
            return same, ~same
        return same & allowed, ~same & allowed
    same = labels[:, None] == labels[None, :]
    positive = same.clone().fill_diagonal_(False)
    return positive, ~same


def masked_argmax(score: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, the index of the largest ``score`` where ``mask`` holds (first one on ties).

    Returns ``(index, found)``; rows without any allowed entry have ``found = False`` and an
    arbitrary index.
    """
    masked = torch.where(mask, score, float("-inf"))
    return masked.argmax(dim=1), mask.any(dim=1)


class Miner(ABC):
    """Selects tuples from a batch using ``distance`` (a name for :func:`get_distance` or an
    instance) to decide what is close. Call it on embeddings, or use :meth:`mine` on a matrix
    already computed with ``self.distance``. Mining never carries gradients.
    """

    def __init__(self, distance: str | Distance = "cosine") -> None:
        self.distance = get_distance(distance, "loss.miner.distance")

    def __call__(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor | None = None,
                 ref_labels: Tensor | None = None,
                 allowed: Tensor | None = None) -> Triplets | Pairs:
        with torch.no_grad():
            refs = None if ref_emb is None else ref_emb.detach()
            matrix = self.distance.pairwise(embeddings.detach(), refs)
        return self.mine(matrix, labels, ref_labels, allowed)

    @abstractmethod
    def mine(self, matrix: Tensor, labels: Tensor, ref_labels: Tensor | None = None,
             allowed: Tensor | None = None) -> Triplets | Pairs:
        """Select tuples given the matrix of ``self.distance`` and the B labels: B×B, or B×N
        against references labelled ``ref_labels``, restricted to ``allowed`` (tuple members
        then index the references)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(distance={self.distance})"


class TripletMiner(Miner):
    """A miner returning :data:`Triplets`."""

    @abstractmethod
    def mine(self, matrix: Tensor, labels: Tensor, ref_labels: Tensor | None = None,
             allowed: Tensor | None = None) -> Triplets: ...


class PairMiner(Miner):
    """A miner returning :data:`Pairs`."""

    @abstractmethod
    def mine(self, matrix: Tensor, labels: Tensor, ref_labels: Tensor | None = None,
             allowed: Tensor | None = None) -> Pairs: ...
