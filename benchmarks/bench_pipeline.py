"""Training throughput of the default pipeline against the same model on pre-made batches.

Everything is built from the real Hydra config (``conf/``, ``data=omniglot`` and the defaults:
conv4, 28 px, P×K = 32×4, multi-similarity, AdamW) and trained through Lightning's
``Trainer.fit``, as ``dml-train`` trains (validation, checkpoints and loggers off; the loaders are
the DataModule's datasets and P×K sampler with ``num_workers=0``, its default, and its
``on_after_batch_transfer``). Rows, measured in the same run:

* ``model only``: the same model, loss and optimizer step (Lightning's per-step work included)
  on batches made beforehand and held in memory: the peer every other row is compared with;
* ``pipeline, data.cache=false``: P×K sampler → PNG decode → PIL resize + random affine per
  image (the old path);
* ``pipeline, data.cache=true``: sampler → decoded uint8 tensor cache → batched affine
  (``on_after_batch_transfer``) → model.

The three rows are measured in one ``Trainer.fit``, interleaved step by step, so that a change of
the machine's speed hits every row alike: the training batches come in cycles of five, pre-made,
pre-made, cached pipeline, pre-made, PIL pipeline. A step's time is the interval between consecutive
``on_train_batch_end`` calls: it includes fetching the step's batch (Lightning does not prefetch
from a loader with a length) and augmenting it on the device (``on_after_batch_transfer``). The
first pre-made step of a cycle is a model-only step. A pipeline step's time is taken as
``t(pre-made step before it) + t(its own step) − t(model only)``, each ``t`` the median over
``--steps`` cycles after ``--warmup``: the same as ``t(its own step)`` up to noise here, and still
right if a Lightning version fetched a batch one step ahead. Ratio = model only / pipeline.
Bar (issue 11): ≥ 0.95 with the cache.

The scaling table (issue 11, goal 5) *estimates* the training time per epoch (no validation) of
the cached pipeline for P×K = 32×4, 64×4, 128×4 and embedding dimension 64, 128, 512: the median
step time of 20 timed steps (after 3) × the sampler's steps per epoch.

Needs the Omniglot zips in ``$DML_DATA_DIR/omniglot``; the tensor cache goes to
``$DML_CACHE_DIR`` (its first build is timed apart as ``setup``). Usage:
``python benchmarks/bench_pipeline.py [--steps 100] [--warmup 5] [--threads N] [--no-scaling]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from dml.data.sampler import PKBatchSampler  # noqa: E402
from dml.train.allocator import keep_freed_memory  # noqa: E402
from dml.train.run import build_module  # noqa: E402

SCALING_STEPS, SCALING_WARMUP = 20, 3  # per scaling row


class StepTimer(L.Callback):
    """Records the time of every ``on_train_batch_end``."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        self.ends.append(time.perf_counter())

    def median_step(self, warmup: int) -> float:
        """Median interval between batch ends, skipping the first ``warmup`` steps."""
        gaps = [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)]
        return statistics.median(gaps[max(0, warmup - 1) :])


class Interleaved:
    """``cycles`` cycles of training batches: pre-made, pre-made, from ``cached``, pre-made, from
    ``pil`` (each pre-made batch of a cycle is ``premade[cycle % len(premade)]``)."""

    ROWS = ("model", "before cached", "cached", "before pil", "pil")

    def __init__(
        self, premade: list[Any], cached: DataLoader, pil: DataLoader, cycles: int
    ) -> None:
        self.premade, self.cached, self.pil, self.cycles = premade, cached, pil, cycles

    def __len__(self) -> int:
        return len(self.ROWS) * self.cycles

    def __iter__(self) -> Iterator[Any]:
        cached, pil = endless(self.cached), endless(self.pil)
        for c in range(self.cycles):
            p = self.premade[c % len(self.premade)]
            yield p
            yield p
            yield next(cached)  # fetched when Lightning asks for it, not at the cycle's start
            yield p
            yield next(pil)


def endless(loader: DataLoader) -> Iterator[Any]:
    """``loader``'s batches, epoch after epoch."""
    while True:
        yield from loader


def config(*overrides: str) -> DictConfig:
    """The real config with ``data=omniglot`` and ``overrides`` (``run_dir``: a temporary folder,
    nothing is written there)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "data=omniglot",
                "logger=csv",
                f"run_dir={tempfile.gettempdir()}/dml-bench",
                *overrides,
            ],
        )


def fit_steps(
    cfg: DictConfig, steps: int, datamodule: Any = None, loader: Any = None, module: Any = None
) -> StepTimer:
    """Train ``steps`` steps of ``module`` (default: ``cfg``'s, built after seeding) through
    Lightning; return their timings."""
    L.seed_everything(cfg.seed, verbose=False)
    timer = StepTimer()
    trainer = instantiate(
        cfg.trainer,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[timer],
        default_root_dir=None,
    )
    if module is None:
        module = build_module(cfg)
    if datamodule is not None:
        trainer.fit(module, datamodule=datamodule)
    else:
        trainer.fit(module, train_dataloaders=loader)
    return timer


def datamodule(cfg: DictConfig) -> tuple[Any, float]:
    """The config's DataModule, set up; with the seconds its setup took."""
    start = time.perf_counter()
    dm = instantiate(cfg.data)
    dm.setup("fit")
    return dm, time.perf_counter() - start


def premade_batches(dm: Any, n: int) -> list[Any]:
    """``n`` training batches of ``dm`` as the model receives them (augmented, normalised)."""
    batches = []
    for i, batch in enumerate(DataLoader(dm.datasets["train"], batch_sampler=sampler(dm))):
        if i == n:
            break
        batches.append(dm.augment(batch, 0) if batch[0].dtype == torch.uint8 else batch)
    return batches


def sampler(dm: Any) -> PKBatchSampler:
    """The P×K batch sampler of ``dm``'s training split, as its ``train_dataloader`` builds it."""
    return PKBatchSampler(dm.datasets["train"].labels, dm.batch_p, dm.batch_k, dm.seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed cycles (steps per row)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed cycles before them")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"conv4 / multisimilarity / AdamW on Omniglot 28 px, {torch.get_num_threads()} threads, "
        f"median of {args.steps} steps per row after {args.warmup} warm-up",
        flush=True,
    )

    setups = {cache: config(f"data.cache={str(cache).lower()}") for cache in (False, True)}
    if setups[True].keep_freed_memory:  # as dml-train does, before the data is loaded
        keep_freed_memory()
    dms = {cache: datamodule(cfg) for cache, cfg in setups.items()}
    dm = dms[True][0]
    cycles = args.warmup + args.steps
    batches = Interleaved(
        premade_batches(dm, 16),
        DataLoader(dm.datasets["train"], batch_sampler=sampler(dm)),
        DataLoader(dms[False][0].datasets["train"], batch_sampler=sampler(dms[False][0])),
        cycles,
    )
    L.seed_everything(setups[True].seed, verbose=False)
    module = build_module(setups[True])
    module.on_after_batch_transfer = dm.on_after_batch_transfer  # augments the cached batches
    timer = fit_steps(setups[True], len(batches), loader=batches, module=module)
    gaps = [b - a for a, b in zip(timer.ends, timer.ends[1:], strict=False)]  # step i: gaps[i-1]
    t = {
        row: statistics.median(
            gaps[c * len(Interleaved.ROWS) + k - 1] for c in range(args.warmup, cycles)
        )
        for k, row in enumerate(Interleaved.ROWS)
    }
    peer = t["model"]
    batch = dm.batch_p * dm.batch_k
    print(
        f"{'model only (pre-made batches)':<30} {peer * 1e3:8.1f} ms/step {batch / peer:6.0f} img/s"
    )
    for name, cache in (("pil", False), ("cached", True)):
        step = t[f"before {name}"] + t[name] - peer
        print(
            f"{f'pipeline, data.cache={str(cache).lower()}':<30} {step * 1e3:8.1f} ms/step "
            f"{batch / step:6.0f} img/s   ratio {peer / step:.2f} vs model only (bar 0.95)   "
            f"setup {dms[cache][1]:.1f} s"
        )

    if args.no_scaling:
        return
    print(
        "\nscaling (cached pipeline; epoch time ESTIMATED as median step x steps per epoch, "
        "training only)"
    )
    print(f"{'P x K':>8} {'dim':>5} {'ms/step':>9} {'img/s':>7} {'steps/epoch':>12} {'s/epoch':>8}")
    for p, dim in ((32, 128), (64, 128), (128, 128), (32, 64), (32, 512)):
        run_cfg = config("data.cache=true", f"data.batch_p={p}", f"model.embedding_dim={dim}")
        dm.batch_p = p  # same datasets, the new P
        timer = fit_steps(run_cfg, SCALING_WARMUP + SCALING_STEPS, datamodule=dm)
        step = timer.median_step(SCALING_WARMUP)
        per_epoch = len(sampler(dm))
        print(
            f"{f'{p} x {dm.batch_k}':>8} {dim:>5} {step * 1e3:9.1f} {p * dm.batch_k / step:7.0f} "
            f"{per_epoch:12d} {step * per_epoch:8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
