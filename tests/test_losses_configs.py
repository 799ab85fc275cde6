"""Every loss config instantiates to the documented class and miner, works on a batch, and its
nested miner distance can be overridden from the command line."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from dml import losses
from dml.cli.errors import user_error
from dml.distances import CosineSimilarity, EuclideanDistance
from dml.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"
#: Every loss config: its cases are derived from the files, so a new conf/loss/<name>.yaml is
#: tested without editing a table here.
LOSS_CONFIGS = sorted(p.stem for p in CONF.glob("*.yaml"))


def named_class(config: Path) -> type:
    """The class a config file's ``_target_`` names."""
    return get_class(OmegaConf.load(config)._target_)


#: The configs of triplet and pair losses (they take references: what memory= and synthesis= wrap).
WRAPPABLE_CONFIGS = [n for n in LOSS_CONFIGS if named_class(CONF / f"{n}.yaml").takes_references]


def documented_classes(name: str) -> tuple[type, type | None]:
    """The loss class ``conf/loss/<name>.yaml`` names and that of the miner its defaults list
    chooses from ``conf/loss/miner/`` (None without one)."""
    defaults = OmegaConf.load(CONF / f"{name}.yaml").get("defaults") or []
    chosen = [d["miner"] for d in defaults if isinstance(d, Mapping) and "miner" in d]
    miner = named_class(CONF / "miner" / f"{chosen[0]}.yaml") if chosen else None
    return named_class(CONF / f"{name}.yaml"), miner


def load(name: str, *overrides: str):
    """The loss of ``loss=<name>`` composed by Hydra (its miner from conf/loss/miner/), with
    ``overrides`` of its keys (``distance=cosine`` sets ``loss.distance``)."""
    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        cfg = compose("config", overrides=[f"loss={name}", *(f"loss.{o}" for o in overrides)])
    return instantiate(cfg.loss)


def unit_batch(seed: int = 0):
    """32 unit vectors in float64: cosine and Euclidean orders agree unless two pairs tie to
    ~1e-16 (in float32, ties within ~1e-7 could order the two measures differently)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g, dtype=torch.float64)
    return F.normalize(x, dim=1), torch.arange(32) % 8


@pytest.mark.parametrize("name", LOSS_CONFIGS)
def test_config_builds_documented_loss(name: str) -> None:
    """Each loss config builds the DMLLoss its ``_target_`` names, with the miner its defaults
    choose, and trains on a batch (finite value, non-zero gradient)."""
    if name == "pml":
        pytest.importorskip("pytorch_metric_learning")
    loss_cls, miner_cls = documented_classes(name)
    loss = load(name)
    assert type(loss) is loss_cls and isinstance(loss, losses.DMLLoss)
    assert miner_cls is None or type(loss.miner) is miner_cls
    x, labels = unit_batch()
    out = loss.result(x.requires_grad_(), labels)
    out.value.backward()
    assert torch.isfinite(out.value) and x.grad.abs().sum() > 0
    assert "mean_pairwise_sim" in out.stats


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


def compose_loss(name: str, *overrides: str):
    """``cfg.loss`` of the real composed config with ``loss=<name>`` and the overrides."""
    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        return compose("config", overrides=[f"loss={name}", *overrides]).loss


# (config, overrides, the one-line error): constrained hyper-parameters of conf/loss/* (pml.yaml
# passes its values to pytorch-metric-learning, which checks its own). Every numeric one of every
# config is also checked by test_a_non_number_hyperparameter_is_a_config_error.
BAD_VALUES = [
    ("triplet_batchhard", ["loss.margin=-1"], "loss.margin must be >= 0, got -1"),
    (
        "triplet_batchhard",
        ["loss.reduction=sum"],
        "loss.reduction must be one of ['mean', 'mean_nonzero'], got 'sum'",
    ),
    (
        "triplet_batchhard",
        ["loss.miner.distance=manhattan"],
        "loss.miner.distance must be one of ['cosine', 'euclidean', 'squared_euclidean'], "
        "got 'manhattan'",
    ),
    (
        "triplet_batchhard",
        ["loss.miner.distance=cosine", "loss.distance=l1"],
        "loss.distance must be one of ['cosine', 'euclidean', 'squared_euclidean'], got 'l1'",
    ),
    ("triplet_semihard", ["loss.margin=0"], "loss.miner.margin must be > 0 or null, got 0"),
    (
        "triplet_semihard",
        ["loss.miner.margin=null", "loss.margin=-0.1"],
        "loss.margin must be >= 0, got -0.1",
    ),
    ("triplet_all", ["loss.margin=-0.2"], "loss.margin must be >= 0, got -0.2"),
    ("triplet_all", ["loss.margin=abc"], "loss.margin must be a number >= 0, got 'abc'"),
    ("triplet_all", ["loss.margin=inf"], "loss.margin must be finite, got inf"),
    ("nca_hardest", ["loss.temperature=0"], "loss.temperature must be > 0, got 0"),
    ("nca_semihard", ["loss.temperature=-0.1"], "loss.temperature must be > 0, got -0.1"),
    (
        "nca_semihard",
        ["loss.miner.positive=medium"],
        "loss.miner.positive must be one of ['hardest', 'easiest', 'random'], got 'medium'",
    ),
    ("sct", ["loss.lam=-1"], "loss.lam must be >= 0, got -1"),
    ("sct", ["loss.temperature=0"], "loss.temperature must be > 0, got 0"),
    ("sct", ["loss.hard_threshold=1.5"], "loss.hard_threshold must be in [-1, 1] or null, got 1.5"),
    ("contrastive", ["loss.pos_margin=-0.1"], "loss.pos_margin must be >= 0, got -0.1"),
    ("contrastive", ["loss.neg_margin=-1"], "loss.neg_margin must be >= 0, got -1"),
    (
        "contrastive",
        ["loss.distance=cosine", "loss.pos_margin=1", "loss.neg_margin=1.5"],
        "loss.neg_margin must be in [-1, 1], got 1.5",
    ),
    ("multisimilarity", ["loss.alpha=0"], "loss.alpha must be > 0, got 0"),
    ("multisimilarity", ["loss.beta=-50"], "loss.beta must be > 0, got -50"),
    ("multisimilarity", ["loss.base=2.5"], "loss.base must be in [-2, 2], got 2.5"),
    ("multisimilarity", ["loss.miner.epsilon=-0.1"], "loss.miner.epsilon must be >= 0, got -0.1"),
    ("loop_triplet", ["loss.margin=-1e-5"], "loss.margin must be >= 0, got -1e-05"),
    (
        "loop_triplet",
        ["loss.reduction=max"],
        "loss.reduction must be one of ['mean', 'mean_nonzero'], got 'max'",
    ),
    ("hcl", ["loss.beta=-1"], "loss.beta must be >= 0, got -1"),
    ("hcl", ["loss.tau_plus=1"], "loss.tau_plus must be < 1 (the prior of false negatives), got 1"),
    ("loop_contrastive", ["loss.pos_margin=-1"], "loss.pos_margin must be >= 0, got -1"),
    ("loop_contrastive", ["loss.neg_margin=-0.5"], "loss.neg_margin must be >= 0, got -0.5"),
    ("loop_multisimilarity", ["loss.alpha=-2"], "loss.alpha must be > 0, got -2"),
    ("loop_multisimilarity", ["loss.beta=0"], "loss.beta must be > 0, got 0"),
    ("loop_multisimilarity", ["loss.base=-2.1"], "loss.base must be in [-2, 2], got -2.1"),
    ("loop_multisimilarity", ["loss.epsilon=-0.1"], "loss.epsilon must be >= 0, got -0.1"),
    ("loop_lifted", ["loss.margin=-1"], "loss.margin must be >= 0, got -1"),
]


def numeric_hyperparameters() -> list[tuple[str, str]]:
    """``(config, key)`` of every number of every loss config and of its miner (not pml.yaml's:
    pytorch-metric-learning checks its own), read from the composed configs."""
    cases = []
    for name in LOSS_CONFIGS:
        if name == "pml":
            continue
        loss = compose_loss(name)
        values = [(f"loss.{k}", v) for k, v in loss.items() if k != "miner"]
        values += [(f"loss.miner.{k}", v) for k, v in (loss.get("miner") or {}).items()]
        cases += [(name, key) for key, v in values
                  if isinstance(v, int | float) and not isinstance(v, bool)]
    return cases


@pytest.mark.parametrize(("name", "key"), numeric_hyperparameters())
def test_a_non_number_hyperparameter_is_a_config_error(name: str, key: str) -> None:
    """Every numeric hyper-parameter of every loss config is checked when the loss is built: a
    value that is not a number is a one-line ConfigError naming the key (or the key it sets)."""
    with pytest.raises(Exception) as raised:
        instantiate(compose_loss(name, f"{key}=abc"))
    error = user_error(raised.value)
    assert isinstance(error, ConfigError)
    assert str(error).startswith("loss.") and str(error).endswith("got 'abc'"), str(error)


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    BAD_VALUES,
    ids=[f"{name}:{','.join(overrides)}" for name, overrides, _ in BAD_VALUES],
)
def test_impossible_hyperparameters_raise_a_config_error(name, overrides, message) -> None:
    """Raised while the loss is built, before any training; the CLI prints it in one line."""
    cfg = compose_loss(name, *overrides)
    with pytest.raises(Exception) as raised:
        instantiate(cfg)
    error = user_error(raised.value)  # Hydra wraps what the constructor raised
    assert isinstance(error, ConfigError)
    assert str(error) == message


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("triplet_batchhard", ["loss.margin=0"]),
        ("triplet_semihard", ["loss.miner.margin=null"]),
        ("loop_triplet", ["loss.margin=1e-5"]),  # the LoOp authors' triplet margin
        ("loop_lifted", ["loss.margin=0"]),
        ("sct", ["loss.lam=0", "loss.hard_threshold=-1"]),
        ("sct", ["loss.hard_threshold=1"]),
        ("contrastive", ["loss.distance=cosine", "loss.pos_margin=1.0", "loss.neg_margin=-0.5"]),
        ("multisimilarity", ["loss.miner.epsilon=0", "loss.base=-2"]),
        ("loop_multisimilarity", ["loss.epsilon=0", "loss.base=2"]),
    ],
)
def test_boundary_hyperparameters_are_legal(name, overrides) -> None:
    instantiate(compose_loss(name, *overrides))
