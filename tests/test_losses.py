"""Losses against slow references written with explicit loops: values, gradients and statistics
(float64; cosine and Euclidean; ties, singleton classes, identical embeddings, no positives)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dml.losses import (
    ContrastiveLoss,
    DMLLoss,
    MarginTripletLoss,
    MultiSimilarityLoss,
    NCATripletLoss,
    SCTLoss,
)
from dml.miners import (
    AllPairsMiner,
    AllTripletsMiner,
    BatchHardMiner,
    EasyPositiveHardNegativeMiner,
    FaceNetSemiHardMiner,
    MultiSimilarityMiner,
    RandomNegativeMiner,
    SemiHardNegativeMiner,
    TripletMiner,
)
from tests.test_miners import (
    KINDS,
    make_batch,
    ref_all_triplets,
    ref_facenet,
    ref_ms_pairs,
    ref_per_anchor,
)

Triplet = tuple[int, int, int]


# ----------------------------------------------------------------------------- references
def m(distance: str, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Differentiable measure of one pair (gradient 0 for a Euclidean distance of 0)."""
    u, v = x[i], x[j]
    if distance == "cosine":
        return (u * v).sum() / (u.norm() * v.norm())
    if torch.equal(u, v):
        return (u - v).sum() * 0
    return ((u - v) ** 2).sum().sqrt()


def c(distance: str, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
    return m(distance, x, i, j) if distance == "cosine" else -m(distance, x, i, j)


def reduce(terms: list[torch.Tensor], x: torch.Tensor, reduction: str) -> torch.Tensor:
    if not terms:
        return x.sum() * 0
    total = sum(terms)
    if reduction == "mean":
        return total / len(terms)
    return total / max(sum(1 for t in terms if t.item() != 0), 1)


def ref_margin(x, triplets: list[Triplet], distance: str, margin: float, reduction: str):
    terms = [
        torch.relu(c(distance, x, a, n) - c(distance, x, a, p) + margin) for a, p, n in triplets
    ]
    return reduce(terms, x, reduction)


def valid_cosine(x, triplets: list[Triplet]) -> list[Triplet]:
    """-1 < S < 1 for both similarities, with a slack of 16 float64 epsilons."""
    bound = 1 - 16 * 2.0**-52
    return [
        (a, p, n)
        for a, p, n in triplets
        if abs(m("cosine", x, a, p).item()) < bound and abs(m("cosine", x, a, n).item()) < bound
    ]


def ref_nca(x, triplets: list[Triplet], tau: float):
    terms = []
    for a, p, n in valid_cosine(x, triplets):
        s_ap, s_an = m("cosine", x, a, p), m("cosine", x, a, n)
        terms.append(
            -torch.log(torch.exp(s_ap / tau) / (torch.exp(s_ap / tau) + torch.exp(s_an / tau)))
        )
    return reduce(terms, x, "mean")


def ref_sct(x, triplets: list[Triplet], lam: float, tau: float, threshold: float | None):
    terms = []
    for a, p, n in valid_cosine(x, triplets):
        s_ap, s_an = m("cosine", x, a, p), m("cosine", x, a, n)
        hard = s_an.item() > s_ap.item() or (threshold is not None and s_an.item() > threshold)
        if hard:
            terms.append(lam * s_an)
        else:
            terms.append(torch.log1p(torch.exp((s_an - s_ap) / tau)))
    return reduce(terms, x, "mean")


def ref_contrastive(x, labels, distance, pos_margin, neg_margin, reduction):
    pos, neg = [], []
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i != j and labels[i] == labels[j]:
                pos.append(
                    torch.relu(
                        c(distance, x, i, j) * 0
                        + (
                            m(distance, x, i, j) - pos_margin
                            if distance != "cosine"
                            else pos_margin - m(distance, x, i, j)
                        )
                    )
                )
            elif labels[i] != labels[j]:
                neg.append(
                    torch.relu(
                        neg_margin - m(distance, x, i, j)
                        if distance != "cosine"
                        else m(distance, x, i, j) - neg_margin
                    )
                )
    return reduce(pos, x, reduction) + reduce(neg, x, reduction)


def ref_ms(x, labels, alpha, beta, base, epsilon, miner_distance):
    pos, neg = ref_ms_pairs(x.detach(), labels, miner_distance, epsilon)
    total = x.sum() * 0
    for i in range(len(labels)):
        p_terms = [torch.exp(-alpha * (m("cosine", x, i, j) - base)) for a, j in pos if a == i]
        n_terms = [torch.exp(beta * (m("cosine", x, i, j) - base)) for a, j in neg if a == i]
        total = total + torch.log(1 + sum(p_terms, x.sum() * 0)) / alpha
        total = total + torch.log(1 + sum(n_terms, x.sum() * 0)) / beta
    return total / len(labels)


# ----------------------------------------------------------------------------- cases
Case = tuple[Callable[[], DMLLoss], Callable[[torch.Tensor, list[int]], torch.Tensor]]


def triplet_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for d in ("cosine", "euclidean"):
        for red in ("mean", "mean_nonzero"):
            cases[f"batchhard-{d}-{red}"] = (
                lambda d=d, red=red: MarginTripletLoss(0.2, BatchHardMiner(d), d, red),
                lambda x, lab, d=d, red=red: ref_margin(
                    x, ref_per_anchor(x.detach(), lab, d, "hardest", "hardest"), d, 0.2, red
                ),
            )
        cases[f"facenet-{d}"] = (
            lambda d=d: MarginTripletLoss(0.3, FaceNetSemiHardMiner(0.3, d), d),
            lambda x, lab, d=d: ref_margin(x, ref_facenet(x.detach(), lab, d, 0.3), d, 0.3, "mean"),
        )
        cases[f"all-{d}"] = (
            lambda d=d: MarginTripletLoss(0.5, AllTripletsMiner(d), d, "mean_nonzero"),
            lambda x, lab, d=d: ref_margin(x, ref_all_triplets(lab), d, 0.5, "mean_nonzero"),
        )
        # cosine losses whose miner measures with d
        cases[f"nca-hardest-{d}"] = (
            lambda d=d: NCATripletLoss(0.1, EasyPositiveHardNegativeMiner(d, True)),
            lambda x, lab, d=d: ref_nca(
                x, ref_per_anchor(x.detach(), lab, d, "easiest", "hardest", True), 0.1
            ),
        )
        cases[f"nca-semihard-{d}"] = (
            lambda d=d: NCATripletLoss(0.2, SemiHardNegativeMiner(d, True)),
            lambda x, lab, d=d: ref_nca(
                x, ref_per_anchor(x.detach(), lab, d, "easiest", "semihard", True), 0.2
            ),
        )
        for thr in (0.8, None):
            cases[f"sct-{d}-{thr}"] = (
                lambda d=d, thr=thr: SCTLoss(0.7, 0.1, thr, EasyPositiveHardNegativeMiner(d, True)),
                lambda x, lab, d=d, thr=thr: ref_sct(
                    x, ref_per_anchor(x.detach(), lab, d, "easiest", "hardest", True), 0.7, 0.1, thr
                ),
            )
    return cases


def pair_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for red in ("mean", "mean_nonzero"):
        cases[f"contrastive-euclidean-{red}"] = (
            lambda red=red: ContrastiveLoss(0.2, 1.2, None, "euclidean", red),
            lambda x, lab, red=red: ref_contrastive(x, lab, "euclidean", 0.2, 1.2, red),
        )
        cases[f"contrastive-cosine-{red}"] = (
            lambda red=red: ContrastiveLoss(0.8, 0.1, AllPairsMiner("cosine"), "cosine", red),
            lambda x, lab, red=red: ref_contrastive(x, lab, "cosine", 0.8, 0.1, red),
        )
    for d in ("cosine", "euclidean"):
        cases[f"ms-{d}"] = (
            lambda d=d: MultiSimilarityLoss(2.0, 10.0, 0.5, MultiSimilarityMiner(0.3, d)),
            lambda x, lab, d=d: ref_ms(x, lab, 2.0, 10.0, 0.5, 0.3, d),
        )
    cases["ms-base-above-1"] = (  # λ beyond every cosine: a searched setting (issue 23)
        lambda: MultiSimilarityLoss(2.0, 10.0, 1.3, MultiSimilarityMiner(0.3, "cosine")),
        lambda x, lab: ref_ms(x, lab, 2.0, 10.0, 1.3, 0.3, "cosine"),
    )
    return cases


TRIPLET_CASES, PAIR_CASES = triplet_cases(), pair_cases()
ALL_CASES = {**TRIPLET_CASES, **PAIR_CASES}


def run(loss: DMLLoss, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    value = loss(x, labels)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def ref_run(ref, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    value = ref(x, labels.tolist())
    (grad,) = torch.autograd.grad(value, x, allow_unused=True)
    return value.detach(), torch.zeros_like(x) if grad is None else grad


# Tolerance of the reference comparisons, from the float64 arithmetic (u = 2^-53). These batches
# are small, so the library computes every measure without BLAS (elementwise products, or
# differences for Euclidean; see dml.distances), as the references do: with k <= 6 coordinates
# each measure, and each factor (x_i - x_j) / d of a Euclidean gradient, has a relative error
# <= (k + 3) u ~ 1e-15 on any CPU, BLAS or thread count, and identical embeddings get bitwise
# equal measures (exact ties, broken the same way). The values and gradients are means of at
# most a few hundred terms, each Lipschitz in the measures with a constant <= 10 (1/τ for NCA and
# SCT, β for MS) and of magnitude <= 10, plus a few ulps from exp/log: they differ by at most
# ~10 * 10 * 1e-15 = 1e-13 (observed: 2e-15). TOL leaves a factor 100 above that bound, and is
# 1e5 times below the smallest change a bug makes here (test_reference_comparison_catches_bugs).
TOL = {"atol": 1e-11, "rtol": 1e-11}


def assert_matches(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, ...]) -> None:
    """Value and gradient of the loss equal those of the reference within :data:`TOL`."""
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)


class FixedTriplets(TripletMiner):
    """A miner returning given triplets (to feed a loss a deliberately wrong selection)."""

    def __init__(self, triplets: list[Triplet]) -> None:
        super().__init__("euclidean")
        self.triplets = triplets

    def mine(self, matrix: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a, p, n = zip(*self.triplets, strict=True)
        return torch.tensor(a), torch.tensor(p), torch.tensor(n)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(ALL_CASES))
def test_loss_matches_reference(name: str, kind: str) -> None:
    make_loss, ref = ALL_CASES[name]
    for seed in (0, 1):
        x, labels = make_batch(kind, seed)
        assert_matches(run(make_loss(), x, labels), ref_run(ref, x, labels))


def test_reference_comparison_catches_bugs() -> None:
    """TOL is loose only against rounding: a margin off by 1e-6, or the right value reached
    through the wrong one of two identical positives (ties go to the lowest index), fails."""
    x, labels = make_batch("ties", 0)
    lab = labels.tolist()
    triplets = ref_per_anchor(x, lab, "euclidean", "hardest", "hardest")
    want = ref_run(lambda x, lab: ref_margin(x, triplets, "euclidean", 0.2, "mean"), x, labels)
    assert_matches(run(MarginTripletLoss(0.2, FixedTriplets(triplets)), x, labels), want)
    with pytest.raises(AssertionError, match="Scalars are not close"):
        assert_matches(run(MarginTripletLoss(0.2 + 1e-6, FixedTriplets(triplets)), x, labels), want)
    # anchor 0's hardest positives 1 and 2 are the same embedding: the reference picks 1
    assert triplets[0][:2] == (0, 1) and torch.equal(x[1], x[2])
    wrong = [(0, 2, triplets[0][2]), *triplets[1:]]
    value, grad = run(MarginTripletLoss(0.2, FixedTriplets(wrong)), x, labels)
    torch.testing.assert_close(value, want[0], **TOL)  # same value ...
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        torch.testing.assert_close(grad, want[1], **TOL)  # ... other gradient


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_random_batches_give_nonzero_loss_and_gradient(name: str) -> None:
    """Guards the reference comparison against comparing two zeros."""
    make_loss, _ = ALL_CASES[name]
    x, labels = make_batch("random", 2)
    value, grad = run(make_loss(), x, labels)
    assert value.item() != 0 and grad.abs().sum().item() > 0


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_no_valid_tuple_returns_a_differentiable_zero(name: str) -> None:
    make_loss, _ = ALL_CASES[name]
    x, labels = make_batch("no_positive")
    loss = make_loss()
    if not name.startswith("contrastive"):  # its negative pairs still count
        value = loss(x.clone().requires_grad_(), labels)
        assert value.item() == 0 and value.requires_grad
    out = loss.result(x[:1].clone().requires_grad_(), labels[:1])
    value = out.value
    assert value.item() == 0 and value.requires_grad
    if name.startswith(("batchhard", "facenet", "all", "nca", "sct")):
        assert out.stats["num_triplets"].item() == 0
        assert out.triplet_similarities is not None and out.triplet_similarities[0].numel() == 0


@pytest.mark.parametrize("kind", ["random", "ties", "singleton"])
@pytest.mark.parametrize("name", list(TRIPLET_CASES))
def test_triplet_statistics(name: str, kind: str) -> None:
    make_loss, _ = TRIPLET_CASES[name]
    x, labels = make_batch(kind, 0)
    loss = make_loss()
    out = loss.result(x, labels)
    value = out.value
    lab = labels.tolist()
    s_ap, s_an = out.triplet_similarities
    triplets = list(zip(*(t.tolist() for t in loss.miner(x, labels)), strict=True))
    if name.startswith(("nca", "sct")):
        triplets = valid_cosine(x, triplets)
    assert s_ap.tolist() == pytest.approx([m("cosine", x, a, p).item() for a, p, _ in triplets])
    assert s_an.tolist() == pytest.approx([m("cosine", x, a, n).item() for a, _, n in triplets])
    stats = out.stats
    hard = [m("cosine", x, a, n).item() > m("cosine", x, a, p).item() for a, p, n in triplets]
    assert stats["hard_fraction"].item() == pytest.approx(sum(hard) / len(hard))
    assert stats["mean_s_ap"].item() == pytest.approx(s_ap.mean().item())
    assert stats["mean_s_an"].item() == pytest.approx(s_an.mean().item())
    assert stats["num_triplets"].item() == len(triplets)
    off = [m("cosine", x, i, j).item() for i in range(len(lab)) for j in range(len(lab)) if i != j]
    assert stats["mean_pairwise_sim"].item() == pytest.approx(sum(off) / len(off))
    assert 0 < stats["active_fraction"].item() <= 1
    assert all(t.ndim == 0 and not t.requires_grad for t in stats.values())
    assert torch.isfinite(value)


def test_margin_active_fraction_counts_violations() -> None:
    x, labels = make_batch("random", 0)
    loss = MarginTripletLoss(0.05, BatchHardMiner("cosine"), "cosine")
    out = loss.result(x, labels)
    triplets = ref_per_anchor(x, labels.tolist(), "cosine", "hardest", "hardest")
    active = [c("cosine", x, a, n) - c("cosine", x, a, p) + 0.05 > 0 for a, p, n in triplets]
    assert out.stats["active_fraction"].item() == pytest.approx(sum(active) / len(active))


@pytest.mark.parametrize("name", list(PAIR_CASES))
def test_pair_statistics(name: str) -> None:
    make_loss, _ = PAIR_CASES[name]
    x, labels = make_batch("random", 0)
    loss = make_loss()
    out = loss.result(x, labels)
    a1, p, a2, n = loss.miner(x, labels)
    assert [t.tolist() for t in out.tuples] == [t.tolist() for t in (a1, p, a2, n)]
    s_ap = [m("cosine", x, i, j).item() for i, j in zip(a1.tolist(), p.tolist(), strict=True)]
    s_an = [m("cosine", x, i, j).item() for i, j in zip(a2.tolist(), n.tolist(), strict=True)]
    assert out.stats["mean_s_ap"].item() == pytest.approx(sum(s_ap) / len(s_ap))
    assert out.stats["mean_s_an"].item() == pytest.approx(sum(s_an) / len(s_an))
    assert 0 < out.stats["active_fraction"].item() <= 1
    assert out.triplet_similarities is None and "hard_fraction" not in out.stats


def test_sct_hard_rule_ties_and_threshold() -> None:
    """Hand-made triplets: a tie S_an = S_ap is not hard; S_an > 0.8 is hard only with the
    threshold; S_an > S_ap is hard under both rules."""

    def point(cos: float) -> list[float]:
        return [cos, math.sqrt(1 - cos**2)]

    cases = [  # (S_ap, S_an): anchor e1, positive and negative on the unit circle
        (0.5, 0.5),  # tie
        (0.95, 0.85),  # easy, but above the threshold
        (0.3, 0.6),  # hard
    ]
    for s_ap, s_an in cases:
        x = torch.tensor(
            [[1.0, 0.0], point(s_ap), [s_an, -math.sqrt(1 - s_an**2)]], dtype=torch.float64
        )
        labels = torch.tensor([0, 0, 1])
        for thr in (0.8, None):
            loss = SCTLoss(lam=1.0, temperature=0.1, hard_threshold=thr)
            value = loss(x, labels).item()
            # anchor 0 -> (p=1, n=2); anchor 1 -> (p=0, n=2) with its own similarities
            first_hard = s_an > s_ap or (thr is not None and s_an > thr)
            first = s_an if first_hard else F.softplus(torch.tensor((s_an - s_ap) / 0.1)).item()
            s1n = float(x[1] @ x[2])
            second_hard = s1n > s_ap or (thr is not None and s1n > thr)
            second = s1n if second_hard else F.softplus(torch.tensor((s1n - s_ap) / 0.1)).item()
            assert value == pytest.approx((first + second) / 2), (s_ap, s_an, thr)
    tie = SCTLoss()(
        torch.tensor([[1.0, 0.0], point(0.5), [0.5, -math.sqrt(0.75)]]), torch.tensor([0, 0, 1])
    )
    assert tie.item() > 0  # the tie takes the NCA branch (log 2 for anchor 0), not lam * S_an


def test_sct_and_nca_drop_invalid_and_duplicate_positives() -> None:
    # anchor 0 and 1 are the same image: not positives of each other; 2 is the other positive.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1])
    loss = SCTLoss()
    out = loss.result(x, labels)
    assert out.stats["num_triplets"].item() == 3
    s_ap, _ = out.triplet_similarities
    assert s_ap.tolist() == pytest.approx([0.6, 0.6, 0.6])
    # all-identical embeddings: every similarity is 1 -> nothing valid, a differentiable zero
    ones = torch.ones(4, 3, requires_grad=True)
    assert NCATripletLoss()(ones, labels).item() == 0


def test_losses_are_device_and_dtype_agnostic_in_float32() -> None:
    x, labels = make_batch("random", 0)
    for name, (make_loss, _) in ALL_CASES.items():
        v64 = make_loss()(x, labels)
        v32 = make_loss()(x.float(), labels)
        assert v32.dtype == torch.float32
        assert v32.item() == pytest.approx(v64.item(), rel=1e-4, abs=1e-5), name


def test_half_precision_embeddings_are_computed_in_float32() -> None:
    x, labels = make_batch("random", 0)
    for name, (make_loss, _) in ALL_CASES.items():
        want = make_loss()(x.float(), labels)
        half = x.bfloat16().requires_grad_()
        got = make_loss()(half, labels)
        got.backward()
        assert got.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
        assert got.item() == pytest.approx(want.item(), rel=0.1, abs=0.02), name


def test_random_negative_miner_feeds_any_triplet_loss() -> None:
    x, labels = make_batch("singleton", 0)
    for loss_cls in (MarginTripletLoss, NCATripletLoss, SCTLoss):
        torch.manual_seed(3)
        triplets = list(
            zip(*(t.tolist() for t in RandomNegativeMiner("cosine")(x, labels)), strict=True)
        )
        torch.manual_seed(3)
        if loss_cls is MarginTripletLoss:
            got = loss_cls(0.2, RandomNegativeMiner("cosine"), "cosine")(x, labels)
            want = ref_margin(x, triplets, "cosine", 0.2, "mean")
        elif loss_cls is NCATripletLoss:
            got = loss_cls(0.1, RandomNegativeMiner("cosine"))(x, labels)
            want = ref_nca(x, triplets, 0.1)
        else:
            got = loss_cls(1.0, 0.1, 0.8, RandomNegativeMiner("cosine"))(x, labels)
            want = ref_sct(x, triplets, 1.0, 0.1, 0.8)
        torch.testing.assert_close(got, want)


# -- one path from embeddings to tuples -----------------------------------------------------------
LOSS_CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "loss")
                      .glob("*.yaml") if p.stem != "pml")


def counting_pairwise(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every B×B matrix a distance builds (class name per call)."""
    from dml import distances

    calls: list[str] = []
    for cls in (distances.CosineSimilarity, distances.EuclideanDistance):
        original = cls.pairwise

        def pairwise(self, *args, _original=original, **kwargs):
            calls.append(type(self).__name__)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "pairwise", pairwise)
    return calls


@pytest.mark.parametrize("name", LOSS_CONFIGS)
def test_a_loss_builds_its_matrix_once_when_its_miner_shares_the_measure(name, monkeypatch):
    from tests.test_losses_configs import load

    loss = load(name)
    torch.manual_seed(0)
    x = F.normalize(torch.randn(32, 16), dim=1).requires_grad_()
    labels = torch.arange(8).repeat_interleave(4)
    calls = counting_pairwise(monkeypatch)
    loss.result(x, labels).value.backward()
    assert len(calls) == 1, calls


def test_a_miner_in_another_measure_mines_on_its_own_matrix(monkeypatch):
    x, labels = make_batch("random", 0)
    loss = MarginTripletLoss(0.2, BatchHardMiner("cosine"), "euclidean")
    calls = counting_pairwise(monkeypatch)
    out = loss.result(x, labels)
    assert calls == ["EuclideanDistance", "CosineSimilarity"]
    a, p, n = out.tuples
    want = ref_per_anchor(x, labels.tolist(), "cosine", "hardest", "hardest")
    assert list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == want


@pytest.mark.parametrize("name", list(TRIPLET_CASES) + list(PAIR_CASES))
def test_tuples_mined_elsewhere_plug_in_through_indices(name):
    cases = {**TRIPLET_CASES, **PAIR_CASES}
    make_loss, _ = cases[name]
    x, labels = make_batch("random", 0)
    loss = make_loss()
    mined = loss.result(x, labels)
    given = loss.result(x, labels, indices=mined.tuples)  # the same tuples, given from outside
    assert given.value.item() == pytest.approx(mined.value.item(), rel=1e-12)
    # a subset of them (e.g. from a memory or another rank) replaces the miner: the same value
    # as a miner that returns that subset, and not the value of all the mined tuples
    half = tuple(t[: max(1, len(t) // 2)] for t in mined.tuples)

    class Fixed:
        distance = loss.miner.distance

        def mine(self, matrix, labels):
            return half

        __call__ = mine

    plugged = loss.result(x, labels, indices=half)
    loss.miner = Fixed()
    assert plugged.value.item() == pytest.approx(loss.result(x, labels).value.item(), rel=1e-12)
    assert plugged.value.item() != pytest.approx(mined.value.item(), rel=1e-6)
