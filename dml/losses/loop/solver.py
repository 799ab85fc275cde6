"""The batched LoOp solver: the LoOp cosine of every two positive pairs of different classes of a
P×K batch, from its ``[B, B]`` Gram matrix.

In a batch (:func:`loop_cosines`), every inner product above is a linear combination of
entries of the ``[B, B]`` Gram matrix (float64), so the pairs of positive pairs of different
classes cost the same whatever the embedding dimension; the candidate search runs in float32
for float32 embeddings. Endpoint cosines, in a batch and in :func:`min_arc_distance`, are
formed from squared differences, ``<x, y> = 1 - |x - y|^2 / 2``, and the distances of positive
pairs are the differences' norms: identical embeddings are at distance 0 (up to the 1e-154
floor of :func:`_safe_sqrt`) with gradient exactly 0, whatever the BLAS (``sqrt(2 - 2 cos)``
of a dot product rounded to ``1 - 2^-52`` gives 1.5e-8 and a gradient of rounding times 1e8).
The losses (:class:`LoOpTripletLoss`, :class:`LoOpContrastiveLoss`,
:class:`LoOpMultiSimilarityLoss`, :class:`LoOpLiftedStructureLoss`) state their formulas.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from dml.distances import EuclideanDistance
from dml.losses.loop.candidates import (
    _ArcDots,
    _candidates,
    _polarised,
    _safe_sqrt,
    _Span,
    _unit,
)


class PairsOfPairs(NamedTuple):
    """Index structure of a batch for LoOp: its positive pairs and every two of them of
    different classes. Depends only on which labels are equal (see :func:`pairs_of_pairs`)."""

    first: Tensor
    """``[P]`` the positive pairs ``(first[k], second[k])``: every same-class ``i < j``, in
    lexicographic order."""
    second: Tensor
    negative: Tensor
    """``[P, P]`` True where pairs ``k`` and ``l`` are of different classes."""
    row: Tensor
    """``[N]`` the pairs of pairs ``(row[n], col[n])``, ``row < col``, of different classes."""
    col: Tensor
    ends: Tensor
    """``[4, N]`` flat indices into ``[B, B]`` of (a,c), (b,c), (a,d), (b,d) where
    ``(a, b) = pair row[n]`` and ``(c, d) = pair col[n]``."""
    across: Tensor
    """``[4, N]`` flat indices into ``[B, P]`` of the projections: (a, col), (b, col), (c, row),
    (d, row)."""
    uv: Tensor
    """``[N]`` flat indices into ``[P, P]`` of (row, col)."""
    symmetric: tuple[Tensor, Tensor]
    """``(row ++ col, col ++ row)``: both halves of the symmetric ``[P, P]`` matrix."""


def _flat(rows: Tensor, cols: Tensor, width: int) -> Tensor:
    return rows * width + cols


@functools.lru_cache(maxsize=16)
def _pairs_of_pairs(groups: tuple[int, ...], device: torch.device) -> PairsOfPairs:
    group = torch.tensor(groups, device=device)
    same = group[:, None] == group[None, :]
    first, second = torch.triu(same, diagonal=1).nonzero(as_tuple=True)
    negative = group[first][:, None] != group[first][None, :]
    row, col = torch.triu(negative, diagonal=1).nonzero(as_tuple=True)
    a, b, c, d = first[row], second[row], first[col], second[col]
    batch, n_pairs = len(groups), len(first)
    targets = torch.stack((col, col, row, row))  # the pair each projection lands on
    return PairsOfPairs(
        first=first,
        second=second,
        negative=negative,
        row=row,
        col=col,
        ends=_flat(torch.stack((a, b, a, b)), torch.stack((c, c, d, d)), batch),
        across=_flat(torch.stack((a, b, c, d)), targets, n_pairs),
        uv=_flat(row, col, n_pairs),
        symmetric=(torch.cat((row, col)), torch.cat((col, row))),
    )


def pairs_of_pairs(labels: Tensor) -> PairsOfPairs:
    """The :class:`PairsOfPairs` of a batch with these ``[B]`` labels. Cached on the pattern of
    equal labels (each sample replaced by the index of the first sample of its class), which is
    the same for every batch of a P×K sampler that keeps each class's samples together."""
    same = labels[:, None] == labels[None, :]
    groups = same.to(torch.uint8).argmax(dim=1)  # index of the first sample of the class
    return _pairs_of_pairs(tuple(groups.tolist()), labels.device)


def _entries(matrix: Tensor, flat: Tensor) -> Tensor:
    """``matrix.flatten()[flat]`` through ``gather`` (its backward, a scatter-add, is much faster
    on CPU than the accumulating index-put of advanced indexing)."""
    return matrix.reshape(-1).gather(0, flat.reshape(-1)).view(flat.shape)


def _span_of(packed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(cos, sin, ok)`` from the rows ``cos, sin, float(ok)`` of ``packed``."""
    return packed[0], packed[1], packed[2] > 0


def loop_cosines(
    gram: Tensor,
    pairs: PairsOfPairs,
    endpoints_only: bool = False,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``C[k, l] = <p*, q*>``, the cosine of the LoOp optimum between the arc of pair ``k`` and
    the arc of pair ``l`` (so ``D*_kl = sqrt(2 - 2 C_kl)``), for every two pairs of different
    classes; ``[P, P]`` in ``dtype`` (default ``gram.dtype``), symmetric, 0 (not computed)
    between pairs of the same class.

    ``gram``: ``[B, B]`` inner products of L2-normalised embeddings (exactly 1 between identical
    ones, as formed by the losses: :func:`_unit_geometry`). Everything is derived from
    it: the tangent ``u_k = (x_j - c_k x_i) / s_k`` of pair ``k = (i, j)`` (``c_k = <x_i, x_j>``,
    ``s_k = sqrt(1 - c_k^2)``) is never formed, ``<x_n, u_k>`` and ``<u_k, u_l>`` are linear
    combinations of Gram entries, so the cost per pair of pairs does not depend on ``D``. Their
    rounding error grows like ``eps / s``: they are formed in the precision of ``gram`` (use
    float64 for float32 embeddings); the candidate search then runs in ``dtype``.
    """
    dtype = dtype or gram.dtype
    if endpoints_only:
        best = _entries(gram.to(dtype), pairs.ends).max(dim=0).values
        return best.new_zeros(pairs.negative.shape).index_put(pairs.symmetric, best.repeat(2))
    i, j = pairs.first, pairs.second
    batch, n_pairs = gram.shape[0], len(i)
    cos = gram[i, j]
    sin = _safe_sqrt((1 - cos) * (1 + cos))
    floor = math.sqrt(torch.finfo(gram.dtype).eps)
    ok = sin > floor
    inv_sin = (1 / sin.clamp_min(floor)).masked_fill(~ok, 0.0)
    # Tangents as a linear map of the embeddings, U = X W: column k of W holds 1/s_k at row j_k
    # and -c_k/s_k at row i_k. Then <x_n, u_l> = (G W)[n, l] and <u_k, u_l> = (W^T G W)[k, l].
    pair_index = torch.arange(n_pairs, device=gram.device)
    w = gram.new_zeros(batch, n_pairs).index_put(
        (torch.cat((j, i)), pair_index.repeat(2)), torch.cat((inv_sin, -cos * inv_sin))
    )
    along = gram @ w  # [B, P]: <x_n, u_l>
    uu = w.T @ along  # [P, P]: <u_k, u_l>
    with torch.no_grad():  # <x_n, x_i sin - u cos>: >= 0 iff x_n does not project past x_j
        beyond = (gram[:, i] * sin - along * cos).masked_fill(~ok, -math.inf).to(dtype)
        spans = torch.stack((cos, sin, ok.to(cos.dtype))).to(dtype)
    rows, cols = pairs.row, pairs.col
    gram, along, uu = gram.to(dtype), along.to(dtype), uu.to(dtype)
    dots = _ArcDots(
        ends=_entries(gram, pairs.ends),
        across=_entries(along, pairs.across),
        beyond=_entries(beyond, pairs.across),
        uv=_entries(uu, pairs.uv),
        first=_Span(*_span_of(spans[:, rows])),
        second=_Span(*_span_of(spans[:, cols])),
    )
    best = _candidates(dots, endpoints_only=False).max(dim=0).values
    return best.new_zeros(pairs.negative.shape).index_put(pairs.symmetric, best.repeat(2))



def _gram_dtype(embeddings: Tensor) -> torch.dtype:
    """float64 for the squared distances and the Gram matrix of the normalised embeddings and
    for the arc frames (their rounding enters the frames divided by sin(angle), and a LoOp
    distance ``sqrt(2 - 2 cos)`` only resolves distances down to ``sqrt(eps)``: 3e-4 in
    float32); float32 on devices without float64 (MPS). The candidate search over pairs of
    pairs runs in the embeddings' dtype promoted to at least float32; the loss is returned in
    their dtype."""
    return torch.float32 if embeddings.device.type == "mps" else torch.float64


def _unit_geometry(embeddings: Tensor) -> tuple[Tensor, Tensor]:
    """``(gram, squared)``, ``[B, B]``: inner products and squared distances of the
    L2-normalised embeddings ``x^_i`` (:func:`_unit`: zero embeddings get inner products 0).

    ``squared[i, j] = |x^_i - x^_j|^2`` is :class:`~dml.distances.EuclideanDistance`'s (from
    the differences where the Gram formula cancels, and for small problems without BLAS), and
    ``gram[i, j] = (n_i + n_j - squared[i, j]) / 2`` with ``n_i = |x^_i|^2 = 1``
    (:func:`_polarised`). Its error is that of ``squared`` halved plus ``u``: at most
    ``2 gamma_{k+3} + u`` where ``squared`` is summed from differences, and
    ``gamma_{k+2} (|x~_i|^2 + |x~_j|^2) + u <= 8 gamma_{k+2} + u`` where it uses the Gram
    formula on the centred ``x~ = x^ - mu`` (``|x~| <= 2``). Identical embeddings get exactly
    ``squared = 0`` and ``gram = 1``, whatever the BLAS (a matrix product ``x^ x^T`` rounds some
    of them to ``1 - 2^-52``, a LoOp distance of 1.5e-8 whose gradient is rounding times 1e8)."""
    unit, n = _unit(embeddings)
    squared = EuclideanDistance(squared=True).pairwise(unit)
    return _polarised(squared, n[:, None], n[None, :]), squared


