"""The paper protocols in conf/experiment/: they compose, say what the papers say, and each runs
one training step on CPU on a miniature of its dataset with a tiny backbone."""

import re
import zipfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dml.train.run import train

from .conftest import write_png
from .test_benchmark_datasets import make_all

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
BENCHMARKS = ("cub200", "cars196", "sop", "inshop")

# Issue 4: (embedding, images per batch, SCT LR, semi-hard LR, epochs, LR x0.1 at epochs)
SCT = {
    "cub200": (64, 128, 0.009, 0.002, 80, [40]),
    "cars196": (64, 128, 0.02, 0.004, 80, [40]),
    "sop": (512, 512, 0.03, 0.01, 200, [100, 150]),
    "inshop": (512, 512, 0.1, 0.3, 200, [100, 150]),
}
SOURCES = {
    "cub200": "dml.data.cub200.CUB200",
    "cars196": "dml.data.cars196.Cars196",
    "sop": "dml.data.sop.StanfordOnlineProducts",
    "inshop": "dml.data.inshop.InShop",
    "omniglot": "dml.data.omniglot.Omniglot",
}


def compose_experiment(*overrides: str, hydra: bool = True):
    """The composed config; with ``hydra`` it includes ``hydra.runtime.choices``."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def test_every_benchmark_has_each_protocol():
    for ds in BENCHMARKS:
        for name in (f"sct_{ds}", f"sct_{ds}_semihard", f"sct_{ds}_hardest", f"loop_{ds}"):
            assert name in EXPERIMENTS
        assert f"fair_{ds}" in EXPERIMENTS
    assert {"fair_omniglot", "fair_omniglot_merged"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_states_its_source(name):
    text = (REPO / "conf" / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    assert re.search(r"(ECCV|ICCV|ICML) 20\d\d", text), "each experiment cites its source"
    cfg = compose_experiment(f"experiment={name}")
    assert cfg.hydra.runtime.choices.experiment == name
    assert cfg.data.source._target_ == SOURCES[cfg.hydra.runtime.choices.data]
    assert cfg.data.batch_p * cfg.data.batch_k >= 32
    OmegaConf.to_container(cfg.data, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("ds", BENCHMARKS)
def test_sct_protocol_matches_the_paper(ds):
    dim, batch, lr, semihard_lr, epochs, milestones = SCT[ds]
    cfg = compose_experiment(f"experiment=sct_{ds}")
    assert cfg.hydra.runtime.choices.data == ds
    assert cfg.loss._target_ == "dml.losses.SCTLoss"
    assert cfg.model.backbone.startswith("resnet50") and cfg.model.pretrained
    assert cfg.model.embedding_dim == dim
    assert (cfg.data.batch_k, cfg.data.batch_p * cfg.data.batch_k) == (2, batch)
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (lr, 0, 0)
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.MultiStepLR"
    assert (list(cfg.scheduler.milestones), cfg.scheduler.gamma) == (milestones, 0.1)
    assert cfg.trainer.max_epochs == epochs
    train_t, eval_t = cfg.data.train_transform, cfg.data.eval_transform
    assert (train_t.resize, train_t.size, train_t.flip, train_t.train) == (281, 256, True, True)
    assert (eval_t.resize, eval_t.size) == (256, 256) and not eval_t.train
    assert cfg.data.val_holdout == 0  # as the paper: the final checkpoint is tested

    semihard = compose_experiment(f"experiment=sct_{ds}_semihard")
    assert semihard.loss.miner._target_ == "dml.miners.SemiHardNegativeMiner"
    assert semihard.optimizer.lr == semihard_lr
    hardest = compose_experiment(f"experiment=sct_{ds}_hardest")
    assert hardest.loss.miner._target_ == "dml.miners.EasyPositiveHardNegativeMiner"
    assert hardest.loss._target_ == "dml.losses.NCATripletLoss" and hardest.optimizer.lr == lr
    for baseline in (semihard, hardest):  # only the loss and its LR differ from SCT's protocol
        for key in ("model", "data", "scheduler", "trainer", "module"):
            assert baseline[key] == cfg[key], key


@pytest.mark.parametrize("ds", BENCHMARKS)
def test_loop_protocol(ds):
    cfg = compose_experiment(f"experiment=loop_{ds}")
    assert cfg.loss._target_ == "dml.losses.loop.LoOpTripletLoss"
    assert cfg.model.embedding_dim == 512 and cfg.model.backbone.startswith("inception")
    assert cfg.data.train_transform.size == 227 and cfg.data.eval_transform.size == 227
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (1e-4, 5e-4)
    if ds in ("cub200", "cars196"):
        assert list(cfg.module.eval_ks) == [1, 2, 4, 8] and cfg.module.nmi


def test_fair_omniglot_keeps_the_published_protocol_while_the_default_moves_on():
    """The published Omniglot tables (docs/results.md, studies/) ran on the default experiment of
    their time; experiment=fair_omniglot pins it, so they re-run and resume as published."""
    default = compose_experiment()
    for name in ("fair_omniglot", "fair_omniglot_merged"):
        cfg = compose_experiment(f"experiment={name}")
        pinned = (cfg.optimizer.lr, cfg.model.channels_last, cfg.data.source.train_rotations,
                  cfg.trainer.max_epochs, cfg.callbacks.best_checkpoint.monitor, cfg.data.cache)
        assert pinned == (1e-3, False, 1, 18, "val/recall@1", False), name
    assert (default.optimizer.lr, default.data.source.train_rotations) == (3e-3, 4)


def test_experiments_module_settings_take_effect():
    assert compose_experiment("experiment=sct_cub200").module.scheduler_interval == "epoch"
    assert list(compose_experiment("experiment=sct_sop").module.eval_ks) == [1, 10, 100, 1000]
    assert not compose_experiment("experiment=fair_inshop").module.nmi


def test_fair_protocols_differ_only_in_the_dataset():
    configs = [compose_experiment(f"experiment=fair_{ds}") for ds in BENCHMARKS]
    for cfg in configs:
        assert cfg.data.val_holdout > 0 and cfg.callbacks.best_checkpoint.monitor.startswith("val/")
        assert cfg.model.freeze_bn
    for key in ("model", "optimizer", "scheduler", "trainer", "loss"):
        assert all(c[key] == configs[0][key] for c in configs), key
    strip = {"source", "val_holdout"}
    data = [{k: v for k, v in c.data.items() if k not in strip} for c in configs]
    assert all(d == data[0] for d in data)


def test_command_line_loss_beats_the_experiments_choice():
    """The sweep form `experiment=X loss=a,b`: the swept loss wins, the protocol stays."""
    cfg = compose_experiment("experiment=sct_cub200_semihard", "loss=loop_triplet")
    assert cfg.hydra.runtime.choices.loss == "loop_triplet" and cfg.optimizer.lr == 0.002


def test_merged_omniglot_is_the_high_variance_variant():
    cfg = compose_experiment("experiment=fair_omniglot_merged")
    plain = compose_experiment("experiment=fair_omniglot")
    assert cfg.data.source.merge_characters == 3 and cfg.data.batch_k == 2
    assert cfg.data.batch_p * cfg.data.batch_k == plain.data.batch_p * plain.data.batch_k
    assert cfg.model == plain.model and cfg.optimizer == plain.optimizer


# ---- one step of each on CPU -----------------------------------------------------------------
def make_omniglot(root: Path, layout: dict[str, tuple[int, int]], drawers: int = 4) -> None:
    """Omniglot zips with ``layout[stem] = (alphabets, characters per alphabet)``."""
    root.mkdir(parents=True)
    png, seed = root / "tmp.png", 0
    for stem, (n_alphabets, n_chars) in layout.items():
        with zipfile.ZipFile(root / f"{stem}.zip", "w") as z:
            for a in range(n_alphabets):
                for c in range(n_chars):
                    for d in range(drawers):
                        write_png(png, seed, size=12)
                        seed += 1
                        z.write(png, f"{stem}/Alpha{a}/character{c + 1:02d}/{c}_{d + 1:02d}.png")
    png.unlink()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    base = make_all(tmp_path_factory.mktemp("data"))
    # 3 evaluation alphabets so that merge_characters=3 still leaves test classes
    make_omniglot(base / "omniglot", {"images_background": (4, 3), "images_evaluation": (3, 2)})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DML_DATA_DIR", str(base))
        mp.setenv("DML_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield base


@pytest.fixture
def one_thread():
    """Tiny models: extra intra-op threads only spin (and stall when other jobs share the CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ONE_STEP = [
    "model.backbone=test_resnet",  # timm's 0.4M-parameter test network
    "model.pretrained=false",
    "model.embedding_dim=8",
    "data.train_transform.size=16",
    "data.train_transform.resize=18",
    "data.eval_transform.resize=18",
    "data.batch_p=2",
    "data.num_workers=0",
    "data.eval_batch_size=64",
    "+trainer.max_steps=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "++callbacks.triplet_diagram=null",  # figures cost more than the step itself
    "eval.show=0",
]
# The miniature Omniglot merges into 4 training classes: hold out one (0.1 of 4 rounds to 0).
EXTRA = {"fair_omniglot_merged": ["data.val_holdout=1"]}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_one_step_on_cpu(name, data_dir, tmp_path, one_thread):
    overrides = [f"experiment={name}", *ONE_STEP, *EXTRA.get(name, []), f"run_dir={tmp_path}"]
    cfg = compose_experiment(*overrides, hydra=False)
    result = train(cfg)
    ks = cfg.module.eval_ks
    assert {f"recall@{k}" for k in ks} | {"map@r"} <= set(result["test"])
    assert ("nmi" in result["test"]) == cfg.module.nmi
    assert 0 <= result["test"]["recall@1"] <= 1
    assert (tmp_path / "metrics.json").is_file()
