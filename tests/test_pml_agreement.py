"""Our losses and miners agree with pytorch-metric-learning (PML) on the same inputs: values and
gradients, float64.

PML's LpDistance normalises embeddings by default, while our EuclideanDistance measures them as
given (the model normalises); the comparison uses ``normalize_embeddings=False`` so both compute
the same function (on these unit inputs values agree either way, gradients would differ by the
normalisation's projection).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dml.losses import ContrastiveLoss, MarginTripletLoss, MultiSimilarityLoss, NCATripletLoss
from dml.miners import BatchHardMiner, EasyPositiveHardNegativeMiner, MultiSimilarityMiner

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import distances, losses, miners, reducers  # noqa: E402


def batch(seed: int, batch_size: int = 32, dim: int = 16, classes: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(batch_size, dim, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(batch_size) % classes
    return x, labels


def value_and_grad(fn, x: torch.Tensor, labels: torch.Tensor):
    x = x.clone().requires_grad_()
    value = fn(x, labels)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def assert_agree(ours, theirs, seeds=(0, 1, 2)) -> None:
    for seed in seeds:
        x, labels = batch(seed)
        v, g = value_and_grad(ours, x, labels)
        w, h = value_and_grad(theirs, x, labels)
        assert v.item() != 0
        torch.testing.assert_close(v, w, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(g, h, atol=1e-10, rtol=1e-8)


def with_miner(loss, miner):
    return lambda x, labels: loss(x, labels, miner(x, labels))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean"])
def test_batch_hard_triplet(distance: str, reduction: str) -> None:
    pml_distance = (
        distances.LpDistance(normalize_embeddings=False)
        if distance == "euclidean"
        else distances.CosineSimilarity()
    )
    reducer = (
        reducers.AvgNonZeroReducer() if reduction == "mean_nonzero" else reducers.MeanReducer()
    )
    theirs = with_miner(
        losses.TripletMarginLoss(margin=0.2, distance=pml_distance, reducer=reducer),
        miners.BatchHardMiner(distance=pml_distance),
    )
    ours = MarginTripletLoss(0.2, BatchHardMiner(distance), distance, reduction)
    assert_agree(ours, theirs)


@pytest.mark.parametrize(
    ("distance", "pos_margin", "neg_margin"), [("euclidean", 0.0, 1.0), ("cosine", 0.9, 0.2)]
)
def test_contrastive(distance: str, pos_margin: float, neg_margin: float) -> None:
    pml_distance = (
        distances.LpDistance(normalize_embeddings=False)
        if distance == "euclidean"
        else distances.CosineSimilarity()
    )
    theirs = losses.ContrastiveLoss(pos_margin, neg_margin, distance=pml_distance)
    ours = ContrastiveLoss(pos_margin, neg_margin, distance=distance)
    assert_agree(ours, theirs)


@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_multi_similarity(epsilon: float) -> None:
    theirs = with_miner(
        losses.MultiSimilarityLoss(2, 50, 0.5), miners.MultiSimilarityMiner(epsilon)
    )
    ours = MultiSimilarityLoss(2.0, 50.0, 0.5, MultiSimilarityMiner(epsilon))
    assert_agree(ours, theirs)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_multi_similarity_miner_pairs(distance: str) -> None:
    pml_distance = (
        distances.LpDistance(normalize_embeddings=False)
        if distance == "euclidean"
        else distances.CosineSimilarity()
    )
    x, labels = batch(3)
    theirs = miners.MultiSimilarityMiner(0.1, distance=pml_distance)(x, labels)
    ours = MultiSimilarityMiner(0.1, distance)(x, labels)

    def pairs(a: torch.Tensor, b: torch.Tensor) -> set[tuple[int, int]]:
        return set(zip(a.tolist(), b.tolist(), strict=True))

    assert pairs(*ours[:2]) == pairs(*theirs[:2]) and pairs(*ours[2:]) == pairs(*theirs[2:])
    assert len(pairs(*ours[2:])) > 0


def test_nca_with_ephn_matches_pml_smooth_triplet_with_easy_hard_miner() -> None:
    """NCA at τ = 1 is PML's smooth (softplus) triplet loss with margin 0 in cosine, and EPHN is
    PML's BatchEasyHardMiner(easy positive, hard negative)."""
    cos = distances.CosineSimilarity()
    theirs = with_miner(
        losses.TripletMarginLoss(margin=0.0, smooth_loss=True, distance=cos),
        miners.BatchEasyHardMiner(pos_strategy="easy", neg_strategy="hard", distance=cos),
    )
    ours = NCATripletLoss(temperature=1.0, miner=EasyPositiveHardNegativeMiner("cosine"))
    assert_agree(ours, theirs)


def test_pml_bridge_equals_direct_pml_call() -> None:
    from dml.losses.pml import PMLLoss

    loss = PMLLoss(losses.TripletMarginLoss(margin=0.1), miners.BatchHardMiner())
    x, labels = batch(4)
    direct = losses.TripletMarginLoss(margin=0.1)
    want = direct(x, labels, miners.BatchHardMiner()(x, labels))
    out = loss.result(x, labels)
    assert out.value.item() == pytest.approx(want.item())
    s_ap, _ = out.triplet_similarities
    assert len(s_ap) == len(x) and out.stats["hard_fraction"].item() >= 0


def test_pml_bridge_from_config() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load("conf/loss/pml.yaml")
    cfg.miner = {"_target_": "pytorch_metric_learning.miners.MultiSimilarityMiner"}
    loss = instantiate(cfg)
    x, labels = batch(5)
    want = losses.CircleLoss(m=0.4, gamma=80)(x, labels, miners.MultiSimilarityMiner()(x, labels))
    out = loss.result(x, labels)
    assert out.value.item() == pytest.approx(want.item())
    assert out.triplet_similarities is None and "mean_pairwise_sim" in out.stats
