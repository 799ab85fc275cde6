"""The LoOp distance of two arcs, the reference (Vasudeva et al., "LoOp: Looking for Optimal Hard
Negative Embeddings for Deep Metric Learning", ICCV 2021): the hardest negative of a positive
pair is searched on the whole space between two negatives, not only at the negatives
themselves.

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

Decisions where the paper is silent:

* a pair whose ``sin(angle)`` is below ``sqrt(machine eps)`` is *degenerate* (identical or
  antipodal): its "arc" is its two endpoints only. For an identical pair this is exact (up to
  that tolerance); an exactly antipodal pair has no unique shorter arc, and its endpoints are
  the only choice that does not depend on an arbitrary direction.
* at a distance of 0 the gradient of the distance is taken as 0 (never NaN); when several
  candidates tie, the first in the candidate order takes the gradient.

The batched solver of the losses is :mod:`dml.losses.loop.solver`; this module is the reference.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from dml.losses.loop.candidates import (
    _ON_FIRST_ARC,
    _ON_SECOND_ARC,
    _arc,
    _ArcDots,
    _candidate_directions,
    _candidates,
    _chord,
    _point,
    _polarised,
    _projection_along,
    _sides,
    _Span,
    _unit,
)


class ArcDistance(NamedTuple):
    """Result of :func:`min_arc_distance`."""

    distance: Tensor
    """``[...]`` minimum Euclidean distance between the two arcs."""
    point_first: Tensor
    """``[..., D]`` the closest point on the arc from ``a`` to ``b``."""
    point_second: Tensor
    """``[..., D]`` the closest point on the arc from ``c`` to ``d``."""



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


