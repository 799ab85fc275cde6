"""LoOp (Vasudeva et al., "LoOp: Looking for Optimal Hard Negative Embeddings for Deep Metric
Learning", ICCV 2021): the hardest negative of a positive pair is searched on the whole space
between two negatives, not only at the negatives themselves.

Geometry (paper Sec. 3, spherical case). Embeddings live on the unit sphere. A pair ``(a, b)``
spans the shorter great-circle arc ``A = {cos s a + sin s u : 0 <= s <= theta_ab}`` with
``u`` the unit tangent at ``a`` towards ``b``; likewise ``(c, d)`` spans
``C = {cos t c + sin t v : 0 <= t <= theta_cd}``. The LoOp distance is the paper's optimum

    D*(a, b; c, d) = min_{p in A, q in C} |p - q|_2,

the distance between the optimal positive point ``p*`` and the optimal hard negative ``q*``.
The paper solves it with Lagrange multipliers (KKT) and enumerates the cases of active
constraints; :func:`min_arc_distance` evaluates the same candidate set in closed form:

* both points at arc endpoints (4 candidates: a-c, a-d, b-c, b-d);
* one endpoint and its projection onto the other arc's great circle,
  ``t = atan2(<x, v>, <x, c>)``, kept only if it falls inside the arc (4 candidates);
* both points interior: ``<p, q> = x(s)^T M y(t)`` with ``M = [[<a,c>, <a,v>], [<u,c>, <u,v>]]``
  separates as ``Q cos(s - t - alpha) + R cos(s + t - beta)``, so the only interior maxima of the
  cosine are ``s - t = alpha, s + t = beta`` (mod 2 pi) with value ``Q + R`` (the largest singular
  value of ``M``: the cosine of the smallest principal angle between the two planes) -- 2
  candidates, kept only if on both arcs.

Everything is expressed through inner products, so it works in any dimension ``>= 2`` (no cross
products), and gradients of the distance follow the envelope theorem: each candidate value is a
closed-form function of the inner products (``hypot`` for projections, ``Q + R`` for the interior),
so no gradient passes through the (possibly ill-conditioned) optimal angles.

Decisions where the paper is silent:

* a pair whose ``sin(angle)`` is below ``sqrt(machine eps)`` is *degenerate*: identical or
  antipodal. Its "arc" is represented by its two endpoints only. For an identical pair this is
  exact (up to that tolerance); an exactly antipodal pair has no unique shorter arc, and using its
  endpoints is the only choice that does not depend on an arbitrary direction.
* at a distance of 0 the gradient of the distance is taken as 0 (never NaN).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dml.distances import EuclideanDistance
from dml.losses.base import DMLLoss, Reduction, mean_or_nan, reduce_terms
from dml.losses.multisimilarity import _log1p_sum_exp
from dml.miners.base import label_masks

_EUCLIDEAN = EuclideanDistance()

# Candidate order: 4 endpoint pairs (a-c, a-d, b-c, b-d), 4 endpoint projections (a and b onto
# arc c->d, c and d onto arc a->b), 2 interior critical points (+ and - sign of the square root).
# The point each candidate uses on each arc: 0 = first endpoint, 1 = second endpoint, 2 = an
# in-plane direction (x1, x2), i.e. the point (x1 o + x2 w) / |(x1, x2)| of the arc's frame (o, w).
_ON_FIRST_ARC = (0, 0, 1, 1, 0, 1, 2, 2, 2, 2)
_ON_SECOND_ARC = (0, 1, 0, 1, 2, 2, 0, 1, 2, 2)


class ArcDistance(NamedTuple):
    """Result of :func:`min_arc_distance`."""

    distance: Tensor
    """``[...]`` minimum Euclidean distance between the two arcs."""
    point_first: Tensor
    """``[..., D]`` the closest point on the arc from ``a`` to ``b``."""
    point_second: Tensor
    """``[..., D]`` the closest point on the arc from ``c`` to ``d``."""


class _Span(NamedTuple):
    """Angle of the shorter arc from ``x`` to ``y = cos_angle x + sin_angle u`` in its frame
    ``(x, u)``; ``ok`` is False for a degenerate pair (identical or antipodal), whose ``u = 0``."""

    cos_angle: Tensor
    sin_angle: Tensor
    ok: Tensor


class _ArcDots(NamedTuple):
    """The inner products that fully determine the LoOp problem of the arcs a->b (frame a, u)
    and c->d (frame c, v), and the two arcs' spans."""

    ends: Tensor
    """``[..., 4]``: <a,c>, <a,d>, <b,c>, <b,d>."""
    across: Tensor
    """``[..., 4]``: <a,v>, <b,v>, <c,u>, <d,u>."""
    uv: Tensor
    first: _Span
    second: _Span


def _safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(max(x, tiny))``: the gradient is 0 (not inf/NaN) where ``x <= tiny``; the value is
    off by at most ``sqrt(tiny)`` (1e-154 in float64, 1e-19 in float32)."""
    return x.clamp_min(torch.finfo(x.dtype).tiny).sqrt()


def _hypot(x: Tensor, y: Tensor) -> Tensor:
    return _safe_sqrt(x * x + y * y)


def _arc(x: Tensor, y: Tensor) -> tuple[Tensor, _Span]:
    """Unit tangent ``u`` at ``x`` towards ``y`` and the span of the arc from unit ``x`` to unit
    ``y`` (``[..., D]``); degenerate when ``sin(angle) <= sqrt(machine eps)``."""
    cos = (x * y).sum(-1)
    e = y - cos[..., None] * x
    e = e - (x * e).sum(-1, keepdim=True) * x  # second Gram-Schmidt pass: u is orthogonal to x
    sin = _safe_sqrt((e * e).sum(-1))
    floor = math.sqrt(torch.finfo(x.dtype).eps)
    ok = sin > floor
    tangent = e / sin.clamp_min(floor)[..., None] * ok[..., None]
    return tangent, _Span(cos.detach(), sin.detach(), ok)  # the span only enters sign tests


def _sides(x1: Tensor, x2: Tensor, span: _Span) -> tuple[Tensor, Tensor]:
    """For the in-plane direction ``(x1, x2)`` (angle ``atan2(x2, x1)``), the two signed
    quantities that are both >= 0 iff the direction is within the arc's ``[0, angle]``: it is on
    the tangent side of ``x`` and not past ``y``. Sign tests, no angles."""
    return x2, x1 * span.sin_angle - x2 * span.cos_angle


def _in_arc(x1: Tensor, x2: Tensor, span: _Span) -> Tensor:
    after_start, before_end = _sides(x1, x2, span)
    return span.ok & (after_start >= 0) & (before_end >= 0)


def _interior(d: _ArcDots) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Interior critical point: ``(cos, p_dir, q_dir, ok)``.

    With ``x(s) = (cos s, sin s)`` and ``y(t)`` alike, ``<p, q> = x^T M y``
    ``= Q cos(s - t - alpha) + R cos(s + t - beta)`` where ``Q e^{i alpha} = E + iH`` and
    ``R e^{i beta} = F + iG``. Its maximum ``Q + R`` is at ``e^{is} = +-sqrt(e^{i(alpha+beta)})``,
    ``e^{it} = e^{is} e^{-i alpha}``; ``p_dir``, ``q_dir`` (``[..., 2]``, unnormalised) are one of
    the two sign choices, the other is their negation. ``ok`` is False when ``Q R`` vanishes
    (coplanar or isoclinic arcs): the maxima then form a continuum that reaches the boundary of
    the arcs, where the projection candidates find them.
    """
    ac = d.ends[..., 0]
    av, cu = d.across[..., 0], d.across[..., 2]
    e, f = (ac + d.uv) / 2, (ac - d.uv) / 2
    g, h = (av + cu) / 2, (cu - av) / 2
    q, r = _hypot(e, h), _hypot(f, g)
    qr = q * r
    re, im = e * f - h * g, e * g + h * f  # (E + iH)(F + iG) = QR e^{i(alpha + beta)}
    right = re >= 0  # two half-angle formulas, each free of cancellation on its side
    p1, p2 = torch.where(right, qr + re, im), torch.where(right, im, qr - re)
    p_dir = torch.stack((p1, p2), dim=-1)
    q_dir = torch.stack((p1 * e + p2 * h, p2 * e - p1 * h), dim=-1)  # times (E - iH) = Q e^{-ia}
    ok = d.first.ok & d.second.ok & (qr > torch.finfo(qr.dtype).eps ** 2)
    return q + r, p_dir, q_dir, ok


def _projection_along(ends: Tensor) -> Tensor:
    """``<x, o>`` for the 4 projections (``x`` the endpoint, ``o`` the first endpoint of the
    other arc): <a,c>, <b,c>, <c,a>, <d,a>, picked from ``ends`` = <a,c>, <a,d>, <b,c>, <b,d>."""
    return torch.stack((ends[..., 0], ends[..., 2], ends[..., 0], ends[..., 1]), dim=-1)


def _candidates(d: _ArcDots, endpoints_only: bool) -> Tensor:
    """Cosines ``<p, q>`` of the candidate point pairs, ``-inf`` where a candidate is not on both
    arcs: ``[..., K]``, ``K = 4`` with ``endpoints_only`` else 10, in the order of
    ``_ON_FIRST_ARC`` / ``_ON_SECOND_ARC``.
    """
    if endpoints_only:
        return d.ends
    # Endpoint x projected onto the other arc's circle (frame o, w): the best point of the
    # circle is (<x,o> o + <x,w> w) / hypot(<x,o>, <x,w>), with cosine hypot(<x,o>, <x,w>).
    along = _projection_along(d.ends)
    on_arc = torch.cat(  # a, b land on arc (c, d); c, d on arc (a, b)
        [
            _in_arc(along[..., half], d.across[..., half], _Span(*(x[..., None] for x in span)))
            for half, span in ((slice(0, 2), d.second), (slice(2, 4), d.first))
        ],
        dim=-1,
    )
    projections = torch.where(on_arc, _hypot(along, d.across), -math.inf)

    inner_cos, p_dir, q_dir, ok = _interior(d)
    start_p, end_p = _sides(p_dir[..., 0], p_dir[..., 1], d.first)
    start_q, end_q = _sides(q_dir[..., 0], q_dir[..., 1], d.second)
    plus = ok & (start_p >= 0) & (end_p >= 0) & (start_q >= 0) & (end_q >= 0)
    minus = ok & (start_p <= 0) & (end_p <= 0) & (start_q <= 0) & (end_q <= 0)
    inner = torch.where(torch.stack((plus, minus), dim=-1), inner_cos[..., None], -math.inf)
    return torch.cat((d.ends, projections, inner), dim=-1)


def _candidate_directions(d: _ArcDots) -> tuple[Tensor, Tensor]:
    """In-plane directions ``[..., 10, 2]`` of every candidate's point on the first and the
    second arc (zeros where the candidate uses an endpoint)."""
    projections = torch.stack((_projection_along(d.ends), d.across), dim=-1)  # [..., 4, 2]
    _, p_dir, q_dir, _ = _interior(d)
    zeros = projections.new_zeros((*projections.shape[:-2], 6, 2))
    p_dir, q_dir = p_dir[..., None, :], q_dir[..., None, :]
    first = torch.cat((zeros, projections[..., 2:, :], p_dir, -p_dir), dim=-2)
    second = torch.cat(
        (zeros[..., :4, :], projections[..., :2, :], zeros[..., :2, :], q_dir, -q_dir), -2
    )
    return first, second


def _chord(cos: Tensor) -> Tensor:
    """Euclidean distance ``sqrt(2 - 2 cos)`` between unit vectors with inner product ``cos``."""
    return _safe_sqrt(2.0 - 2.0 * cos)


def _point(kind: Tensor, direction: Tensor, x: Tensor, y: Tensor, tangent: Tensor) -> Tensor:
    """The candidate point: ``x``, ``y`` or the normalised in-plane ``direction``."""
    unit = direction / _hypot(direction[..., 0], direction[..., 1])[..., None]
    in_plane = unit[..., :1] * x + unit[..., 1:] * tangent
    return torch.where((kind == 0)[..., None], x, torch.where((kind == 1)[..., None], y, in_plane))


def min_arc_distance(
    a: Tensor, b: Tensor, c: Tensor, d: Tensor, endpoints_only: bool = False
) -> ArcDistance:
    """Minimum Euclidean distance between the shorter great-circle arcs a->b and c->d (LoOp).

    ``a, b, c, d``: ``[..., D]`` tensors, broadcastable against each other, ``D >= 2``; they are
    L2-normalised first. E.g. positive pairs ``[P, 1, D]`` against negative pairs ``[1, N, D]``
    give ``[P, N]`` distances. Returns :class:`ArcDistance` with the distance and the two closest
    points (``p*`` on a->b, the optimal hard negative ``q*`` on c->d); gradients flow into all four
    inputs. ``endpoints_only`` is the ablation ``min(|a-c|, |a-d|, |b-c|, |b-d|)`` (no arc search).
    See the module docstring for the closed form and the handling of degenerate pairs.
    """
    a, b, c, d = (F.normalize(x, dim=-1) for x in (a, b, c, d))
    (u, first), (v, second) = _arc(a, b), _arc(c, d)

    def dots(*pairs: tuple[Tensor, Tensor]) -> Tensor:
        return torch.stack(torch.broadcast_tensors(*((x * y).sum(-1) for x, y in pairs)), -1)

    arc_dots = _ArcDots(
        ends=dots((a, c), (a, d), (b, c), (b, d)),
        across=dots((a, v), (b, v), (c, u), (d, u)),
        uv=(u * v).sum(-1),
        first=first,
        second=second,
    )
    cos = _candidates(arc_dots, endpoints_only)
    best_cos, best = cos.max(dim=-1)
    k = cos.shape[-1]
    kinds = [torch.tensor(x[:k], device=best.device)[best] for x in (_ON_FIRST_ARC, _ON_SECOND_ARC)]
    if endpoints_only:  # only endpoint candidates: the directions are unused
        p = q = best_cos.new_zeros((*best.shape, 2))
    else:
        index = best[..., None, None].expand(*best.shape, 1, 2)
        p, q = (x.gather(-2, index).squeeze(-2) for x in _candidate_directions(arc_dots))
    return ArcDistance(
        distance=_chord(best_cos),
        point_first=_point(kinds[0], p, a, b, u),
        point_second=_point(kinds[1], q, c, d, v),
    )


# ----------------------------------------------------------------------------- batch level
class PositivePairs(NamedTuple):
    """The positive pairs of a batch: every ``(first[k], second[k])``, ``first < second``, of one
    class, in lexicographic order; ``label[k]`` is their class."""

    first: Tensor
    second: Tensor
    label: Tensor


def positive_pairs(labels: Tensor) -> PositivePairs:
    """All same-class pairs ``i < j`` of the batch (a class with one sample forms none)."""
    same = labels[:, None] == labels[None, :]
    first, second = torch.triu(same, diagonal=1).nonzero(as_tuple=True)
    return PositivePairs(first, second, labels[first])


def _entries(matrix: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``matrix[rows, cols]`` through a flat ``gather`` (its backward, a scatter-add, is much
    faster on CPU than the accumulating index-put of advanced indexing)."""
    flat = rows * matrix.shape[1] + cols
    return matrix.reshape(-1).gather(0, flat.reshape(-1)).view(flat.shape)


def loop_cosines(unit: Tensor, pairs: PositivePairs, endpoints_only: bool = False) -> Tensor:
    """``C[k, l] = <p*, q*>``, the cosine of the LoOp optimum between the arc of pair ``k`` and
    the arc of pair ``l`` (so ``D*_kl = sqrt(2 - 2 C_kl)``), for every two pairs of different
    classes; ``[P, P]``, symmetric, 0 (not computed) between pairs of the same class.

    ``unit``: ``[B, D]`` L2-normalised embeddings. Every inner product is gathered from three
    matrix products (embeddings x embeddings, embeddings x arc tangents, tangents x tangents),
    so the cost per pair of pairs does not depend on ``D``.
    """
    i, j = pairs.first, pairs.second
    tangent, span = _arc(unit[i], unit[j])
    # Pairs of pairs (row, col), row < col, of different classes: (a, b) = (i, j)[row], (c, d) =
    # (i, j)[col], u = tangent[row], v = tangent[col].
    row, col = torch.triu(pairs.label[:, None] != pairs.label[None, :], diagonal=1).nonzero().T
    a, b, c, d = i[row], j[row], i[col], j[col]
    dots = _ArcDots(
        ends=_entries(unit @ unit.T, torch.stack((a, a, b, b), -1), torch.stack((c, d, c, d), -1)),
        across=_entries(  # <x_n, u_m>
            unit @ tangent.T, torch.stack((a, b, c, d), -1), torch.stack((col, col, row, row), -1)
        ),
        uv=_entries(tangent @ tangent.T, row, col),
        first=_Span(*(x[row] for x in span)),
        second=_Span(*(x[col] for x in span)),
    )
    cos = _candidates(dots, endpoints_only).max(dim=-1).values
    size = (len(i), len(i))
    return cos.new_zeros(size).index_put((row, col), cos).index_put((col, row), cos)


# ----------------------------------------------------------------------------- losses
class LoOpTuples(NamedTuple):
    """What every LoOp loss needs from a batch (``P`` positive pairs)."""

    unit: Tensor
    """``[B, D]`` L2-normalised embeddings."""
    labels: Tensor
    pairs: PositivePairs
    positive_cos: Tensor
    """``[P]`` cosine ``S_k`` of each positive pair."""
    loop_cos: Tensor
    """``[P, P]`` LoOp cosines ``S*_kl = <p*, q*>`` (valid where ``negative``)."""
    negative: Tensor
    """``[P, P]`` True where pairs ``k`` and ``l`` are of different classes."""


class LoOpLoss(DMLLoss):
    """Base of the LoOp losses: embeddings are L2-normalised, the tuples are the positive pairs
    ``k = (i, j)`` (every same-class pair ``i < j``; a class with one sample forms none and its
    sample is not used) and, for each, the *negative pairs* ``l``: the positive pairs of the
    other classes. The LoOp distance ``D*_kl`` and cosine ``S*_kl = 1 - D*_kl^2 / 2`` are those
    of the closest points of the two arcs (:func:`loop_cosines`; ``endpoints_only`` replaces them
    by the closest endpoints, the ablation without the arc search).

    This is the construction of the authors' code, except that it pairs the ``K`` samples of a
    class into ``K / 2`` disjoint pairs and we use all ``K (K - 1) / 2`` pairs. A batch with fewer
    than two classes having a pair has no tuple and gives ``embeddings.sum() * 0``.
    Subclasses implement :meth:`loop_loss`.
    """

    records_triplets = False

    def __init__(self, endpoints_only: bool = False) -> None:
        super().__init__()
        self.endpoints_only = endpoints_only

    def compute(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        unit = F.normalize(embeddings, dim=1)
        pairs = positive_pairs(labels)
        negative = pairs.label[:, None] != pairs.label[None, :]
        if not bool(negative.any()):
            empty = embeddings.new_zeros(0)
            if self.records_triplets:
                self.record_triplets(empty, empty)
            else:
                self.stats.update(mean_s_ap=mean_or_nan(empty), mean_s_an=mean_or_nan(empty))
            self.stats["active_fraction"] = mean_or_nan(empty)
            return embeddings.sum() * 0
        positive_cos = (unit[pairs.first] * unit[pairs.second]).sum(dim=1)
        loop_cos = loop_cosines(unit, pairs, self.endpoints_only)
        return self.loop_loss(LoOpTuples(unit, labels, pairs, positive_cos, loop_cos, negative))

    @abstractmethod
    def loop_loss(self, t: LoOpTuples) -> Tensor:
        """The loss from the batch's LoOp tuples; records its statistics."""

    def record_pair_stats(self, t: LoOpTuples, active: Tensor) -> None:
        """Pair-loss statistics: mean cosine of the positive pairs and of the LoOp negatives
        (every pair of pairs of different classes once) and the fraction ``active``."""
        upper = torch.triu(t.negative, diagonal=1)
        self.stats.update(
            mean_s_ap=mean_or_nan(t.positive_cos.detach()),
            mean_s_an=mean_or_nan(t.loop_cos.detach()[upper]),
            active_fraction=active.detach().float().mean(),
        )


class LoOpTripletLoss(LoOpLoss):
    """LoOp triplet loss (Vasudeva et al. ICCV 2021, the triplet loss of Sec. 3.3 with LoOp's
    optimal hard negatives; "HPHN" variant of the authors' code), per positive pair ``k = (i, j)``:

        ℓ_k = max(0, d⁺_k - min_{l ∈ N(k)} D*_kl + margin),   d⁺_k = max(h_i, h_j),

    ``h_i = max_{y_p = y_i, p ≠ i} |x_i - x_p|`` the hardest positive distance of sample ``i``
    and ``N(k)`` the pairs of the other classes; ``reduction`` over the pairs (``"mean"`` or
    ``"mean_nonzero"``). ``triplet_similarities`` are the cosines ``(1 - d⁺²/2, S*)`` of the
    hardest positive and of the LoOp optimum ``(p*, q*)`` used by each term.
    """

    records_triplets = True

    def __init__(
        self, margin: float = 0.2, reduction: Reduction = "mean", endpoints_only: bool = False
    ) -> None:
        super().__init__(endpoints_only)
        self.margin = margin
        self.reduction = reduction

    def loop_loss(self, t: LoOpTuples) -> Tensor:
        positive, _ = label_masks(t.labels)
        distance = _EUCLIDEAN.pairwise(t.unit).masked_fill(~positive, -math.inf)
        hardest = distance.max(dim=1).values
        d_ap = torch.maximum(hardest[t.pairs.first], hardest[t.pairs.second])
        s_an = t.loop_cos.masked_fill(~t.negative, -math.inf).max(dim=1).values
        terms = F.relu(d_ap - _chord(s_an) + self.margin)
        self.record_triplets((1 - d_ap.detach() ** 2 / 2), s_an.detach())
        self.stats["active_fraction"] = mean_or_nan(terms > 0)
        return reduce_terms(terms, self.reduction)


class LoOpContrastiveLoss(LoOpLoss):
    """Contrastive loss (Hadsell et al. CVPR 2006, hinge form with two margins) with LoOp
    negatives:

        L = R_k max(0, d_k - m_pos) + R_{k < l, y_k ≠ y_l} max(0, m_neg - D*_kl)

    ``d_k = |x_i - x_j|`` for each positive pair ``k = (i, j)``, every two pairs of different
    classes once, ``R`` the ``reduction`` of each sum (``"mean_nonzero"`` by default, as
    :class:`~dml.losses.ContrastiveLoss`). Not in the LoOp paper: the LoOp distance simply takes
    the place of the negative pair distance.
    """

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        reduction: Reduction = "mean_nonzero",
        endpoints_only: bool = False,
    ) -> None:
        super().__init__(endpoints_only)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin
        self.reduction = reduction

    def loop_loss(self, t: LoOpTuples) -> Tensor:
        d_pos = _EUCLIDEAN.paired(t.unit[t.pairs.first], t.unit[t.pairs.second])
        pos = F.relu(d_pos - self.pos_margin)
        neg = F.relu(self.neg_margin - _chord(t.loop_cos[torch.triu(t.negative, diagonal=1)]))
        self.record_pair_stats(t, torch.cat((pos, neg)) > 0)
        return reduce_terms(pos, self.reduction) + reduce_terms(neg, self.reduction)


class LoOpMultiSimilarityLoss(LoOpLoss):
    """Multi-similarity loss (Wang et al. CVPR 2019, Eq. 10, with the pair mining of Eq. 7-8)
    with LoOp negatives as cosines, as the authors' ``MSloss`` (which converts ``D*`` to
    ``S* = 1 - D*²/2``). The anchor is a positive pair ``k = (i, j)`` with similarity ``S_k``:

        L = 1/P Σ_k [ 1/α log(1 + [S_k - ε < max_l S*_kl] exp(-α (S_k - λ)))
                      + 1/β log(1 + Σ_{l ∈ N(k), S*_kl + ε > S_k} exp(β (S*_kl - λ))) ]

    ``N(k)``: the pairs of the other classes. Defaults α = 2, β = 50, λ = ``base`` = 0.5,
    ε = ``epsilon`` = 0.1, as the paper and the authors' code.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        epsilon: float = 0.1,
        endpoints_only: bool = False,
    ) -> None:
        super().__init__(endpoints_only)
        self.alpha = alpha
        self.beta = beta
        self.base = base
        self.epsilon = epsilon

    def loop_loss(self, t: LoOpTuples) -> Tensor:
        s_pos, s_neg = t.positive_cos, t.loop_cos
        with torch.no_grad():
            hardest_neg = s_neg.masked_fill(~t.negative, -math.inf).max(dim=1).values
            keep_pos = s_pos - self.epsilon < hardest_neg
            keep_neg = t.negative & (s_neg + self.epsilon > s_pos[:, None])
        pos = torch.where(keep_pos, F.softplus(-self.alpha * (s_pos - self.base)), 0.0)
        neg = _log1p_sum_exp(self.beta * (s_neg - self.base), keep_neg)
        terms = pos / self.alpha + neg / self.beta
        self.record_pair_stats(t, torch.cat((keep_pos, keep_neg[t.negative])))
        return terms.mean()


class LoOpLiftedStructureLoss(LoOpLoss):
    """Lifted structure loss (Oh Song et al. CVPR 2016, Eq. 4) with LoOp negatives, in the
    hinge (not squared) form of the authors' ``LiftedStructureLoss``; per positive pair
    ``k = (i, j)``:

        ℓ_k = max(0, d_k + log Σ_{l ∈ N(k)} exp(margin - D*_kl)),   L = 1/P Σ_k ℓ_k,

    ``d_k = |x_i - x_j|``. The negatives of both anchors ``i`` and ``j`` of the original loss are
    the LoOp optima against every pair ``l`` of another class. The authors' code uses the hardest
    positive distance of the pair for ``d_k``; as we enumerate all same-class pairs, each pair's
    own distance is the original lifted structure term.
    """

    def __init__(self, margin: float = 1.0, endpoints_only: bool = False) -> None:
        super().__init__(endpoints_only)
        self.margin = margin

    def loop_loss(self, t: LoOpTuples) -> Tensor:
        d_pos = _EUCLIDEAN.paired(t.unit[t.pairs.first], t.unit[t.pairs.second])
        logits = (self.margin - _chord(t.loop_cos)).masked_fill(~t.negative, -math.inf)
        terms = F.relu(d_pos + torch.logsumexp(logits, dim=1))
        self.record_pair_stats(t, terms > 0)
        return terms.mean()
