"""Miner interfaces: select index tuples from a pairwise matrix and the labels of a batch."""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from dml.distances import Distance, get_distance
from dml.errors import ConfigError

Triplets = tuple[Tensor, Tensor, Tensor]
"""``(a, p, n)``: LongTensors of equal length; ``labels[a] == labels[p] != labels[n]``."""

Pairs = tuple[Tensor, Tensor, Tensor, Tensor]
"""``(a1, p, a2, n)``: positive pairs ``(a1, p)`` and negative pairs ``(a2, n)``."""


def check_range(
    key: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    strict: bool = False,
    nullable: bool = False,
) -> None:
    """Raise :class:`~dml.errors.ConfigError` unless ``value`` is a finite real number with
    ``low <= value`` (``low < value`` if ``strict``) and ``value <= high`` (``None``: no bound);
    ``None`` itself passes if ``nullable``. The one-line message names ``key`` as a user types it
    in a config override: ``loss.margin must be >= 0, got -1``."""
    if value is None and nullable:
        return
    if low is not None and high is not None:
        bound = f"in {'(' if strict else '['}{low:g}, {high:g}]"
    elif low is not None:
        bound = f"{'>' if strict else '>='} {low:g}"
    else:
        bound = f"<= {high:g}"
    bound += " or null" if nullable else ""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ConfigError(f"{key} must be a number {bound}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    above = low is None or (value > low if strict else value >= low)
    if not (above and (high is None or value <= high)):
        raise ConfigError(f"{key} must be {bound}, got {value!r}")


def check_choice(key: str, value: object, choices: Sequence[str]) -> None:
    """Raise :class:`~dml.errors.ConfigError` unless ``value`` is one of ``choices``:
    ``loss.reduction must be one of ['mean', 'mean_nonzero'], got 'sum'``."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")


def label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(positive, negative)`` boolean B×B masks: same label off the diagonal / other label."""
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

    def __call__(self, embeddings: Tensor, labels: Tensor) -> Triplets | Pairs:
        with torch.no_grad():
            matrix = self.distance.pairwise(embeddings.detach())
        return self.mine(matrix, labels)

    @abstractmethod
    def mine(self, matrix: Tensor, labels: Tensor) -> Triplets | Pairs:
        """Select tuples given the B×B matrix of ``self.distance`` and the B labels."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(distance={self.distance})"


class TripletMiner(Miner):
    """A miner returning :data:`Triplets`."""

    @abstractmethod
    def mine(self, matrix: Tensor, labels: Tensor) -> Triplets: ...


class PairMiner(Miner):
    """A miner returning :data:`Pairs`."""

    @abstractmethod
    def mine(self, matrix: Tensor, labels: Tensor) -> Pairs: ...
