"""Distances against explicit per-pair loops (values and gradients, float64)."""

import math

import pytest
import torch

from dml.distances import CosineSimilarity, EuclideanDistance, get_distance


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
    with pytest.raises(ValueError, match="unknown distance"):
        get_distance("manhattan")


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
