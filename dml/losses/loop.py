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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Candidate order: 4 endpoint pairs, 4 endpoint-to-arc projections, 2 interior critical points.
# Which point each candidate uses on each arc: 0 = first endpoint, 1 = second, 2 = interior angle.
_ON_FIRST_ARC = (0, 0, 1, 1, 0, 1, 2, 2, 2, 2)
_ON_SECOND_ARC = (0, 1, 0, 1, 2, 2, 0, 1, 2, 2)
_N_ENDPOINT_PAIRS = 4


class ArcDistance(NamedTuple):
    """Result of :func:`min_arc_distance`."""

    distance: Tensor
    """``[...]`` minimum Euclidean distance between the two arcs."""
    point_first: Tensor
    """``[..., D]`` the closest point on the arc from ``a`` to ``b``."""
    point_second: Tensor
    """``[..., D]`` the closest point on the arc from ``c`` to ``d``."""


class _ArcDots(NamedTuple):
    """Inner products that fully determine the LoOp problem of arcs (a, b; u) and (c, d; v)."""

    ac: Tensor
    ad: Tensor
    bc: Tensor
    bd: Tensor
    av: Tensor
    bv: Tensor
    cu: Tensor
    du: Tensor
    uv: Tensor
    angle_first: Tensor
    angle_second: Tensor
    ok_first: Tensor
    ok_second: Tensor


def _safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(max(x, 0))`` whose gradient is 0 (not inf/NaN) where ``x <= tiny``."""
    tiny = torch.finfo(x.dtype).tiny
    return torch.where(x > tiny, x.clamp_min(tiny).sqrt(), 0.0)


def _safe_atan2(y: Tensor, x: Tensor) -> Tensor:
    """``atan2(y, x)`` with value and gradient 0 where ``x = y = 0`` (up to underflow)."""
    small = x * x + y * y <= torch.finfo(x.dtype).tiny
    return torch.atan2(torch.where(small, 0.0, y), torch.where(small, 1.0, x))


def _degenerate_below(dtype: torch.dtype) -> float:
    return math.sqrt(torch.finfo(dtype).eps)


def _arc_frame(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unit tangent ``u`` at ``x`` towards ``y``, the angle ``theta`` of the shorter arc, and
    ``ok`` (False for a degenerate pair, which gets ``u = 0`` and ``theta = 0``).

    ``x, y``: ``[..., D]`` unit vectors; ``y = cos(theta) x + sin(theta) u``.
    """
    cos = (x * y).sum(-1)
    e = y - cos[..., None] * x
    e = e - (x * e).sum(-1, keepdim=True) * x  # second Gram-Schmidt pass: u is orthogonal to x
    norm = _safe_sqrt((e * e).sum(-1))
    floor = _degenerate_below(x.dtype)
    ok = norm > floor
    safe_norm = norm.clamp_min(floor)
    u = e / safe_norm[..., None] * ok[..., None]
    theta = torch.where(ok, torch.atan2(safe_norm, cos), 0.0)
    return u, theta, ok


def _on_arc(angle: Tensor, arc_angle: Tensor, ok: Tensor) -> Tensor:
    return ok & (angle >= 0) & (angle <= arc_angle)


def _candidates(dots: _ArcDots, endpoints_only: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Cosines ``<p, q>`` of the candidate point pairs (``-inf`` where a candidate is not on both
    arcs) and their angles ``s`` on the first arc and ``t`` on the second (0 where unused).

    Returns three ``[..., K]`` tensors, ``K = 4`` with ``endpoints_only`` else 10, in the order of
    ``_ON_FIRST_ARC`` / ``_ON_SECOND_ARC``.
    """
    d = dots
    endpoint_cos = [d.ac, d.ad, d.bc, d.bd]
    if endpoints_only:
        cos = torch.stack(torch.broadcast_tensors(*endpoint_cos), dim=-1)
        return cos, torch.zeros_like(cos), torch.zeros_like(cos)

    # Endpoint x of one arc projected onto the other arc's great circle (frame o, w):
    # max_t <x, cos t o + sin t w> = hypot(<x,o>, <x,w>) at t = atan2(<x,w>, <x,o>).
    proj = [
        (d.ac, d.av, d.angle_second, d.ok_second),  # a onto arc (c, d): angle t
        (d.bc, d.bv, d.angle_second, d.ok_second),  # b onto arc (c, d): angle t
        (d.ac, d.cu, d.angle_first, d.ok_first),  # c onto arc (a, b): angle s
        (d.ad, d.du, d.angle_first, d.ok_first),  # d onto arc (a, b): angle s
    ]
    proj_cos, proj_angle, proj_ok = [], [], []
    for along, across, arc_angle, ok in proj:
        angle = _safe_atan2(across, along)
        proj_cos.append(_safe_sqrt(along * along + across * across))
        proj_angle.append(angle)
        proj_ok.append(_on_arc(angle, arc_angle, ok))

    # Interior: <p, q> = E cos(s-t) + H sin(s-t) + F cos(s+t) + G sin(s+t)
    #                  = Q cos(s - t - alpha) + R cos(s + t - beta).
    e_, f_ = (d.ac + d.uv) / 2, (d.ac - d.uv) / 2
    g_, h_ = (d.av + d.cu) / 2, (d.cu - d.av) / 2
    alpha, beta = _safe_atan2(h_, e_), _safe_atan2(g_, f_)
    inner_cos = _safe_sqrt(e_ * e_ + h_ * h_) + _safe_sqrt(f_ * f_ + g_ * g_)
    s0, t0 = (alpha + beta) / 2, (beta - alpha) / 2
    s1 = torch.where(s0 > 0, s0 - math.pi, s0 + math.pi)  # (s0 + pi, t0 + pi) wrapped
    t1 = torch.where(t0 > 0, t0 - math.pi, t0 + math.pi)
    inner_ok = [
        _on_arc(s, d.angle_first, d.ok_first) & _on_arc(t, d.angle_second, d.ok_second)
        for s, t in ((s0, t0), (s1, t1))
    ]

    zero = torch.zeros_like(d.ac)
    cos = [*endpoint_cos, *proj_cos, inner_cos, inner_cos]
    ok = [*(None,) * _N_ENDPOINT_PAIRS, *proj_ok, *inner_ok]
    s = [zero] * 6 + [proj_angle[2], proj_angle[3], s0, s1]
    t = [zero] * 4 + [proj_angle[0], proj_angle[1], zero, zero, t0, t1]
    cos = [c if k is None else torch.where(k, c, -math.inf) for c, k in zip(cos, ok, strict=True)]
    stacked = [torch.stack(torch.broadcast_tensors(*x), dim=-1) for x in (cos, s, t)]
    return stacked[0], stacked[1], stacked[2]


def _chord(cos: Tensor) -> Tensor:
    """Euclidean distance ``sqrt(2 - 2 cos)`` between unit vectors with inner product ``cos``."""
    return _safe_sqrt(2.0 - 2.0 * cos)


def _point(kind: Tensor, angle: Tensor, first: Tensor, second: Tensor, tangent: Tensor) -> Tensor:
    arc_point = torch.cos(angle)[..., None] * first + torch.sin(angle)[..., None] * tangent
    return torch.where(
        (kind == 0)[..., None], first, torch.where((kind == 1)[..., None], second, arc_point)
    )


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
    u, angle_first, ok_first = _arc_frame(a, b)
    v, angle_second, ok_second = _arc_frame(c, d)

    def dot(x: Tensor, y: Tensor) -> Tensor:
        return (x * y).sum(-1)

    dots = _ArcDots(
        dot(a, c), dot(a, d), dot(b, c), dot(b, d),
        dot(a, v), dot(b, v), dot(c, u), dot(d, u), dot(u, v),
        angle_first, angle_second, ok_first, ok_second,
    )  # fmt: skip
    cos, s, t = _candidates(dots, endpoints_only)
    best_cos, best = cos.max(dim=-1)
    k = cos.shape[-1]
    kinds = [torch.tensor(x[:k], device=best.device)[best] for x in (_ON_FIRST_ARC, _ON_SECOND_ARC)]
    s_best = s.gather(-1, best[..., None]).squeeze(-1)
    t_best = t.gather(-1, best[..., None]).squeeze(-1)
    return ArcDistance(
        distance=_chord(best_cos),
        point_first=_point(kinds[0], s_best, a, b, u),
        point_second=_point(kinds[1], t_best, c, d, v),
    )
