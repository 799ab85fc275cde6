"""Distances against explicit per-pair loops (values and gradients, float64)."""

import math

import pytest
import torch
import torch.nn.functional as F

from dml.distances import CosineSimilarity, EuclideanDistance, get_distance
from dml.errors import ConfigError


def ref_cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum() / (u.norm() * v.norm())


def ref_euclidean(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ((u - v) ** 2).sum().sqrt() if not torch.equal(u, v) else (u - v).sum() * 0


REFERENCES = {
    "cosine": ref_cosine,
    "euclidean": ref_euclidean,
    "squared_euclidean": lambda u, v: ((u - v) ** 2).sum(),
}


def ref_matrix(name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    f = REFERENCES[name]
    return torch.stack([torch.stack([f(x[i], y[j]) for j in range(len(y))]) for i in range(len(x))])


def inputs(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    if kind == "ties":
        x[3] = x[1]
        x[5] = 2.5 * x[0]  # same direction, other norm
    elif kind == "identical":
        x = torch.ones(7, 4, dtype=torch.float64)
    return x


@pytest.mark.parametrize("name", list(REFERENCES))
@pytest.mark.parametrize("kind", ["random", "ties", "identical"])
def test_pairwise_matches_loops(name: str, kind: str) -> None:
    x = inputs(kind).requires_grad_()
    weights = torch.randn(7, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = get_distance(name).pairwise(x)
    (grad,) = torch.autograd.grad((got * weights).sum(), x)

    x_ref = x.detach().clone().requires_grad_()
    want = ref_matrix(name, x_ref, x_ref)
    (grad_ref,) = torch.autograd.grad((want * weights).sum(), x_ref)
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-7)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, grad_ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_cross_and_paired(name: str) -> None:
    x, y = inputs("random"), inputs("random").flip(0) + 0.3
    d = get_distance(name)
    torch.testing.assert_close(d.pairwise(x, y), ref_matrix(name, x, y))
    torch.testing.assert_close(d.paired(x, y), torch.diagonal(ref_matrix(name, x, y)))


def test_direction_and_closeness() -> None:
    cos, euc = CosineSimilarity(), EuclideanDistance()
    assert cos.higher_is_closer and not euc.higher_is_closer
    m = torch.tensor([0.2, 0.7])
    assert torch.equal(cos.closeness(m), m)
    assert torch.equal(euc.closeness(m), -m)


def test_near_duplicate_agrees_on_the_unit_sphere() -> None:
    angles = torch.tensor([0.0, 0.012, 0.016, 0.5], dtype=torch.float64)  # cos 0.9999 ~ 0.01414
    x = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    for d in (CosineSimilarity(), EuclideanDistance(), EuclideanDistance(squared=True)):
        row = d.pairwise(x)[0]
        assert d.near_duplicate(row).tolist() == [True, True, False, False], d
    assert math.isclose(math.cos(0.01414), 0.9999, abs_tol=1e-6)


def test_get_distance_names() -> None:
    assert get_distance("cosine") == CosineSimilarity()
    assert get_distance("squared_euclidean") == EuclideanDistance(squared=True)
    assert get_distance(EuclideanDistance()) == EuclideanDistance()
    with pytest.raises(ConfigError, match=r"^loss\.distance must be one of \['cosine', "):
        get_distance("manhattan", "loss.distance")


@pytest.mark.parametrize("name", list(REFERENCES))
@pytest.mark.parametrize("count", [3, 40])  # row-wise path (few pairs) and matrix path
def test_select_pairs_values_and_gradients(name: str, count: int) -> None:
    g = torch.Generator().manual_seed(2)
    x = inputs("ties").requires_grad_()
    rows, cols = (
        torch.randint(0, 7, (count,), generator=g),
        torch.randint(0, 7, (count,), generator=g),
    )
    rows[0], cols[0] = 1, 3  # an identical pair
    (got,) = get_distance(name).select(x, [(rows, cols)])
    (grad,) = torch.autograd.grad(got.sum(), x)
    x_ref = x.detach().clone().requires_grad_()
    f = REFERENCES[name]
    want = torch.stack([f(x_ref[r], x_ref[c]) for r, c in zip(rows, cols, strict=True)])
    (grad_ref,) = torch.autograd.grad(want.sum(), x_ref)
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(grad, grad_ref, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------- the Gram path of large matrices
def gram_batch(seed: int = 3, rows: int = 40, dim: int = 64) -> torch.Tensor:
    """Float64 rows past the elementwise size (40 * 40 * 64 > 2^16: the Gram formula), with
    every kind of cancellation: exact duplicates, a pair 1e-7 apart, pairs at 1/32 and 1/4 of
    the spread (either side of the refinement threshold, 1/16), all offset by a common vector
    of norm ~8000 (a collapsed batch, whose uncentred Gram formula cancels everywhere)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    step = F.normalize(torch.randn(3, dim, generator=g, dtype=torch.float64), dim=1)
    x[1] = x[0]
    x[3] = x[2] + 1e-7 * step[0]
    x[5] = x[4] + 8 / 32 * step[1]  # |x_i| ~ sqrt(64) = 8
    x[7] = x[6] + 8 / 4 * step[2]
    return x + 1e3 * torch.randn(dim, generator=g, dtype=torch.float64)


def count_cdist(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of torch.cdist (the whole matrix from differences)."""
    calls = [0]
    cdist = torch.cdist

    def counted(*args, **kwargs):
        calls[0] += 1
        return cdist(*args, **kwargs)

    monkeypatch.setattr(torch, "cdist", counted)
    return calls


def gram_tolerances(name: str, x: torch.Tensor, weights: torch.Tensor) -> tuple[float, float]:
    """``(rtol of the values, atol of the gradient of sum(weights * matrix))`` on the Gram path,
    worst-case bounds of the float64 arithmetic (u = eps / 2, k = dim, B = rows, T = 2^-8):

    * values: unrefined entries have d^2 >= T S (S = |x~_i|^2 + |x~_j|^2) and the Gram formula
      errs by <= 2 gamma_{k+2} S, so d^2 has a relative error <= 2 (k+2) u / T, plus 2 u
      sqrt(2 / T) < 48 u from centring; refined entries <= (k+3) u. Hence 2^8 (k+3) eps for d^2
      and half of it for d;
    * gradient: backpropagation through the formula forms sum_j g_ij (x~_i - x~_j) as two sums of
      B terms, each with error <= gamma_{B+2} sum_j |g_ij| |x~|; g_ij = 2 w_ij for d^2 (|x~| <= R)
      and w_ij / d_ij for d, with |x~| / d_ij <= 1 / sqrt(T) = 16. Rows and columns both count.
    """
    rows, dim = x.shape
    eps = torch.finfo(x.dtype).eps
    w = weights.abs().sum(dim=1).max() + weights.abs().sum(dim=0).max()
    if name == "squared_euclidean":
        radius = (x - x.mean(dim=0)).norm(dim=1).max()
        return 2**8 * (dim + 3) * eps, float(2 * (rows + 2) * eps * w * radius)
    return 2**7 * (dim + 3) * eps, float(16 * (rows + 2) * eps * w)


@pytest.mark.parametrize("name", ["euclidean", "squared_euclidean"])
@pytest.mark.parametrize("cross", [False, True])
def test_gram_path_is_accurate_near_zero(
    name: str, cross: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_cdist(monkeypatch)
    x = gram_batch().requires_grad_()
    y = x.flip(0) if cross else None
    weights = torch.randn(40, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = get_distance(name).pairwise(x, y)
    (grad,) = torch.autograd.grad((got * weights).sum(), x)
    assert calls[0] == 0  # the Gram formula, refined: not the whole matrix from differences

    x_ref = x.detach().clone().requires_grad_()
    want = ref_matrix(name, x_ref, x_ref.flip(0) if cross else x_ref)
    (grad_ref,) = torch.autograd.grad((want * weights).sum(), x_ref)
    rtol, grad_atol = gram_tolerances(name, x.detach(), weights)
    torch.testing.assert_close(got, want, rtol=rtol, atol=0)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=grad_atol)
    # the tolerance does not hide the cancellation: the plain formula is far off on this batch
    xd = x.detach()
    x2 = (xd * xd).sum(dim=1)
    plain = (x2[:, None] + x2[None, :] - 2 * xd @ xd.T).clamp_min(0)
    plain_want = ref_matrix("squared_euclidean", xd, xd)
    off = ~torch.eye(40, dtype=torch.bool)
    assert ((plain - plain_want).abs() / plain_want.clamp_min(1e-300))[off].max() > 1e3 * rtol


def test_many_near_duplicates_use_differences_for_the_whole_matrix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two points repeated 20 times (with 1e-9 noise): 760 entries to refine, more than 16
    matrices' worth of differences, so the whole matrix comes from torch.cdist."""
    calls = count_cdist(monkeypatch)
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(2, 64, generator=g, dtype=torch.float64)
    noise = torch.randn(40, 64, generator=g, dtype=torch.float64)
    x = centres.repeat_interleave(20, dim=0) + 1e-9 * noise
    x[1] = x[0]
    x.requires_grad_()
    got = EuclideanDistance().pairwise(x)
    assert calls[0] == 1
    (grad,) = torch.autograd.grad(got.sum(), x)
    x_ref = x.detach().clone().requires_grad_()
    want = ref_matrix("euclidean", x_ref, x_ref)
    (grad_ref,) = torch.autograd.grad(want.sum(), x_ref)
    eps = torch.finfo(torch.float64).eps
    torch.testing.assert_close(got, want, rtol=(64 + 3) * eps, atol=0)
    assert got[0, 1] == 0 and torch.isfinite(grad).all()
    # differences: each d_ij and (x_i - x_j) / d_ij to (k + 3) u; 2 x 40 such terms per row
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=2 * 40 * (64 + 3) * eps)
