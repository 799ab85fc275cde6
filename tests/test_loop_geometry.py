"""`min_arc_distance` against dense, locally refined sampling of both arcs (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dml.losses.loop import loop_cosines, min_arc_distance, pairs_of_pairs

# sqrt(2 - 2 cos) cannot resolve distances below ~sqrt(2 eps) = 2.1e-8 in float64: the only slack
# allowed above the sampled minimum (whose endpoint distances are exact vector differences).
ROUNDING = 3e-8
DTYPE = torch.float64


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1)


def _tangent(x: Tensor, gen: torch.Generator) -> Tensor:
    """A random unit vector orthogonal to the unit vector ``x``."""
    r = torch.randn(x.shape, generator=gen, dtype=DTYPE)
    return _unit(r - (r @ x) * x)


def _case(kind: str, dim: int, gen: torch.Generator) -> list[Tensor]:
    def rand() -> Tensor:
        return _unit(torch.randn(dim, generator=gen, dtype=DTYPE))

    a, b, c, d = (rand() for _ in range(4))
    if kind == "identical":  # one pair collapsed to a point
        b = a.clone()
    elif kind == "both_identical":
        b, d = a.clone(), c.clone()
    elif kind == "near_identical":
        b = _unit(a + 1e-7 * rand())
    elif kind == "antipodal":  # an arc of almost pi, well defined
        scale = 10 ** (-5 + 3 * torch.rand((), generator=gen, dtype=DTYPE).item())
        b = _unit(-a + scale * rand())
    elif kind == "intersecting":  # both arcs cross the point x: distance exactly 0
        x = rand()
        s = 0.05 + 1.4 * torch.rand(4, generator=gen, dtype=DTYPE)
        t1, t2 = _tangent(x, gen), _tangent(x, gen)
        a, b = math.cos(s[0]) * x - math.sin(s[0]) * t1, math.cos(s[1]) * x + math.sin(s[1]) * t1
        c, d = math.cos(s[2]) * x - math.sin(s[2]) * t2, math.cos(s[3]) * x + math.sin(s[3]) * t2
    elif kind == "shared_endpoint":
        c = a.clone() if torch.rand((), generator=gen).item() < 0.5 else b.clone()
    elif kind == "same_circle":  # all four on one great circle: M is a rotation (Q or R is 0)
        x = rand()
        t = _tangent(x, gen)
        ang = 2 * math.pi * torch.rand(4, generator=gen, dtype=DTYPE)
        a, b, c, d = (math.cos(g) * x + math.sin(g) * t for g in ang)
    return [a, b, c, d]


KINDS = (
    ["generic"] * 12
    + ["identical", "both_identical", "near_identical", "antipodal", "antipodal"]
    + ["intersecting", "intersecting", "shared_endpoint", "shared_endpoint", "same_circle"]
)


def _cases(n: int, seed: int = 0) -> tuple[list[str], list[int], list[list[Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    kinds, dims, cases = [], [], []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        dim = round(2 ** (1 + 8 * torch.rand((), generator=gen).item()))  # 2..512, log-uniform
        kinds.append(kind)
        dims.append(dim)
        cases.append(_case(kind, dim, gen))
    return kinds, dims, cases


def _coordinates(cases: list[list[Tensor]]) -> Tensor:
    """Each case's four vectors in an orthonormal basis of their span (QR), ``[n, 4, 4]``: an
    isometry, so the reference works in 4 dimensions whatever ``D`` is. Zero-padding the
    ``[D, 4]`` matrices to a common ``D`` leaves their ``R`` factor unchanged."""
    dim = max(len(case[0]) for case in cases)
    columns = [F.pad(torch.stack(case, dim=1), (0, 0, 0, dim - len(case[0]))) for case in cases]
    return torch.linalg.qr(torch.stack(columns)).R.transpose(1, 2)  # rows: a, b, c, d


def _slerp(x: Tensor, y: Tensor, frac: Tensor) -> Tensor:
    """Points at fractions ``frac [n, m]`` along the shorter arc ``x -> y`` (``x, y: [n, 4]``)."""
    norm = torch.linalg.vector_norm
    theta = 2 * torch.atan2(norm(x - y, dim=-1), norm(x + y, dim=-1))[:, None]  # accurate at 0, pi
    sin = torch.sin(theta)
    weight_x = torch.sin((1 - frac) * theta) / sin.clamp_min(1e-300)
    weight_y = torch.sin(frac * theta) / sin.clamp_min(1e-300)
    point = weight_x[..., None] * x[:, None] + weight_y[..., None] * y[:, None]
    return torch.where((sin > 0)[..., None], point, x[:, None].expand_as(point))


def _sampled_minimum(coords: Tensor, grid: int = 65, starts: int = 4, rounds: int = 14) -> Tensor:
    """Min over a ``grid x grid`` sampling of both arcs, then zoom on the best ``starts`` cells:
    each round resamples a ``17 x 17`` window 4x narrower around the current best."""
    a, b, c, d = coords.unbind(1)
    n = coords.shape[0]
    lin = torch.linspace(0, 1, grid, dtype=DTYPE).expand(n, grid)
    dist = torch.cdist(_slerp(a, b, lin), _slerp(c, d, lin))  # [n, grid, grid]
    top = dist.flatten(1).topk(starts, largest=False).indices
    frac_s, frac_t = (top // grid).to(DTYPE) / (grid - 1), (top % grid).to(DTYPE) / (grid - 1)
    best = dist.flatten(1).min(1).values
    offsets = torch.linspace(-1, 1, 17, dtype=DTYPE)
    half = 2.0 / (grid - 1)
    for _ in range(rounds):
        ws = (frac_s[..., None] + half * offsets).clamp(0, 1)  # [n, starts, 17]
        wt = (frac_t[..., None] + half * offsets).clamp(0, 1)
        ps = _slerp(a, b, ws.flatten(1)).view(n, starts, 17, 4)
        qs = _slerp(c, d, wt.flatten(1)).view(n, starts, 17, 4)
        local = torch.cdist(ps, qs).flatten(2)  # [n, starts, 17 * 17]
        value, arg = local.min(-1)
        frac_s = ws.gather(-1, (arg // 17)[..., None]).squeeze(-1)
        frac_t = wt.gather(-1, (arg % 17)[..., None]).squeeze(-1)
        best = torch.minimum(best, value.min(-1).values)
        half /= 4
    return best


@pytest.fixture(scope="module")
def thousand_cases() -> tuple[list[str], list[int], list[list[Tensor]], Tensor]:
    """1000 cases and their refined sampled minimum distances."""
    kinds, dims, cases = _cases(1000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small kernels: extra threads only spin on a busy machine
    try:
        return kinds, dims, cases, _sampled_minimum(_coordinates(cases))
    finally:
        torch.set_num_threads(threads)


def _check(ours: Tensor, cases: tuple, slack_above: float) -> None:
    kinds, dims, _, reference = cases
    above = ours - reference
    worst = int(above.abs().argmax())
    detail = f"worst case #{worst}: {kinds[worst]}, D={dims[worst]}, diff={above[worst]:.3g}"
    assert (above <= slack_above).all(), detail
    assert (above.abs() <= 1e-6).all(), detail
    assert min(dims) == 2 and max(dims) >= 400  # the dimension range is really covered


def test_matches_refined_sampling_on_1000_cases(thousand_cases) -> None:
    ours = torch.stack([min_arc_distance(*case).distance for case in thousand_cases[2]])
    _check(ours, thousand_cases, ROUNDING)


def test_batch_path_matches_refined_sampling_on_1000_cases(thousand_cases) -> None:
    """``loop_cosines`` derives everything from the Gram matrix: for a pair with ``c = <x, y>``
    near -1 it only knows ``sin = sqrt((1 - c)(1 + c))`` to a relative ``eps / (1 + c)``, so the
    near-antipodal cases (``1 + c`` down to 5e-11 here) may exceed the minimum by ~1e-7."""
    pairs = pairs_of_pairs(torch.tensor([0, 0, 1, 1]))
    cosines = [
        loop_cosines(_unit(torch.stack(case)) @ _unit(torch.stack(case)).T, pairs)[0, 1]
        for case in thousand_cases[2]
    ]
    _check((2 - 2 * torch.stack(cosines)).clamp_min(0).sqrt(), thousand_cases, 3e-7)


def test_reference_is_not_trivially_satisfied() -> None:
    """The arc search matters: it beats the endpoint distances on many generic cases, and the
    refined reference agrees with it there (so the previous test is not comparing endpoints)."""
    _, _, cases = _cases(96, seed=1)
    arc = torch.stack([min_arc_distance(*case).distance for case in cases])
    ends = torch.stack([min_arc_distance(*case, endpoints_only=True).distance for case in cases])
    assert (arc <= ends + ROUNDING).all()
    assert ((ends - arc) > 1e-2).sum() >= 20


def test_closest_points_lie_on_the_arcs_and_realise_the_distance() -> None:
    _, _, cases = _cases(200, seed=2)
    for a, b, c, d in cases:
        res = min_arc_distance(a, b, c, d)
        for p, x, y in ((res.point_first, a, b), (res.point_second, c, d)):
            assert torch.linalg.vector_norm(p) == pytest.approx(1.0, abs=1e-12)
            ang = [torch.arccos((u @ v).clamp(-1, 1)) for u, v in ((x, p), (p, y), (x, y))]
            if (x @ y) > -1 + 1e-12:  # on the shorter arc: the angles add up
                assert float(ang[0] + ang[1] - ang[2]) == pytest.approx(0.0, abs=1e-6)
        gap = torch.linalg.vector_norm(res.point_first - res.point_second)
        assert float(gap) == pytest.approx(float(res.distance), abs=ROUNDING)


def test_endpoints_only_is_the_minimum_endpoint_distance() -> None:
    gen = torch.Generator().manual_seed(3)
    a, b, c, d = (torch.randn(50, 7, generator=gen, dtype=DTYPE) for _ in range(4))
    res = min_arc_distance(a, b, c, d, endpoints_only=True)
    a, b, c, d = (_unit(x) for x in (a, b, c, d))
    pairs = [(a, c), (a, d), (b, c), (b, d)]
    expected = torch.stack([torch.linalg.vector_norm(x - y, dim=-1) for x, y in pairs]).min(0)
    torch.testing.assert_close(res.distance, expected.values, atol=ROUNDING, rtol=0)
    chosen = torch.linalg.vector_norm(res.point_first - res.point_second, dim=-1)
    torch.testing.assert_close(chosen, expected.values, atol=ROUNDING, rtol=0)


def test_broadcasting_equals_one_by_one() -> None:
    gen = torch.Generator().manual_seed(4)
    a, b = (torch.randn(5, 1, 6, generator=gen, dtype=DTYPE) for _ in range(2))
    c, d = (torch.randn(1, 7, 6, generator=gen, dtype=DTYPE) for _ in range(2))
    res = min_arc_distance(a, b, c, d)
    assert res.distance.shape == (5, 7) and res.point_first.shape == (5, 7, 6)
    for i in range(5):
        for j in range(7):
            one = min_arc_distance(a[i, 0], b[i, 0], c[0, j], d[0, j])
            torch.testing.assert_close(res.distance[i, j], one.distance)
            torch.testing.assert_close(res.point_second[i, j], one.point_second)


def test_invariant_under_swapping_the_arcs_and_their_directions() -> None:
    _, _, cases = _cases(100, seed=5)
    for a, b, c, d in cases:
        base = min_arc_distance(a, b, c, d).distance
        for args in ((c, d, a, b), (b, a, c, d), (a, b, d, c)):
            other = min_arc_distance(*args).distance
            assert float(other) == pytest.approx(float(base), abs=ROUNDING)


@pytest.mark.parametrize("dim", [3, 5, 16])
def test_gradcheck_generic(dim: int) -> None:
    gen = torch.Generator().manual_seed(dim)
    inputs = [torch.randn(2, dim, generator=gen, dtype=DTYPE, requires_grad=True) for _ in range(4)]
    fast = dim > 8  # a random projection of the Jacobian: the full one is slow in 16-D
    check = torch.autograd.gradcheck
    assert check(lambda *x: tuple(min_arc_distance(*x)), inputs, fast_mode=fast)
    assert check(lambda *x: min_arc_distance(*x, endpoints_only=True), inputs, fast_mode=fast)


def test_coincident_endpoints_are_exactly_zero_apart() -> None:
    """Bitwise-equal endpoints of the two arcs: the endpoint cosine ``(1 + 1 - |a - c|^2) / 2``
    is exactly 1 (a dot product ``<a, c>`` of the normalised vectors is ``1 - 2^-52`` for about a
    third of them, a distance of 1.5e-8 with a gradient ~1e8 times rounding), so the distance is
    ``sqrt(tiny)`` (the floor of ``sqrt(max(2 - 2 cos, tiny))``) and its gradient exactly 0."""
    gen = torch.Generator().manual_seed(7)
    floor = math.sqrt(torch.finfo(DTYPE).tiny)
    for _ in range(50):
        x, y, z = (3 * torch.randn(5, generator=gen, dtype=DTYPE) for _ in range(3))
        for case in ((x, x, x, x), (x, y, x, z), (y, x, z, x), (x, y, z, x)):
            leaves = [v.clone().requires_grad_(True) for v in case]
            distance = min_arc_distance(*leaves).distance
            distance.backward()
            assert distance.item() == floor
            assert not any(leaf.grad.any() for leaf in leaves)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_finite_on_degenerate_cases(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(6)
    x, y, z = (_unit(torch.randn(5, generator=gen, dtype=DTYPE)) for _ in range(3))
    cases = {
        "all identical": (x, x, x, x),
        "identical pair": (x, x, y, z),
        "both pairs identical": (x, x, y, y),
        "antipodal pair": (x, -x, y, z),
        "antipodal both": (x, -x, y, -y),
        "shared endpoint": (x, y, x, z),
        "same arc": (x, y, x, y),
        "reversed arc": (x, y, y, x),
        "crossing at x": (*_case("intersecting", 5, gen)[:2], *_case("intersecting", 5, gen)[2:]),
        "orthogonal planes": tuple(torch.eye(5, dtype=DTYPE)[:4]),
        "coplanar": tuple(_case("same_circle", 5, gen)),
    }
    for name, case in cases.items():
        leaves = [v.to(dtype).clone().requires_grad_(True) for v in case]
        res = min_arc_distance(*leaves)
        assert torch.isfinite(res.distance).all(), name
        (res.distance.sum() + res.point_first.sum() + res.point_second.sum()).backward()
        for leaf in leaves:
            assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), name
