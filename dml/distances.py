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

from dml.errors import ConfigError

# Pairs this close are treated as the same image (the SCT authors' rule S > 0.9999 in cosine).
_DUPLICATE_COSINE = 0.9999

# Matrices needing at most this many products x_ik y_jk are computed elementwise, not by BLAS:
# a BLAS product rounds an entry differently depending on where it falls in the kernel's tiles,
# so identical embeddings at two positions would get measures an ulp apart and exact ties (which
# the miners break towards the lowest index) would be broken by the rounding instead.
_ELEMENTWISE_SIZE = 2**16

# Euclidean entries whose Gram value d^2 is below this fraction of |x~|^2 + |y~|^2 (i.e. pairs
# closer than 1/16 of the centred norms) are recomputed from differences; see EuclideanDistance.
_REFINE_BELOW = 2.0**-8

# Recomputing more entries than this many B x B' matrices' worth of differences costs more
# memory than computing the whole matrix from differences (torch.cdist without the Gram trick).
_REFINE_BUDGET = 16


def _elementwise(x: Tensor, y: Tensor) -> bool:
    """Whether ``x @ y.T`` is small enough to be computed without BLAS (see above)."""
    return x.shape[0] * y.shape[0] * x.shape[1] <= _ELEMENTWISE_SIZE


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
    ``pairwise`` is one matrix product, or elementwise products for small problems (at most 2^16
    products: identical embeddings then get bitwise-equal similarities, so exact ties stay ties).
    """

    higher_is_closer: ClassVar[bool] = True

    def pairwise(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        xn = F.normalize(x, dim=1)
        yn = xn if y is None else F.normalize(y, dim=1)
        if _elementwise(xn, yn):
            return (xn[:, None, :] * yn[None, :, :]).sum(dim=2)
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

    ``pairwise`` uses the Gram formula ``d^2 = |x~|^2 + |y~|^2 - 2 <x~, y~>`` (one matrix
    product) on the embeddings centred on the batch mean ``mu`` (``x~ = x - mu``, ``y~ = y - mu``;
    distances are translation invariant, and a clustered batch gets small norms). In floating
    point with unit roundoff ``u`` and dimension ``k`` the formula's error is at most
    ``2 gamma_{k+2} (|x~|^2 + |y~|^2)`` (``gamma_n = n u / (1 - n u)``): cancellation makes it
    large relative to a small ``d^2``, and ``sqrt`` amplifies it near 0. So every entry with
    ``d^2 < 2^-8 (|x~|^2 + |y~|^2)`` is recomputed from the differences ``x_i - y_j`` (relative
    error at most ``gamma_{k+3}``, and exactly 0 for identical embeddings); the others keep a
    relative error of ``d`` below ``2^8 gamma_{k+2} + 24 u``. When more than 16 matrices' worth
    of differences would be recomputed (a batch of many near-duplicates), or the problem is small
    (at most 2^16 products), the whole matrix is computed from differences (``torch.cdist``
    without the Gram trick: exact ties for identical embeddings, about 20x slower at B = d = 512).

    The distance of a point to itself is exactly 0. The gradient of ``d`` at ``d = 0`` is taken as
    0 (the minimum-norm subgradient), never NaN.
    """

    higher_is_closer: ClassVar[bool] = False
    squared: bool = False

    def pairwise(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        other = x if y is None else y
        if _elementwise(x, other):
            return self._from_differences(x, other)
        mu = x.detach().mean(dim=0)  # a constant: the gradient is that of the plain distances
        xc = x - mu
        yc = xc if y is None else y - mu
        x2 = (xc * xc).sum(dim=1)
        y2 = x2 if y is None else (yc * yc).sum(dim=1)
        norms = x2[:, None] + y2[None, :]
        sq = torch.addmm(norms, xc, yc.T, alpha=-2.0).clamp_min(0.0)
        # 1.0 where d^2 < T (|x~|^2 + |y~|^2), else 0.0, written over the norms (addmm's gradient
        # does not use them): no new B x B' buffer, two fast passes
        cancelled = norms.detach().mul_(_REFINE_BELOW).gt_(sq.detach())
        if y is None:
            cancelled.fill_diagonal_(0.0)
            sq.fill_diagonal_(0.0)
        if cancelled.amax() > 0:
            rows, cols = cancelled.nonzero(as_tuple=True)
            if rows.numel() * x.shape[1] > _REFINE_BUDGET * sq.numel():
                return self._from_differences(x, other)
            diff = x[rows] - other[cols]
            sq = sq.index_put((rows, cols), (diff * diff).sum(dim=1))
        return self._from_squared(sq)

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        diff = x - y
        return self._from_squared((diff * diff).sum(dim=1))

    def near_duplicate(self, values: Tensor) -> Tensor:
        # On the unit sphere d^2 = 2 - 2 S, so S > 0.9999 is d^2 < 2e-4.
        threshold = 2.0 * (1.0 - _DUPLICATE_COSINE)
        return values < (threshold if self.squared else threshold**0.5)

    def _from_differences(self, x: Tensor, y: Tensor) -> Tensor:
        """The matrix from the differences ``x_i - y_j`` (``torch.cdist`` sums their squares per
        pair, without materialising them; its gradient at ``d = 0`` is 0)."""
        d = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
        return d.square() if self.squared else d

    def _from_squared(self, sq: Tensor) -> Tensor:
        if self.squared:
            return sq
        if not (torch.is_grad_enabled() and sq.requires_grad):
            return sq.sqrt_()  # sq is this class's own buffer; the guard below is for gradients
        positive = sq > 0
        return torch.where(positive, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), 0.0)


_BY_NAME: dict[str, type[Distance]] = {
    "cosine": CosineSimilarity,
    "euclidean": EuclideanDistance,
}


def get_distance(spec: str | Distance, key: str = "distance") -> Distance:
    """Resolve ``"cosine"``, ``"euclidean"`` or ``"squared_euclidean"`` (or pass an instance);
    another name raises :class:`~dml.errors.ConfigError` naming the config ``key``."""
    if isinstance(spec, Distance):
        return spec
    if spec == "squared_euclidean":
        return EuclideanDistance(squared=True)
    try:
        return _BY_NAME[spec]()
    except (KeyError, TypeError):
        names = [*_BY_NAME, "squared_euclidean"]
        raise ConfigError(f"{key} must be one of {names}, got {spec!r}") from None
