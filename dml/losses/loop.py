"""LoOp (Vasudeva et al., "LoOp: Looking for Optimal Hard Negative Embeddings for Deep Metric
Learning", ICCV 2021): the hardest negative of a positive pair is searched on the whole space
between two negatives, not only at the negatives themselves.

Geometry (paper Sec. 3, the spherical case of L2-normalised embeddings). A pair ``(a, b)``
spans the shorter great-circle arc ``A = {cos s a + sin s u : 0 <= s <= theta_ab}`` with ``u``
the unit tangent at ``a`` towards ``b``; likewise ``(c, d)`` spans
``C = {cos t c + sin t v : 0 <= t <= theta_cd}``. The LoOp distance is the paper's optimum

    D*(a, b; c, d) = min_{p in A, q in C} |p - q|_2,

the distance between the optimal positive point ``p*`` and the optimal hard negative ``q*``.
The paper solves it with Lagrange multipliers and enumerates the cases of active constraints
(KKT); we evaluate the same candidate set in closed form, as the largest cosine ``<p, q>``:

* both points at arc endpoints (4 candidates: a-c, b-c, a-d, b-d);
* one endpoint and its projection onto the other arc's great circle, kept only if it falls
  inside that arc (4 candidates);
* both points interior: ``<p, q> = x(s)^T M y(t)`` with ``M = [[<a,c>, <a,v>], [<u,c>, <u,v>]]``
  separates as ``Q cos(s - t - alpha) + R cos(s + t - beta)``, whose only interior maxima are at
  ``s - t = alpha, s + t = beta`` (mod 2 pi) with value ``Q + R`` (the largest singular value of
  ``M``: the cosine of the smallest principal angle between the two planes) -- 2 candidates
  (the two square roots), kept only if on both arcs.

Everything is expressed through inner products, so it works in any dimension ``>= 2`` (no cross
products). Whether a candidate lies on an arc is decided by sign tests (no angles, no gradient),
and each candidate value is a closed-form function of the inner products (``hypot`` for
projections, ``Q + R`` for the interior), so gradients follow the envelope theorem and never
pass through the (possibly ill-conditioned) optimal angles.

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

Decisions where the paper is silent:

* a pair whose ``sin(angle)`` is below ``sqrt(machine eps)`` is *degenerate* (identical or
  antipodal): its "arc" is its two endpoints only. For an identical pair this is exact (up to
  that tolerance); an exactly antipodal pair has no unique shorter arc, and its endpoints are
  the only choice that does not depend on an arbitrary direction.
* at a distance of 0 the gradient of the distance is taken as 0 (never NaN); when several
  candidates tie, the first in the candidate order takes the gradient.
* the tuples: every same-class pair of the P×K batch is a positive pair, and its negative pairs
  are all the same-class pairs of the other classes (the authors' code splits each class into
  disjoint consecutive pairs); see :class:`LoOpLoss`.
"""

from __future__ import annotations

import functools
import math
from abc import abstractmethod
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dml.config_checks import check_range
from dml.distances import EuclideanDistance
from dml.losses.base import DMLLoss, Reduction, check_reduction, mean_or_nan, reduce_terms
from dml.losses.multisimilarity import check_ms_parameters, log1p_sum_exp
from dml.miners.base import label_masks

# Candidate order (the first axis of the candidate tensors): 4 endpoint pairs (a-c, b-c, a-d,
# b-d), 4 endpoint projections (a and b onto arc c->d, c and d onto arc a->b), 2 interior
# critical points (+ and - square root). The point each candidate uses on each arc: 0 = first
# endpoint, 1 = second endpoint, 2 = an in-plane direction (x1, x2), i.e. the point
# (x1 o + x2 w) / |(x1, x2)| in the arc's frame (o, w).
_ON_FIRST_ARC = (0, 1, 0, 1, 0, 1, 2, 2, 2, 2)
_ON_SECOND_ARC = (0, 0, 1, 1, 2, 2, 0, 1, 2, 2)


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
    and c->d (frame c, v), and the two arcs' spans. Candidate axis first."""

    ends: Tensor
    """``[4, ...]``: <a,c>, <b,c>, <a,d>, <b,d>."""
    across: Tensor
    """``[4, ...]``: <a,v>, <b,v>, <c,u>, <d,u> (projections of a, b on arc c->d, of c, d on
    arc a->b)."""
    beyond: Tensor
    """``[4, ...]``: for the same projections, ``<z, o> sin(angle) - <z, w> cos(angle)`` of the
    target arc (frame o, w); >= 0 iff the projection does not pass the arc's far end; -inf
    when the target arc is degenerate (it has no interior to project on)."""
    uv: Tensor
    first: _Span
    second: _Span


def _safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(max(x, tiny))``: the gradient is 0 (not inf/NaN) where ``x <= tiny``; the value is
    off by at most ``sqrt(tiny)`` (1e-154 in float64, 1e-19 in float32)."""
    return x.clamp_min(torch.finfo(x.dtype).tiny).sqrt()


class _Hypot(torch.autograd.Function):
    """``sqrt(x^2 + y^2 + tiny)`` with the gradient ``(x, y) / hypot`` in one step (autograd
    through the elementwise formula takes twice the kernels); the gradient is 0, not NaN, at
    ``x = y = 0``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, y: Tensor) -> Tensor:
        out = torch.addcmul(x * x, y, y).add_(torch.finfo(x.dtype).tiny).sqrt_()
        ctx.save_for_backward(x, y, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor]:
        x, y, out = ctx.saved_tensors
        scaled = grad / out
        return scaled * x, scaled * y


def _hypot(x: Tensor, y: Tensor) -> Tensor:
    return _Hypot.apply(x, y)


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


def _projection_along(ends: Tensor) -> Tensor:
    """``<z, o>`` of the 4 projections (endpoint ``z``, ``o`` the first endpoint of the other
    arc), <a,c>, <b,c>, <c,a>, <d,a>, from ``ends`` = <a,c>, <b,c>, <a,d>, <b,d>."""
    return torch.cat((ends[0:2], ends[0:3:2]))


def _norm_pairs(d: _ArcDots) -> tuple[Tensor, Tensor]:
    """``(x, y)``, ``[6, ...]``: the six 2-D vectors whose norms are the candidate cosines.

    Rows 0-3, projections: endpoint ``z`` of one arc meets the other arc's circle (frame
    ``o, w``) best at ``(<z,o> o + <z,w> w) / hypot(<z,o>, <z,w>)``, with cosine
    ``hypot(<z,o>, <z,w>)``; ``x = <z,o>`` is <a,c>, <b,c>, <c,a>, <d,a>, ``y = <z,w>`` is
    ``across``. Rows 4-5, interior: with ``x(s) = (cos s, sin s)`` and ``y(t)`` alike,
    ``x(s)^T M y(t) = (E cos(s-t) + H sin(s-t) + F cos(s+t) + G sin(s+t)) / 2``
    ``= Q cos(s - t - alpha) + R cos(s + t - beta)`` where ``E = <a,c> + <u,v>``,
    ``F = <a,c> - <u,v>``, ``G = <a,v> + <u,c>``, ``H = <u,c> - <a,v>``,
    ``2Q e^{i alpha} = E + iH`` and ``2R e^{i beta} = F + iG``; its maximum over both circles is
    ``Q + R``. Row 4 is ``(E, H)``, row 5 is ``(F, G)``.
    """
    ac, bc, ad, _ = d.ends.unbind()  # unbind, not indexing: one stack in the backward pass
    av, bv, cu, du = d.across.unbind()
    x = torch.stack((ac, bc, ac, ad, ac + d.uv, ac - d.uv))  # rows 0-3: _projection_along
    y = torch.stack((av, bv, cu, du, cu - av, av + cu))
    return x, y


def _interior_directions(x: Tensor, y: Tensor, qr: Tensor) -> tuple[Tensor, Tensor]:
    """In-plane directions ``p_dir``, ``q_dir`` (``[2, ...]``, unnormalised) of the interior
    maximum of :func:`_norm_pairs` (``x, y`` its output, ``qr = 4 Q R``):
    ``e^{is} = +-sqrt(e^{i(alpha + beta)})`` and ``e^{it} = e^{is} e^{-i alpha}``. They are one
    of the two sign choices; the other is their negation."""
    e, f, h, g = x[4], x[5], y[4], y[5]
    re, im = e * f - h * g, e * g + h * f  # (E + iH)(F + iG) = 4QR e^{i(alpha + beta)}
    right = re >= 0  # two half-angle formulas, each free of cancellation on its side
    p1, p2 = torch.where(right, qr + re, im), torch.where(right, im, qr - re)
    q1, q2 = p1 * e + p2 * h, p2 * e - p1 * h  # times (E - iH) = 2Q e^{-i alpha}
    return torch.stack((p1, p2)), torch.stack((q1, q2))


def _validity(d: _ArcDots, x: Tensor, y: Tensor, norms: Tensor) -> tuple[Tensor, Tensor]:
    """Which projections (``[4, ...]``) and which interior candidates (``[2, ...]``: ``+`` and
    ``-`` square root) lie on both arcs; ``x, y, norms`` from :func:`_norm_pairs`. Sign tests,
    without autograd."""
    with torch.no_grad():
        on_arc = torch.minimum(d.across, d.beyond) >= 0
        qr = norms[4] * norms[5]
        p_dir, q_dir = _interior_directions(x, y, qr)
        sides = torch.stack((*_sides(*p_dir, d.first), *_sides(*q_dir, d.second)))
        # Q R = 0: coplanar or isoclinic arcs, the maxima form a continuum that reaches the
        # boundary of the arcs, where the projections find them.
        ok = d.first.ok & d.second.ok & (qr > 4 * torch.finfo(qr.dtype).eps ** 2)
        # (p, q) or (-p, -q) is on both arcs: all four sides >= 0, or all <= 0.
        inner_ok = ok & torch.stack((sides.amin(dim=0) >= 0, sides.amax(dim=0) <= 0))
    return on_arc, inner_ok


def _candidates(d: _ArcDots, endpoints_only: bool) -> Tensor:
    """Cosines ``<p, q>`` of the candidate point pairs, ``-inf`` where a candidate is not on both
    arcs: ``[K, ...]``, ``K = 4`` with ``endpoints_only`` else 10, in the order of
    ``_ON_FIRST_ARC`` / ``_ON_SECOND_ARC``. Only the values carry gradients.
    """
    if endpoints_only:
        return d.ends
    x, y = _norm_pairs(d)
    norms = _hypot(x, y)
    on_arc, inner_ok = _validity(d, x, y, norms)
    projections, q2, r2 = norms.split((4, 1, 1))  # split, not indexing (cheaper backward)
    inner = ((q2 + r2) / 2).expand_as(inner_ok).masked_fill(~inner_ok, -math.inf)
    return torch.cat((d.ends, projections.masked_fill(~on_arc, -math.inf), inner))


def _candidate_directions(d: _ArcDots) -> tuple[Tensor, Tensor]:
    """In-plane directions ``[10, ..., 2]`` of every candidate's point on the first and the
    second arc (zeros where the candidate uses an endpoint)."""
    x, y = _norm_pairs(d)
    projections = torch.stack((x[:4], y[:4]), dim=-1)  # [4, ..., 2]
    norms = _hypot(x, y)
    p_dir, q_dir = _interior_directions(x, y, norms[4] * norms[5])
    p_dir, q_dir = p_dir.movedim(0, -1)[None], q_dir.movedim(0, -1)[None]
    zeros = torch.zeros_like(projections)
    first = torch.cat((zeros, zeros[:2], projections[2:], p_dir, -p_dir))
    second = torch.cat((zeros, projections[:2], zeros[:2], q_dir, -q_dir))
    return first, second


def _chord(cos: Tensor) -> Tensor:
    """Euclidean distance ``sqrt(2 - 2 cos)`` between unit vectors with inner product ``cos``.

    Near ``cos = 1`` this cancels: an error ``delta`` in ``cos`` becomes ``sqrt(2 delta)`` in the
    distance (1.5e-8 for one ulp below 1 in float64), and the gradient ``1 / distance`` scales
    rounding by 1e8. Hence endpoint cosines are formed from differences (:func:`_polarised`:
    exactly 1 for identical embeddings) and positive pair distances are norms of differences."""
    return _safe_sqrt(2.0 - 2.0 * cos)


class _Unit(torch.autograd.Function):
    """``(x / s, n)`` along the last axis, ``s = max(|x|, 1e-12)`` (as ``F.normalize``), with
    ``n = (|x| / s)^2`` the squared norm of ``x / s`` taken exactly: 1 (not the rounded sum of
    squares) unless ``|x| < 1e-12`` (0 for a zero vector); ``n`` has no gradient. The gradient
    of ``u = x / |x|``, ``(g - u <g, u>) / |x|`` (``g / s`` where ``s`` is the constant 1e-12),
    in one step (autograd through the formula takes twice the kernels)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> tuple[Tensor, Tensor]:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        scale = norm.clamp_min(1e-12)
        unit = x / scale
        n = (norm / scale).square_().squeeze(-1)  # norm / norm: exactly 1
        ctx.save_for_backward(unit, scale, norm >= 1e-12)
        ctx.mark_non_differentiable(n)
        return unit, n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor, _: Tensor) -> Tensor:
        unit, scale, radial = ctx.saved_tensors
        along = (grad * unit).sum(-1, keepdim=True).mul_(radial)
        return torch.addcmul(grad, unit, along, value=-1).div_(scale)


def _unit(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x / max(|x|, 1e-12), n)``, see :class:`_Unit`."""
    return _Unit.apply(x)


def _polarised(squared: Tensor, n_x: Tensor, n_y: Tensor) -> Tensor:
    """Inner products ``<x, y> = (|x|^2 + |y|^2 - |x - y|^2) / 2`` from squared norms ``n`` and
    squared distances. For unit vectors (``n = 1`` exactly, :func:`_unit`) an absolute error
    ``delta`` of ``|x - y|^2`` gives at most ``delta / 2 + u`` in the cosine (``u`` the unit
    roundoff): ``2 gamma_{k+3} + u`` in dimension ``k`` when ``|x - y|^2 <= 4`` is summed from
    the differences (relative error ``gamma_{k+3}``, ``gamma_n = n u / (1 - n u)``), the order
    of a dot product's ``gamma_k``; and the cosine of ``x = y`` is exactly 1."""
    return (n_x + n_y - squared) / 2


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
    (a, na), (b, nb), (c, nc), (d, nd) = (_unit(x) for x in (a, b, c, d))
    (u, first), (v, second) = _arc(a, b), _arc(c, d)

    def stack(*values: Tensor) -> Tensor:
        return torch.stack(torch.broadcast_tensors(*values))

    ends = stack(  # from differences: exactly 1 for coincident endpoints (see _chord)
        *(
            _polarised((x - y).square().sum(-1), nx, ny)
            for x, nx, y, ny in ((a, na, c, nc), (b, nb, c, nc), (a, na, d, nd), (b, nb, d, nd))
        )
    )
    across = stack(*((x * y).sum(-1) for x, y in ((a, v), (b, v), (c, u), (d, u))))
    targets = _Span(  # the arc each projection lands on: a, b on (c, d); c, d on (a, b)
        *(
            torch.stack(torch.broadcast_tensors(s, s, f, f))
            for f, s in zip(first, second, strict=True)
        )
    )
    arc_dots = _ArcDots(
        ends=ends,
        across=across,
        beyond=_sides(_projection_along(ends), across, targets)[1].masked_fill(
            ~targets.ok, -math.inf
        ),
        uv=(u * v).sum(-1),
        first=first,
        second=second,
    )
    cos = _candidates(arc_dots, endpoints_only)
    best_cos, best = cos.max(dim=0)
    k = cos.shape[0]
    kinds = [torch.tensor(x[:k], device=best.device)[best] for x in (_ON_FIRST_ARC, _ON_SECOND_ARC)]
    if endpoints_only:  # only endpoint candidates: the directions are unused
        p = q = best_cos.new_zeros((*best.shape, 2))
    else:
        index = best[None, ..., None].expand(1, *best.shape, 2)
        p, q = (x.gather(0, index)[0] for x in _candidate_directions(arc_dots))
    return ArcDistance(
        distance=_chord(best_cos),
        point_first=_point(kinds[0], p, a, b, u),
        point_second=_point(kinds[1], q, c, d, v),
    )


# ----------------------------------------------------------------------------- batch level
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


# ----------------------------------------------------------------------------- losses
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


class LoOpTuples(NamedTuple):
    """What every LoOp loss needs from a batch (``P`` positive pairs)."""

    gram: Tensor
    """``[B, B]`` inner products of the L2-normalised embeddings (float64 but on MPS)."""
    squared: Tensor
    """``[B, B]`` their squared distances (accurate near 0, see :func:`_unit_geometry`)."""
    labels: Tensor
    pairs: PairsOfPairs
    loop_cos: Tensor
    """``[P, P]`` LoOp cosines ``S*_kl = <p*, q*>`` (valid where ``pairs.negative``)."""

    def positive_cos(self) -> Tensor:
        """``[P]`` cosine ``S_k`` of each positive pair."""
        return self.gram[self.pairs.first, self.pairs.second]

    def positive_distance(self) -> Tensor:
        """``[P]`` distance ``d_k = |x^_i - x^_j|`` of each positive pair ``k = (i, j)``, from
        the squared distances (not ``sqrt(2 - 2 S_k)``, which cancels); gradient 0 at 0."""
        return _safe_sqrt(self.squared[self.pairs.first, self.pairs.second])


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
        pairs = pairs_of_pairs(labels)
        if pairs.row.numel() == 0:
            empty = embeddings.new_zeros(0)
            if self.records_triplets:
                self.record_triplets(empty, empty)
            else:
                self.stats.update(mean_s_ap=mean_or_nan(empty), mean_s_an=mean_or_nan(empty))
            self.stats["active_fraction"] = mean_or_nan(empty)
            return embeddings.sum() * 0
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        gram, squared = _unit_geometry(embeddings.to(_gram_dtype(embeddings)))
        loop_cos = loop_cosines(gram, pairs, self.endpoints_only, dtype)
        tuples = LoOpTuples(gram, squared, labels, pairs, loop_cos)
        return self.loop_loss(tuples).to(embeddings.dtype)

    @abstractmethod
    def loop_loss(self, t: LoOpTuples) -> Tensor:
        """The loss from the batch's LoOp tuples; records its statistics."""

    def record_pair_stats(self, t: LoOpTuples, positive_cos: Tensor, active: Tensor) -> None:
        """Pair-loss statistics: mean cosine of the positive pairs and of the LoOp negatives
        (every pair of pairs of different classes once) and the fraction ``active``."""
        self.stats.update(
            mean_s_ap=mean_or_nan(positive_cos),
            mean_s_an=mean_or_nan(t.loop_cos.detach()[t.pairs.row, t.pairs.col]),
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
        check_range("loss.margin", margin, 0)
        check_reduction(reduction)
        super().__init__(endpoints_only)
        self.margin = margin
        self.reduction = reduction

    def loop_loss(self, t: LoOpTuples) -> Tensor:
        positive, _ = label_masks(t.labels)
        hardest = _safe_sqrt(t.squared.masked_fill(~positive, -math.inf).max(dim=1).values)
        d_ap = torch.maximum(hardest[t.pairs.first], hardest[t.pairs.second])
        s_an = t.loop_cos.masked_fill(~t.pairs.negative, -math.inf).max(dim=1).values
        terms = F.relu(d_ap - _chord(s_an) + self.margin)
        self.record_triplets((1 - d_ap.detach() ** 2 / 2).float(), s_an.detach().float())
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
        check_range("loss.pos_margin", pos_margin, 0)
        check_range("loss.neg_margin", neg_margin, 0)
        check_reduction(reduction)
        super().__init__(endpoints_only)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin
        self.reduction = reduction

    def loop_loss(self, t: LoOpTuples) -> Tensor:
        s_pos = t.positive_cos()
        pos = F.relu(t.positive_distance() - self.pos_margin)
        neg = F.relu(self.neg_margin - _chord(t.loop_cos[t.pairs.row, t.pairs.col]))
        self.record_pair_stats(t, s_pos, torch.cat((pos, neg)) > 0)
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
        check_ms_parameters(alpha, beta, base)
        check_range("loss.epsilon", epsilon, 0)
        super().__init__(endpoints_only)
        self.alpha = alpha
        self.beta = beta
        self.base = base
        self.epsilon = epsilon

    def loop_loss(self, t: LoOpTuples) -> Tensor:
        s_pos, s_neg = t.positive_cos(), t.loop_cos
        with torch.no_grad():
            hardest_neg = s_neg.masked_fill(~t.pairs.negative, -math.inf).max(dim=1).values
            keep_pos = s_pos - self.epsilon < hardest_neg
            keep_neg = t.pairs.negative & (s_neg + self.epsilon > s_pos[:, None])
        pos = torch.where(keep_pos, F.softplus(-self.alpha * (s_pos - self.base)), 0.0)
        neg = log1p_sum_exp(self.beta * (s_neg - self.base), keep_neg)
        terms = pos / self.alpha + neg / self.beta
        self.record_pair_stats(t, s_pos, torch.cat((keep_pos, keep_neg[t.pairs.negative])))
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
        check_range("loss.margin", margin, 0)
        super().__init__(endpoints_only)
        self.margin = margin

    def loop_loss(self, t: LoOpTuples) -> Tensor:
        s_pos = t.positive_cos()
        logits = (self.margin - _chord(t.loop_cos)).masked_fill(~t.pairs.negative, -math.inf)
        terms = F.relu(t.positive_distance() + torch.logsumexp(logits, dim=1))
        self.record_pair_stats(t, s_pos, terms > 0)
        return terms.mean()
