"""The closed-form candidate set of the LoOp optimum (see :mod:`dml.losses.loop.geometry`):
endpoint pairs, endpoint projections and interior critical points, each with its validity
(inside both arcs) and its cosine, all from inner products; plus the numerically careful
primitives they share (square root, ``hypot`` and normalisation with gradient 0 at 0)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

# Candidate order (the first axis of the candidate tensors): 4 endpoint pairs (a-c, b-c, a-d,
# b-d), 4 endpoint projections (a and b onto arc c->d, c and d onto arc a->b), 2 interior
# critical points (+ and - square root). The point each candidate uses on each arc: 0 = first
# endpoint, 1 = second endpoint, 2 = an in-plane direction (x1, x2), i.e. the point
# (x1 o + x2 w) / |(x1, x2)| in the arc's frame (o, w).
_ON_FIRST_ARC = (0, 1, 0, 1, 0, 1, 2, 2, 2, 2)
_ON_SECOND_ARC = (0, 0, 1, 1, 2, 2, 0, 1, 2, 2)


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


