"""Embedding expansion against a slow reference: the synthetic points built with explicit loops,
appended to the batch, and the explicit-loop loss references of ``test_losses.py`` run on that
batch (float64, values and gradients); one-sample classes, zero-length segments, the midpoint by
hand, the statistics and the one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dml.errors import ConfigError
from dml.losses import (
    ContrastiveLoss,
    LoOpTripletLoss,
    MarginTripletLoss,
    MultiSimilarityLoss,
    SCTLoss,
)
from dml.losses.pml import PMLLoss
from dml.losses.wrappers.embedding_expansion import EmbeddingExpansion
from tests.test_losses import ALL_CASES, TOL, ref_run

CONF = Path(__file__).resolve().parents[1] / "conf" / "synthesis" / "embedding_expansion.yaml"

# two triplet losses (batch-hard margin in Euclidean, SCT with EPHN) and two pair losses
CASES = ["batchhard-euclidean-mean", "sct-cosine-0.8", "contrastive-euclidean-mean_nonzero",
         "ms-cosine"]


# ----------------------------------------------------------------------------- reference
def ref_pairs(labels: list[int], rule: str) -> list[tuple[int, int]]:
    """Expanded pairs (i, j), i < j, sorted: all same-class pairs, or each class's samples in
    batch order paired 1st-2nd, 3rd-4th, ..."""
    if rule == "all":
        return [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels))
                if labels[i] == labels[j]]
    pairs = []
    for label in set(labels):
        members = [i for i, y in enumerate(labels) if y == label]
        pairs += [(members[q], members[q + 1]) for q in range(0, len(members) - 1, 2)]
    return sorted(pairs)


def ref_expand(x: torch.Tensor, labels: list[int], k: int, rule: str = "disjoint",
               normalize: bool = True) -> tuple[torch.Tensor, list[int]]:
    """The real rows, then for each pair (i, j) and m = 1..k the point
    x_i + m/(k+1) (x_j - x_i) divided by its norm, labelled y_i."""
    rows, out_labels = [x[i] for i in range(len(labels))], list(labels)
    for i, j in ref_pairs(labels, rule):
        for m in range(1, k + 1):
            point = x[i] + m / (k + 1) * (x[j] - x[i])
            rows.append(point / point.norm() if normalize else point)
            out_labels.append(labels[i])
    return torch.stack(rows), out_labels


LABELS = [0, 0, 0, 1, 1, 1, 1, 2, 3, 3]  # class 0 odd, class 2 a single sample


def batch(kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit float64 embeddings (as the model's head gives): random; a zero-length segment (samples
    0 and 1 identical, a basis vector so normalising it is exact and the ties are exact); all
    identical."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(len(LABELS), 5, generator=g, dtype=torch.float64), dim=1)
    if kind == "zero_segment":
        x[0] = x[1] = torch.eye(5, dtype=torch.float64)[0]
    elif kind == "identical":
        x = torch.full((len(LABELS), 4), 0.5, dtype=torch.float64)
    return x, torch.tensor(LABELS)


# ----------------------------------------------------------------------------- tests
# With an odd number of points the midpoint of a pair is exactly as close to its two neighbours
# (or ends): a tie in exact arithmetic that rounding breaks either way, in the library and in the
# reference alike, with different gradients. The per-anchor triplet miners (closest / farthest
# positive) are compared with even numbers of points; the pair losses (all pairs, or thresholds)
# with odd ones too.
SETTINGS = [(name, points, rule)
            for name in CASES
            for points, rule in [(2, "disjoint"), (4, "disjoint"), (2, "all")]
            + ([(1, "disjoint"), (3, "all")] if name in CASES[2:] else [])]


@pytest.mark.parametrize("kind", ["random", "zero_segment", "identical"])
@pytest.mark.parametrize(("name", "points", "rule"), SETTINGS)
def test_matches_the_reference(name, points, rule, kind):
    make_loss, ref = ALL_CASES[name]
    x, labels = batch(kind)
    wrapper = EmbeddingExpansion(make_loss(), points, rule)
    got_x, want_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = wrapper(got_x, labels)
    (got_grad,) = torch.autograd.grad(got, got_x)
    want, want_grad = ref_run(lambda z, lab: ref(*ref_expand(z, lab, points, rule)), want_x,
                              labels)
    torch.testing.assert_close(got.detach(), want, **TOL)
    torch.testing.assert_close(got_grad, want_grad, **TOL)
    assert kind == "identical" or got_grad.abs().sum() > 0


def test_midpoint_and_thirds_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    labels = torch.tensor([4, 4, 7])
    h = 1 / math.sqrt(2)
    expanded, expanded_labels = EmbeddingExpansion(MarginTripletLoss(), 1).expand(x, labels)
    midpoint = torch.tensor([[h, h]], dtype=torch.float64)
    torch.testing.assert_close(expanded, torch.cat((x, midpoint)), rtol=0, atol=1e-15)
    assert expanded_labels.tolist() == [4, 4, 7, 4]
    raw, _ = EmbeddingExpansion(MarginTripletLoss(), 1, normalize=False).expand(x, labels)
    assert raw[3].tolist() == [0.5, 0.5]
    thirds, _ = EmbeddingExpansion(MarginTripletLoss(), 2).expand(x, labels)
    want = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64) / math.sqrt(5)
    torch.testing.assert_close(thirds[3:], want, rtol=0, atol=1e-15)


def test_gradient_of_the_midpoint_reaches_both_ends():
    # one midpoint s = (x0 + x1)/|x0 + x1|; a loss reading s only sends its gradient to x0 and x1
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    expanded, _ = EmbeddingExpansion(MarginTripletLoss(), 1).expand(x, torch.tensor([0, 0]))
    (grad,) = torch.autograd.grad(expanded[2, 0], x)
    # d s_0 / d x = (e_0 - s_0 s) / |x0 + x1| for both ends, |x0 + x1| = sqrt(2)
    h = 1 / math.sqrt(2)
    want = torch.tensor([[1 - h * h, -h * h]] * 2, dtype=torch.float64) / math.sqrt(2)
    torch.testing.assert_close(grad, want, rtol=0, atol=1e-15)


def test_pairs_disjoint_in_batch_order_or_all():
    labels = [1, 0, 1, 0, 1, 1, 0]
    x = torch.randn(len(labels), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for rule, want in [("disjoint", [(0, 2), (1, 3), (4, 5)]),
                       ("all", [(0, 2), (0, 4), (0, 5), (1, 3), (1, 6), (2, 4), (2, 5), (3, 6),
                                (4, 5)])]:
        assert ref_pairs(labels, rule) == want
        got, got_labels = EmbeddingExpansion(MarginTripletLoss(), 2, rule).expand(
            x, torch.tensor(labels))
        ref, ref_labels = ref_expand(x, labels, 2, rule)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-15)
        assert got_labels.tolist() == ref_labels


@pytest.mark.parametrize("name", CASES)
def test_one_sample_classes_add_no_point(name):
    make_loss, _ = ALL_CASES[name]
    x, _ = batch("random")
    labels = torch.arange(len(x))
    expanded, expanded_labels = EmbeddingExpansion(make_loss(), 3, "all").expand(x, labels)
    assert torch.equal(expanded, x) and torch.equal(expanded_labels, labels)
    got = EmbeddingExpansion(make_loss(), 3, "all").result(x, labels)
    want = make_loss().result(x, labels)
    torch.testing.assert_close(got.value, want.value, rtol=0, atol=0)
    fraction, want_fraction = got.stats["synthetic_fraction"].item(), brute_force_fraction(
        want.tuples, len(x))
    assert fraction == want_fraction or (math.isnan(fraction) and math.isnan(want_fraction))


def brute_force_fraction(tuples: tuple[torch.Tensor, ...], real: int) -> float:
    """Used tuples (triplets, or the positive pairs then the negative pairs) with an index
    >= real, over all of them."""
    if len(tuples) == 3:
        rows = list(zip(*(t.tolist() for t in tuples), strict=True))
    else:
        a1, p, a2, n = (t.tolist() for t in tuples)
        rows = list(zip(a1, p, strict=True)) + list(zip(a2, n, strict=True))
    return sum(any(i >= real for i in row) for row in rows) / len(rows) if rows else math.nan


@pytest.mark.parametrize("name", CASES)
def test_statistics(name):
    make_loss, _ = ALL_CASES[name]
    x, labels = batch("random", seed=1)
    got = EmbeddingExpansion(make_loss(), 2).result(x, labels)
    expanded, expanded_labels = ref_expand(x, labels.tolist(), 2)
    inner = make_loss().result(expanded, torch.tensor(expanded_labels))
    # the wrapped loss's tuples and statistics on real + synthetic points
    for got_t, want_t in zip(got.tuples, inner.tuples, strict=True):
        assert torch.equal(got_t, want_t)
    assert got.stats.keys() == inner.stats.keys() | {"synthetic_fraction"}
    for key, value in inner.stats.items():
        if key != "mean_pairwise_sim":
            torch.testing.assert_close(got.stats[key], value, equal_nan=True)
    if inner.triplet_similarities is None:
        assert got.triplet_similarities is None
    else:
        for g, w in zip(got.triplet_similarities, inner.triplet_similarities, strict=True):
            assert torch.equal(g, w)
    # the collapse indicator over the real points only
    cosines = [float(x[i] @ x[j]) for i in range(len(x)) for j in range(len(x)) if i != j]
    assert got.stats["mean_pairwise_sim"].item() == pytest.approx(sum(cosines) / len(cosines),
                                                                  abs=1e-6)
    fraction = brute_force_fraction(inner.tuples, len(x))
    assert 0 < fraction < 1
    assert got.stats["synthetic_fraction"].item() == pytest.approx(fraction, abs=1e-6)


def test_errors_are_one_line():
    x, labels = batch("random")
    cases = [
        (lambda: EmbeddingExpansion(MarginTripletLoss(), 0),
         r"synthesis\.points must be an integer >= 1 .*synthesis\.points=2"),
        (lambda: EmbeddingExpansion(MarginTripletLoss(), 1.5), r"synthesis\.points"),
        (lambda: EmbeddingExpansion(MarginTripletLoss(), True), r"synthesis\.points"),
        (lambda: EmbeddingExpansion(MarginTripletLoss(), 2, "consecutive"),
         r"synthesis\.pairs must be one of \['disjoint', 'all'\]"),
        (lambda: EmbeddingExpansion(MarginTripletLoss(), 2, normalize="yes"),
         r"synthesis\.normalize must be true or false"),
        (lambda: EmbeddingExpansion(LoOpTripletLoss()),
         r"triplet or pair loss .* got LoOpTripletLoss .*: choose e\.g\. loss=triplet_batchhard"),
        (lambda: EmbeddingExpansion(PMLLoss(torch.nn.Identity())), r"got PMLLoss .*: choose"),
        (lambda: EmbeddingExpansion(torch.nn.MSELoss()), r"got MSELoss .*: choose"),
        (lambda: EmbeddingExpansion(SCTLoss())(x, labels, (labels[:1],) * 3),
         r"takes no indices: drop synthesis="),
    ]
    for make, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as err:
            make()
        assert "\n" not in str(err.value)


def test_config_has_the_papers_defaults_and_wraps_a_loss():
    partial = instantiate(OmegaConf.load(CONF))
    for inner in (MarginTripletLoss(), ContrastiveLoss(), MultiSimilarityLoss()):
        loss = partial(loss=inner)
        assert isinstance(loss, EmbeddingExpansion) and loss.loss is inner
        assert (loss.points, loss.pairs, loss.normalize) == (2, "disjoint", True)
        x, labels = batch("random")
        x.requires_grad_()
        loss(x, labels).backward()
        assert x.grad.abs().sum() > 0
