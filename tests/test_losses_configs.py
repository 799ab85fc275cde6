"""Every loss config instantiates to the documented class and miner, works on a batch, and its
nested miner distance can be overridden from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dml import losses, miners
from dml.distances import CosineSimilarity, EuclideanDistance

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"
EXPECTED = {
    "triplet_batchhard": (losses.MarginTripletLoss, miners.BatchHardMiner),
    "triplet_semihard": (losses.MarginTripletLoss, miners.FaceNetSemiHardMiner),
    "triplet_all": (losses.MarginTripletLoss, miners.AllTripletsMiner),
    "nca_hardest": (losses.NCATripletLoss, miners.EasyPositiveHardNegativeMiner),
    "nca_semihard": (losses.NCATripletLoss, miners.SemiHardNegativeMiner),
    "sct": (losses.SCTLoss, miners.EasyPositiveHardNegativeMiner),
    "contrastive": (losses.ContrastiveLoss, miners.AllPairsMiner),
    "multisimilarity": (losses.MultiSimilarityLoss, miners.MultiSimilarityMiner),
}


def load(name: str, *overrides: str):
    return instantiate(
        OmegaConf.merge(
            OmegaConf.load(CONF / f"{name}.yaml"), OmegaConf.from_dotlist(list(overrides))
        )
    )


def unit_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(32, 8, generator=g), dim=1), torch.arange(32) % 8


@pytest.mark.parametrize("name", list(EXPECTED))
def test_config_builds_documented_loss(name: str) -> None:
    loss_cls, miner_cls = EXPECTED[name]
    loss = load(name)
    assert type(loss) is loss_cls and type(loss.miner) is miner_cls
    x, labels = unit_batch()
    value = loss(x.requires_grad_(), labels)
    value.backward()
    assert torch.isfinite(value) and x.grad.abs().sum() > 0
    assert "mean_pairwise_sim" in loss.stats


def test_paper_defaults() -> None:
    sct = load("sct")
    assert (sct.lam, sct.temperature, sct.hard_threshold) == (1.0, 0.1, 0.8)
    assert sct.miner.exclude_duplicates and sct.miner.distance == CosineSimilarity()
    assert load("sct", "hard_threshold=null").hard_threshold is None
    ms = load("multisimilarity")
    assert (ms.alpha, ms.beta, ms.base, ms.miner.epsilon) == (2.0, 50.0, 0.5, 0.1)
    assert load("nca_hardest").temperature == 0.1


@pytest.mark.parametrize("name", ["sct", "nca_hardest", "nca_semihard", "multisimilarity"])
def test_miner_distance_override_on_unit_embeddings(name: str) -> None:
    """On unit vectors Euclidean and cosine order pairs identically: same loss either way."""
    cosine, euclid = load(name), load(name, "miner.distance=euclidean")
    assert euclid.miner.distance == EuclideanDistance()
    x, labels = unit_batch(1)
    if name == "multisimilarity":  # epsilon is in the miner's units: compare the selection only
        assert euclid.miner(x, labels)[0].numel() > 0
        return
    torch.testing.assert_close(cosine(x, labels), euclid(x, labels))


@pytest.mark.parametrize("name", ["triplet_batchhard", "triplet_semihard", "contrastive"])
def test_loss_distance_propagates_to_miner(name: str) -> None:
    loss = load(name, "distance=cosine")
    assert loss.distance == CosineSimilarity() == loss.miner.distance
    assert load(name, "miner.distance=cosine").distance == EuclideanDistance()


def test_pml_is_imported_only_when_a_pml_config_is_built() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dml.losses, dml.losses.pml, dml.miners;"
        "assert 'pytorch_metric_learning' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
