"""Pairwise measures between embeddings, as objects that know which direction means "closer".

Every miner and loss works with a :class:`Distance`. ``closeness`` maps a matrix of the measure to
a quantity where larger always means closer (the similarity itself, or the negated distance), so
"hardest positive" (least close) and "hardest negative" (closest) are defined once for all
measures. Configs refer to measures by name (``"cosine"``, ``"euclidean"``) through
:func:`get_distance`, so ``loss.miner.distance=euclidean`` is a plain Hydra override.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

# Pairs this close are treated as the same image (the SCT authors' rule S > 0.9999 in cosine).
_DUPLICATE_COSINE = 0.9999


class Distance(ABC):
    """A pairwise measure between embeddings; ``higher_is_closer`` fixes its direction."""

    higher_is_closer: ClassVar[bool]

    @abstractmethod
    def pairwise(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Matrix ``M[i, j] = m(x_i, y_j)`` of shape ``[len(x), len(y)]`` (``y = x`` if None)."""

    @abstractmethod
    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        """Row-wise measure ``m(x_i, y_i)`` of shape ``[len(x)]``."""

    @abstractmethod
    def near_duplicate(self, values: Tensor) -> Tensor:
        """Boolean mask of values meaning "the same image" (cosine above 0.9999 or equivalent)."""

    def select(self, x: Tensor, pairs: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """``m(x_r, x_c)`` for each index pair ``(r, c)``, differentiable: computed row by row
        when there are few pairs (cheaper than the matrix; the gradient only touches those
        rows), else gathered from the full matrix."""
        if sum(r.numel() for r, _ in pairs) * 16 < x.shape[0] ** 2:
            return self._select_rows(x, pairs)
        matrix = self.pairwise(x)
        return [matrix[r, c] for r, c in pairs]

    def _select_rows(self, x: Tensor, pairs: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
        return [self.paired(x[r], x[c]) for r, c in pairs]

    def closeness(self, values: Tensor | float) -> Tensor | float:
        """Values mapped so that larger means closer: ``m`` for similarities, ``-m`` otherwise."""
        return values if self.higher_is_closer else -values

    def farness(self, values: Tensor | float) -> Tensor | float:
        """Values mapped so that larger means farther: ``-closeness``, without a double negation."""
        return -values if self.higher_is_closer else values


@dataclass(frozen=True)
class CosineSimilarity(Distance):
    """Cosine similarity ``S(x, y) = <x, y> / (|x| |y|)`` in [-1, 1]; larger is closer.

    Inputs need not be normalised (zero vectors get similarity 0 through an epsilon of 1e-12).
    """

    higher_is_closer: ClassVar[bool] = True

    def pairwise(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        xn = F.normalize(x, dim=1)
        yn = xn if y is None else F.normalize(y, dim=1)
        return xn @ yn.T

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        return (F.normalize(x, dim=1) * F.normalize(y, dim=1)).sum(dim=1)

    def near_duplicate(self, values: Tensor) -> Tensor:
        return values > _DUPLICATE_COSINE

    def _select_rows(self, x: Tensor, pairs: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
        unit = F.normalize(x, dim=1)  # once for all pairs
        return [(unit[r] * unit[c]).sum(dim=1) for r, c in pairs]


@dataclass(frozen=True)
class EuclideanDistance(Distance):
    """Euclidean distance ``d(x, y) = |x - y|_2`` (or its square with ``squared=True``).

    Computed from the Gram matrix, ``d^2 = |x|^2 + |y|^2 - 2 <x, y>`` clamped at 0; the distance
    of a point to itself is exactly 0. The gradient of ``d`` at ``d = 0`` is taken as 0 (the
    minimum-norm subgradient), never NaN.
    """

    higher_is_closer: ClassVar[bool] = False
    squared: bool = False

    def pairwise(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        x2 = (x * x).sum(dim=1)
        y2 = x2 if y is None else (y * y).sum(dim=1)
        gram = torch.addmm(x2[:, None] + y2[None, :], x, (x if y is None else y).T, alpha=-2.0)
        sq = gram.clamp_min(0.0)
        if y is None:
            sq.fill_diagonal_(0.0)
        return self._from_squared(sq)

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        diff = x - y
        return self._from_squared((diff * diff).sum(dim=1))

    def near_duplicate(self, values: Tensor) -> Tensor:
        # On the unit sphere d^2 = 2 - 2 S, so S > 0.9999 is d^2 < 2e-4.
        threshold = 2.0 * (1.0 - _DUPLICATE_COSINE)
        return values < (threshold if self.squared else threshold**0.5)

    def _from_squared(self, sq: Tensor) -> Tensor:
        if self.squared:
            return sq
        if not (torch.is_grad_enabled() and sq.requires_grad):
            return sq.sqrt()  # the guard below only matters for the gradient
        positive = sq > 0
        return torch.where(positive, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), 0.0)


_BY_NAME: dict[str, type[Distance]] = {
    "cosine": CosineSimilarity,
    "euclidean": EuclideanDistance,
}


def get_distance(spec: str | Distance) -> Distance:
    """Resolve ``"cosine"``, ``"euclidean"`` or ``"squared_euclidean"`` (or pass an instance)."""
    if isinstance(spec, Distance):
        return spec
    if spec == "squared_euclidean":
        return EuclideanDistance(squared=True)
    try:
        return _BY_NAME[spec]()
    except KeyError:
        names = [*_BY_NAME, "squared_euclidean"]
        raise ValueError(f"unknown distance {spec!r}; expected one of {names}") from None
