"""LoOp losses against slow references written with explicit loops over pairs of pairs (float64):
values, gradients and statistics, incl. single-sample classes and all-identical embeddings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from dml.losses.loop import (
    LoOpContrastiveLoss,
    LoOpLiftedStructureLoss,
    LoOpLoss,
    LoOpMultiSimilarityLoss,
    LoOpTripletLoss,
    loop_cosines,
    min_arc_distance,
    pairs_of_pairs,
)

DTYPE = torch.float64
CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"
Pair = tuple[int, int]


# ----------------------------------------------------------------------------- references
def value(t: Tensor) -> float:
    return t.detach().item()


def ref_pairs(labels: list[int]) -> list[Pair]:
    n = len(labels)
    return [(i, j) for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]


def ref_negatives(labels: list[int], pairs: list[Pair], k: Pair) -> list[Pair]:
    return [pair for pair in pairs if labels[pair[0]] != labels[k[0]]]


def dist(x: Tensor, i: int, j: int) -> Tensor:
    """|x_i - x_j| of the normalised rows (gradient 0 when they are equal)."""
    diff = x[i] - x[j]
    return diff.sum() * 0 if not diff.any() else diff.square().sum().sqrt()


def loop_dist(x: Tensor, k: Pair, m: Pair, endpoints_only: bool = False) -> Tensor:
    args = (x[k[0]], x[k[1]], x[m[0]], x[m[1]])
    return min_arc_distance(*args, endpoints_only=endpoints_only).distance


def ref_triplet(x: Tensor, labels: list[int], margin: float, reduction: str, ends: bool):
    pairs = ref_pairs(labels)

    def hardest(i: int) -> Tensor:
        same = [p for p in range(len(labels)) if p != i and labels[p] == labels[i]]
        return max((dist(x, i, p) for p in same), key=value)

    terms, s_ap, s_an = [], [], []
    for k in pairs:
        negatives = ref_negatives(labels, pairs, k)
        if not negatives:
            continue
        d_ap = max((hardest(k[0]), hardest(k[1])), key=value)
        d_an = min((loop_dist(x, k, m, ends) for m in negatives), key=value)
        terms.append(torch.relu(d_ap - d_an + margin))
        s_ap.append(1 - d_ap.detach() ** 2 / 2)
        s_an.append(1 - d_an.detach() ** 2 / 2)
    return reduce(terms, x, reduction), s_ap, s_an


def ref_contrastive(x: Tensor, labels: list[int], pos_margin: float, neg_margin: float):
    pairs = ref_pairs(labels)
    pos = [torch.relu(dist(x, *k) - pos_margin) for k in pairs]
    neg = [
        torch.relu(neg_margin - loop_dist(x, pairs[a], pairs[b]))
        for a in range(len(pairs))
        for b in range(a + 1, len(pairs))
        if labels[pairs[a][0]] != labels[pairs[b][0]]
    ]
    if not neg:
        return x.sum() * 0
    return reduce(pos, x, "mean_nonzero") + reduce(neg, x, "mean_nonzero")


def ref_multisimilarity(x: Tensor, labels: list[int], alpha, beta, base, eps):
    pairs = ref_pairs(labels)
    terms = []
    for k in pairs:
        negatives = ref_negatives(labels, pairs, k)
        if not negatives:
            continue
        s_pos = 1 - dist(x, *k) ** 2 / 2
        s_neg = [1 - loop_dist(x, k, m) ** 2 / 2 for m in negatives]
        term = x.sum() * 0
        if value(s_pos) - eps < max(value(s) for s in s_neg):
            term = term + torch.log(1 + torch.exp(-alpha * (s_pos - base))) / alpha
        kept = [s for s in s_neg if value(s) + eps > value(s_pos)]
        if kept:
            term = term + torch.log(1 + sum(torch.exp(beta * (s - base)) for s in kept)) / beta
        terms.append(term)
    return reduce(terms, x, "mean")


def ref_lifted(x: Tensor, labels: list[int], margin: float):
    pairs = ref_pairs(labels)
    terms = []
    for k in pairs:
        negatives = ref_negatives(labels, pairs, k)
        if not negatives:
            continue
        total = sum(torch.exp(margin - loop_dist(x, k, m)) for m in negatives)
        terms.append(torch.relu(dist(x, *k) + torch.log(total)))
    return reduce(terms, x, "mean")


def reduce(terms: list[Tensor], x: Tensor, reduction: str) -> Tensor:
    if not terms:
        return x.sum() * 0
    total = sum(terms)
    if reduction == "mean":
        return total / len(terms)
    return total / max(sum(1 for t in terms if value(t) != 0), 1)


# ----------------------------------------------------------------------------- batches
def batch(kind: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = {
        "pk": [0, 0, 1, 1, 2, 2, 3, 3],
        "singletons": [0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4],
        "identical": [0, 0, 1, 1, 1, 2],
        "duplicate_pair": [0, 0, 0, 1, 1, 2, 2],
        "one_class_with_pairs": [0, 0, 0, 1, 2],
        "no_pairs": [0, 1, 2, 3],
    }[kind]
    x = torch.randn(len(labels), 5, generator=gen, dtype=DTYPE)
    if kind == "identical":
        x = x[:1].expand_as(x).clone()
    if kind == "duplicate_pair":
        x[1] = x[0]
    return 3 * x, torch.tensor(labels)  # not unit: the losses normalise


KINDS = ["pk", "singletons", "identical", "duplicate_pair", "one_class_with_pairs", "no_pairs"]

CASES: dict[str, tuple[Callable[[], LoOpLoss], Callable[..., Tensor]]] = {
    "triplet": (
        lambda: LoOpTripletLoss(margin=0.3),
        lambda x, y: ref_triplet(x, y, 0.3, "mean", False)[0],
    ),
    "triplet_nonzero_small_margin": (
        lambda: LoOpTripletLoss(margin=0.05, reduction="mean_nonzero"),
        lambda x, y: ref_triplet(x, y, 0.05, "mean_nonzero", False)[0],
    ),
    "triplet_endpoints_only": (
        lambda: LoOpTripletLoss(margin=0.3, endpoints_only=True),
        lambda x, y: ref_triplet(x, y, 0.3, "mean", True)[0],
    ),
    "contrastive": (
        lambda: LoOpContrastiveLoss(pos_margin=0.2, neg_margin=1.2),
        lambda x, y: ref_contrastive(x, y, 0.2, 1.2),
    ),
    "multisimilarity": (
        lambda: LoOpMultiSimilarityLoss(alpha=2.0, beta=10.0, base=0.3, epsilon=0.3),
        lambda x, y: ref_multisimilarity(x, y, 2.0, 10.0, 0.3, 0.3),
    ),
    "multisimilarity_base_above_1": (
        lambda: LoOpMultiSimilarityLoss(alpha=2.0, beta=10.0, base=1.3, epsilon=0.3),
        lambda x, y: ref_multisimilarity(x, y, 2.0, 10.0, 1.3, 0.3),
    ),
    "lifted": (
        lambda: LoOpLiftedStructureLoss(margin=0.5),
        lambda x, y: ref_lifted(x, y, 0.5),
    ),
}


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(CASES))
def test_loss_matches_loop_reference(name: str, kind: str) -> None:
    make, reference = CASES[name]
    x, labels = batch(kind)
    ours_x = x.clone().requires_grad_(True)
    ref_x = x.clone().requires_grad_(True)
    ours = make()(ours_x, labels)
    ref = reference(F.normalize(ref_x, dim=1), labels.tolist())
    torch.testing.assert_close(ours, ref, atol=1e-7, rtol=1e-7)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_x.grad, ref_x.grad, atol=1e-6, rtol=1e-6)
    assert torch.isfinite(ours_x.grad).all()
    if kind in ("one_class_with_pairs", "no_pairs"):
        assert value(ours) == 0 and not ours_x.grad.any()
    if kind == "identical":
        assert_exact_zero_gradient(ours_x.grad)


def assert_exact_zero_gradient(grad: Tensor) -> None:
    """For a batch of bitwise-identical embeddings, exactly 0 on any CPU, BLAS and thread
    count, not "up to rounding": the rows normalise to bitwise-identical unit vectors (the same
    elementwise operations on the same values) whose squared distances are summed from their
    differences (EuclideanDistance: without BLAS for small problems, recomputed from
    differences where its Gram formula cancels), hence exactly 0. So every cosine is exactly
    ``(1 + 1 - 0) / 2 = 1``, every arc is degenerate (no tangent terms) and every distance
    ``sqrt(max(2 - 2 cos, tiny))`` or ``sqrt(max(d^2, tiny))`` has gradient 0 by convention.
    (A BLAS Gram matrix ``x x^T`` rounds some of those cosines to ``1 - 2^-52``: a distance
    of 1.5e-8 whose gradient, 1e8 times rounding, was 2.3e-10 with MKL.)"""
    assert torch.isfinite(grad).all() and not grad.any(), float(grad.abs().max())


@pytest.mark.parametrize("name", list(CASES))
def test_identical_embeddings_in_a_large_batch(name: str) -> None:
    """As the ``identical`` batch, at a size where the squared distances use the Gram formula
    (a BLAS product: 32 x 32 x 128 > 2^16 products) and the cancelled entries are recomputed."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(1, 128, generator=gen, dtype=DTYPE).expand(32, 128).clone()
    x.requires_grad_(True)
    CASES[name][0]()(x, torch.arange(8).repeat_interleave(4)).backward()
    assert_exact_zero_gradient(x.grad)


def test_the_references_see_the_arcs() -> None:
    """The batches are such that the arc search changes the loss: a test comparing the loss with
    a reference that used plain endpoint distances would fail."""
    x, labels = batch("singletons")
    arc = LoOpTripletLoss(margin=0.3)(x, labels)
    ends = LoOpTripletLoss(margin=0.3, endpoints_only=True)(x, labels)
    assert float(arc) > float(ends) + 1e-3


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck(name: str) -> None:
    x, labels = batch("pk", seed=1)
    loss = CASES[name][0]()
    x = x[:6].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels[:6]), (x,), fast_mode=True)


def test_loop_cosines_match_min_arc_distance() -> None:
    x, labels = batch("singletons", seed=2)
    unit = F.normalize(x, dim=1)
    pairs = pairs_of_pairs(labels)
    listed = ref_pairs(labels.tolist())
    assert list(zip(pairs.first.tolist(), pairs.second.tolist(), strict=True)) == listed
    for ends in (False, True):
        cos = loop_cosines(unit @ unit.T, pairs, endpoints_only=ends)
        assert torch.equal(cos, cos.T)
        for a, k in enumerate(listed):
            for b, m in enumerate(listed):
                if labels[k[0]] == labels[m[0]]:
                    assert cos[a, b] == 0
                    continue
                expected = loop_dist(unit, k, m, ends)
                got = (2 - 2 * cos[a, b]).clamp_min(0).sqrt()
                assert float(got) == pytest.approx(float(expected), abs=3e-8)


def test_endpoints_only_triplet_is_batch_hard_over_paired_samples() -> None:
    """Without the arc search the LoOp negative of pair (i, j) is the closest other-class sample
    to i or j, so with every sample in a pair the ablation is a per-pair batch-hard triplet."""
    x, labels = batch("pk", seed=3)
    unit = F.normalize(x, dim=1)
    d = torch.cdist(unit, unit)
    same = labels[:, None] == labels[None, :]
    hp = d.masked_fill(~same, -1).max(1).values
    hn = d.masked_fill(same, 9).min(1).values
    pairs = pairs_of_pairs(labels)
    i, j = pairs.first, pairs.second
    expected = torch.relu(torch.maximum(hp[i], hp[j]) - torch.minimum(hn[i], hn[j]) + 0.2).mean()
    got = LoOpTripletLoss(margin=0.2, endpoints_only=True)(x, labels)
    torch.testing.assert_close(got, expected)


def test_triplet_statistics() -> None:
    x, labels = batch("singletons", seed=4)
    loss = LoOpTripletLoss(margin=0.3)
    out = loss.result(x, labels)
    value = out.value
    _, s_ap, s_an = ref_triplet(F.normalize(x, dim=1), labels.tolist(), 0.3, "mean", False)
    got_ap, got_an = out.triplet_similarities
    torch.testing.assert_close(got_ap, torch.stack(s_ap).float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(got_an, torch.stack(s_an).float(), atol=1e-6, rtol=0)
    stats = out.stats
    assert float(stats["num_triplets"]) == len(s_ap) == 3 + 1 + 6
    assert float(stats["hard_fraction"]) == pytest.approx(
        float((torch.stack(s_an) > torch.stack(s_ap)).double().mean())
    )
    assert float(stats["active_fraction"]) > 0 and float(value) > 0
    assert all(v.grad_fn is None and v.dim() == 0 for v in stats.values())


def test_pair_statistics() -> None:
    x, labels = batch("singletons", seed=5)
    unit = F.normalize(x, dim=1)
    pairs = ref_pairs(labels.tolist())
    s_ap = [float(unit[i] @ unit[j]) for i, j in pairs]
    s_an = [
        1 - float(loop_dist(unit, pairs[a], pairs[b])) ** 2 / 2
        for a in range(len(pairs))
        for b in range(a + 1, len(pairs))
        if labels[pairs[a][0]] != labels[pairs[b][0]]
    ]
    loss = LoOpContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
    out = loss.result(x, labels)
    assert out.triplet_similarities is None
    assert float(out.stats["mean_s_ap"]) == pytest.approx(sum(s_ap) / len(s_ap), abs=1e-6)
    assert float(out.stats["mean_s_an"]) == pytest.approx(sum(s_an) / len(s_an), abs=1e-6)
    # contrastive: every positive pair with d > 0 is active, negatives when D* < 1.
    distances = [(2 - 2 * s) ** 0.5 for s in s_an]
    active = len(s_ap) + sum(d < 1.0 for d in distances)
    expected = active / (len(s_ap) + len(s_an))
    assert float(out.stats["active_fraction"]) == pytest.approx(expected)


def test_batch_without_tuples_records_nan_statistics() -> None:
    x, labels = batch("one_class_with_pairs")
    for make, _ in CASES.values():
        out = make().result(x, labels)
        assert torch.isnan(out.stats["active_fraction"])
        assert torch.isnan(out.stats["mean_s_an"])


@pytest.mark.parametrize("name", ["loop_triplet", "loop_contrastive", "loop_multisimilarity",
                                  "loop_lifted"])  # fmt: skip
def test_configs_instantiate_with_documented_defaults(name: str) -> None:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    loss = instantiate(cfg)
    assert isinstance(loss, LoOpLoss) and loss.endpoints_only is False
    ablation = instantiate(cfg, endpoints_only=True)
    assert ablation.endpoints_only is True
    x, labels = batch("pk", seed=6)
    assert torch.isfinite(loss(x.float(), labels))


@pytest.mark.parametrize("scale", [1e-2, 1e-4, 1e-6])
@pytest.mark.parametrize("name", list(CASES))
def test_float32_embeddings_agree_with_float64(name: str, scale: float) -> None:
    """Float32 training keeps float64 accuracy where float32 would lose it: near-identical
    positive pairs (distances ~ ``scale``) have arc frames and chord lengths that
    ``sqrt(2 - 2 cos)`` cannot resolve in float32 (below 3e-4)."""
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(8, 16, generator=gen)
    x = torch.cat([base, base + scale * torch.randn(8, 16, generator=gen)])
    labels = torch.arange(8).repeat(2)
    values, grads = [], []
    for dtype in (torch.float32, DTYPE):
        leaf = x.to(dtype, copy=True).requires_grad_(True)
        value = CASES[name][0]()(leaf, labels)
        value.backward()
        assert value.dtype == dtype and leaf.grad is not None
        values.append(value.double())
        grads.append(leaf.grad.double())
    torch.testing.assert_close(values[0], values[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


def test_pairs_of_pairs_depend_only_on_which_labels_are_equal() -> None:
    grouped = pairs_of_pairs(torch.tensor([5, 5, 2, 2, 9]))
    assert pairs_of_pairs(torch.tensor([1, 1, 7, 7, 3])) is grouped  # cached: same pattern
    interleaved = pairs_of_pairs(torch.tensor([5, 2, 5, 2, 9]))
    assert interleaved.first.tolist() == [0, 1] and interleaved.second.tolist() == [2, 3]
    assert grouped.first.tolist() == [0, 2] and grouped.second.tolist() == [1, 3]
    assert grouped.row.tolist() == [0] and grouped.col.tolist() == [1]
