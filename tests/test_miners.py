"""Miners against slow references written with explicit loops (float64, cosine and Euclidean).

The ``ref_*`` functions here are also the selection references of ``test_losses.py``.
"""

from __future__ import annotations

import pytest
import torch

from dml.distances import get_distance
from dml.errors import ConfigError
from dml.miners import (
    AllPairsMiner,
    AllTripletsMiner,
    BatchHardMiner,
    EasyPositiveHardNegativeMiner,
    FaceNetSemiHardMiner,
    MultiSimilarityMiner,
    PerAnchorTripletMiner,
    RandomNegativeMiner,
    SemiHardNegativeMiner,
)

DISTANCES = ["cosine", "euclidean"]


def ref_measure(distance: str, u: torch.Tensor, v: torch.Tensor) -> float:
    if distance == "cosine":
        return float((u * v).sum() / (u.norm() * v.norm()))
    return float(((u - v) ** 2).sum().sqrt())


def ref_closeness(distance: str, x: torch.Tensor) -> list[list[float]]:
    """c[i][j]: larger is closer (similarity, or minus the distance)."""
    sign = 1.0 if distance == "cosine" else -1.0
    return [
        [sign * ref_measure(distance, x[i], x[j]) for j in range(len(x))] for i in range(len(x))
    ]


def ref_duplicate(distance: str, u: torch.Tensor, v: torch.Tensor) -> bool:
    m = ref_measure(distance, u, v)
    return m > 0.9999 if distance == "cosine" else m < (2 * 1e-4) ** 0.5


def ref_per_anchor(
    x: torch.Tensor,
    labels: list[int],
    distance: str,
    positive: str,
    negative: str,
    exclude_duplicates: bool = False,
) -> list[tuple[int, int, int]]:
    """One triplet per anchor; the first index wins ties (strict comparisons)."""
    c = ref_closeness(distance, x)
    out = []
    for a in range(len(x)):
        best_p = None
        for p in range(len(x)):
            if p == a or labels[p] != labels[a]:
                continue
            if exclude_duplicates and ref_duplicate(distance, x[a], x[p]):
                continue
            if best_p is None:
                best_p = p
                continue
            less_close, closer = c[a][p] < c[a][best_p], c[a][p] > c[a][best_p]
            if less_close if positive == "hardest" else closer:
                best_p = p
        if best_p is None:
            continue
        best_n = None
        for n in range(len(x)):
            if labels[n] == labels[a]:
                continue
            if negative == "semihard" and c[a][n] > c[a][best_p]:
                continue
            if best_n is None or c[a][n] > c[a][best_n]:
                best_n = n
        if best_n is not None:
            out.append((a, best_p, best_n))
    return out


def ref_all_triplets(labels: list[int]) -> list[tuple[int, int, int]]:
    r = range(len(labels))
    return [
        (a, p, n)
        for a in r
        for p in r
        for n in r
        if a != p and labels[a] == labels[p] and labels[n] != labels[a]
    ]


def ref_facenet(
    x: torch.Tensor, labels: list[int], distance: str, margin: float | None
) -> list[tuple[int, int, int]]:
    c = ref_closeness(distance, x)
    out = []
    for a, p, _ in {(a, p, 0) for a, p, _ in ref_all_triplets(labels)}:
        best = None
        for n in range(len(x)):
            if labels[n] == labels[a] or not c[a][n] < c[a][p]:
                continue
            if margin is not None and not c[a][n] > c[a][p] - margin:
                continue
            if best is None or c[a][n] > c[a][best]:
                best = n
        if best is not None:
            out.append((a, p, best))
    return sorted(out)


def ref_ms_pairs(
    x: torch.Tensor, labels: list[int], distance: str, epsilon: float
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    c = ref_closeness(distance, x)
    pos, neg = [], []
    for i in range(len(x)):
        ps = [c[i][k] for k in range(len(x)) if k != i and labels[k] == labels[i]]
        ns = [c[i][k] for k in range(len(x)) if labels[k] != labels[i]]
        for j in range(len(x)):
            if j != i and labels[j] == labels[i] and ns and c[i][j] - epsilon < max(ns):
                pos.append((i, j))
            if labels[j] != labels[i] and ps and c[i][j] + epsilon > min(ps):
                neg.append((i, j))
    return pos, neg


def make_batch(kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 batches: random, ties (duplicated rows across and within classes), a singleton
    class, all-identical embeddings, and no positive pair at all."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3])
    x = torch.randn(len(labels), 6, generator=g, dtype=torch.float64)
    if kind == "ties":
        x[1] = x[2]  # two equally close positives of anchor 0
        x[4] = x[2]  # a negative exactly as close as those positives
        x[9] = x[10] = x[11]
    elif kind == "singleton":
        labels = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 4, 5, 5])
    elif kind == "identical":
        x = torch.ones(len(labels), 4, dtype=torch.float64)
    elif kind == "no_positive":
        labels = torch.arange(len(labels))
    return x, labels


KINDS = ["random", "ties", "singleton", "identical", "no_positive"]


def as_list(triplets: tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    assert all(t.dtype == torch.long for t in triplets)
    return list(zip(*(t.tolist() for t in triplets), strict=True))


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("positive", "negative"),
    [
        ("hardest", "hardest"),
        ("easiest", "hardest"),
        ("easiest", "semihard"),
        ("hardest", "semihard"),
    ],
)
@pytest.mark.parametrize("exclude_duplicates", [False, True])
def test_per_anchor_miners(distance, kind, positive, negative, exclude_duplicates) -> None:
    x, labels = make_batch(kind)
    miner = PerAnchorTripletMiner(positive, negative, distance, exclude_duplicates)
    want = ref_per_anchor(x, labels.tolist(), distance, positive, negative, exclude_duplicates)
    assert as_list(miner(x, labels)) == want
    if kind == "random":  # every anchor has a positive and a negative; semi-hard may drop some
        assert len(want) == len(x) if negative != "semihard" else len(want) > 0


def test_named_miners_are_the_rules() -> None:
    x, labels = make_batch("ties")
    pairs = {
        BatchHardMiner("euclidean"): ("hardest", "hardest"),
        EasyPositiveHardNegativeMiner("euclidean"): ("easiest", "hardest"),
        SemiHardNegativeMiner("euclidean"): ("easiest", "semihard"),
    }
    for miner, (pos, neg) in pairs.items():
        assert as_list(miner(x, labels)) == ref_per_anchor(
            x, labels.tolist(), "euclidean", pos, neg
        )


def test_semihard_keeps_ties_and_excludes_closer_negatives() -> None:
    # anchor 0: positive 1 at cos 0.8; negatives at cos 0.9 (closer), 0.8 (tie), 0.3.
    angle = torch.tensor([0.0, 0.8, 0.9, 0.8, 0.3], dtype=torch.float64).acos()
    x = torch.stack([angle.cos(), angle.sin()], dim=1)
    x[3] = x[1]
    labels = torch.tensor([0, 0, 1, 2, 3])
    a, p, n = SemiHardNegativeMiner("cosine")(x, labels)
    assert (a[0].item(), p[0].item(), n[0].item()) == (0, 1, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_all_triplets(kind) -> None:
    x, labels = make_batch(kind)
    assert as_list(AllTripletsMiner()(x, labels)) == ref_all_triplets(labels.tolist())


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("margin", [0.2, 0.5, None])
def test_facenet_semihard(distance, kind, margin) -> None:
    x, labels = make_batch(kind, seed=3)
    got = sorted(as_list(FaceNetSemiHardMiner(margin, distance)(x, labels)))
    assert got == ref_facenet(x, labels.tolist(), distance, margin)
    if kind == "random" and margin is None:
        assert got  # the test exercises a non-empty selection


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("epsilon", [0.1, 0.5])
def test_multisimilarity_pairs(distance, kind, epsilon) -> None:
    x, labels = make_batch(kind, seed=1)
    a1, p, a2, n = MultiSimilarityMiner(epsilon, distance)(x, labels)
    pos, neg = ref_ms_pairs(x, labels.tolist(), distance, epsilon)
    assert as_list((a1, p)) == pos
    assert as_list((a2, n)) == neg
    if kind == "random":
        all_pos, all_neg = AllPairsMiner()(x, labels)[:2], AllPairsMiner()(x, labels)[2:]
        assert 0 < len(pos) <= len(all_pos[0]) and 0 < len(neg) < len(all_neg[0])


@pytest.mark.parametrize("kind", KINDS)
def test_all_pairs(kind) -> None:
    x, labels = make_batch(kind)
    lab = labels.tolist()
    r = range(len(lab))
    a1, p, a2, n = AllPairsMiner()(x, labels)
    assert as_list((a1, p)) == [(i, j) for i in r for j in r if i != j and lab[i] == lab[j]]
    assert as_list((a2, n)) == [(i, j) for i in r for j in r if lab[i] != lab[j]]


def test_random_negative_miner() -> None:
    x, labels = make_batch("singleton")
    lab = labels.tolist()
    easy = ref_per_anchor(x, lab, "cosine", "easiest", "hardest")
    seen: dict[int, set[int]] = {a: set() for a, _, _ in easy}
    torch.manual_seed(0)
    for _ in range(200):
        a, p, n = RandomNegativeMiner("cosine")(x, labels)
        assert [(ai, pi) for ai, pi, _ in as_list((a, p, n))] == [(ai, pi) for ai, pi, _ in easy]
        for ai, ni in zip(a.tolist(), n.tolist(), strict=True):
            assert lab[ni] != lab[ai]
            seen[ai].add(ni)
    for ai, negs in seen.items():  # every negative is drawn (200 draws, at most 11 negatives)
        assert negs == {j for j in range(len(lab)) if lab[j] != lab[ai]}
    torch.manual_seed(5)
    first = RandomNegativeMiner("cosine")(x, labels)
    torch.manual_seed(5)
    assert all(
        torch.equal(u, v)
        for u, v in zip(first, RandomNegativeMiner("cosine")(x, labels), strict=True)
    )


def test_miner_accepts_precomputed_matrix_and_rejects_bad_rules() -> None:
    x, labels = make_batch("random")
    miner = BatchHardMiner("euclidean")
    matrix = get_distance("euclidean").pairwise(x)
    assert as_list(miner.mine(matrix, labels)) == as_list(miner(x, labels))
    with pytest.raises(ConfigError, match=r"^loss\.miner\.positive must be one of \["):
        PerAnchorTripletMiner("medium", "hardest")
    with pytest.raises(ConfigError, match=r"^loss\.miner\.negative must be one of \["):
        PerAnchorTripletMiner("hardest", "medium")
