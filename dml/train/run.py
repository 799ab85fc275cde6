"""One training run from a composed config: fit, select on validation, test, write metrics.json."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from dml.errors import CheckpointError, ConfigError, RunDirError, RunInterrupted
from dml.files import write_text_atomic
from dml.losses.base import DMLLoss
from dml.losses.wrappers.compose import build_loss, check_wrappers
from dml.provenance import provenance
from dml.runs.run_dir import (
    claim,
    is_launch_rank_zero,
    mark_interrupted,
    register_resolvers,
    write_records,
)
from dml.slurm import cluster_plugins, requeued
from dml.train.allocator import keep_freed_memory
from dml.train.callbacks.wall_clock import WallClock
from dml.train.checkpoint_io import SafeCheckpointIO
from dml.train.checkpointing import load_checkpoint_file
from dml.train.module import DMLModule
from dml.train.run_grid import final_split, grid_size, write_run_grid
from dml.wandb_run import run_id


def build_module(cfg: DictConfig) -> DMLModule:
    """The LightningModule of a config (backbone, loss, optimizer and scheduler factories)."""
    optimizer = instantiate(cfg.optimizer)
    try:  # an impossible optimizer setting fails here, not after the first epoch
        optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"optimizer: {e} (check the optimizer.* values)") from None
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    loss = build_loss(cfg)
    return DMLModule(
        net=instantiate(cfg.model),
        loss=loss,
        optimizer=optimizer,
        scheduler=scheduler,
        seed=cfg.seed,
        config=OmegaConf.to_container(cfg, resolve=True),
        eval_backend=cfg.get("eval", {}).get("backend", "torch"),  # older runs: no eval group
        **cfg.module,
    )


def check_batches_form_tuples(loss: torch.nn.Module, batch_p: int, batch_k: int) -> None:
    """A loss that mines tuples from the batch needs positives (K >= 2 images of a class) and
    negatives (P >= 2 classes); otherwise every batch has no tuple and nothing trains. (A loss
    that does not :attr:`~dml.losses.base.DMLLoss.mines_tuples`, the PML bridge, is not checked:
    a proxy loss trains on any batch.)"""
    mines_tuples = isinstance(loss, DMLLoss) and loss.mines_tuples
    if mines_tuples and (batch_k < 2 or batch_p < 2):
        raise ConfigError(
            f"data.batch_p={batch_p} classes × data.batch_k={batch_k} images per batch form "
            f"no {type(loss).__name__} tuple (a positive needs K >= 2, a negative P >= 2)"
        )


def trial_reporter(cfg: DictConfig) -> L.Callback | None:
    """A study's trial (``trial.*``, set by ``hydra/sweeper=optuna``) reports its objective every
    epoch and stops when its pruner says so; with ``data.val_folds`` each fold has its own steps."""
    trial = cfg.get("trial")
    if not trial:
        return None
    from dml.tune.reporter import TrialReporter

    fold = cfg.data.get("val_fold", 0) if cfg.data.get("val_folds") else 0
    return TrialReporter(trial.storage, trial.study, trial.number, trial.objective,
                         step_offset=fold * cfg.trainer.max_epochs)


def finish_runs(loggers: list) -> None:
    """End the loggers' runs: a W&B run left open would take in the next job of an in-process
    multirun (Lightning's WandbLogger attaches to a live ``wandb.run``)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def resumes(cfg: DictConfig, run_dir: Path) -> bool:
    """True if ``ckpt_path`` continues the run of ``run_dir`` (``last``, or one of its own
    checkpoints); a checkpoint from elsewhere only initialises a new run."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return False
    own = (run_dir / "checkpoints").resolve()
    return ckpt_path == "last" or Path(ckpt_path).resolve().parent == own


#: The config groups that define a run's experiment: a resumed run may change them only with
#: ``resume_changes=true`` (and the change is recorded in its ``changes.json``).
EXPERIMENT_KEYS = ("loss", "memory", "synthesis", "model", "data")
#: Settings inside them that change how the run computes, not what it trains.
HOW_KEYS = frozenset({
    "model.pretrained", "model.pretrained_file", "model.channels_last", "model.compile",
    "data.num_workers", "data.eval_batch_size", "data.cache", "data.source.root",
    "data.source.download",
})
CHANGES_FILE = "changes.json"


def changed_keys(old: Any, new: Any, path: str = "") -> list[str]:
    """The dotted keys whose values differ between the resolved configs ``old`` and ``new``,
    within :data:`EXPERIMENT_KEYS` and outside :data:`HOW_KEYS`."""
    if path in HOW_KEYS:
        return []
    if not path or (isinstance(old, dict) and isinstance(new, dict)):
        old, new = old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}
        keys = EXPERIMENT_KEYS if not path else sorted(old.keys() | new.keys())
        return [k for key in keys for k in changed_keys(old.get(key), new.get(key),
                                                         f"{path}.{key}".lstrip("."))]
    return [] if old == new else [path]


def _value(config: dict, key: str) -> Any:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def experiment_changes(cfg: DictConfig, stored: dict, module: DMLModule, path: Path,
                       done: int) -> dict[str, Any] | None:
    """The record of what resuming from ``path`` changes in the experiment (``{"epoch": done,
    "changes": {key: [old, new]}}``), None if nothing; a :class:`RunDirError` unless
    ``resume_changes=true``."""
    keys = changed_keys(stored, module.config)
    if not keys:
        return None
    changes = {k: [_value(stored, k), _value(module.config, k)] for k in keys}
    if not cfg.get("resume_changes"):
        old, new = changes[keys[0]]
        more = f" and {len(keys) - 1} more setting(s)" if len(keys) > 1 else ""
        raise RunDirError(
            f"resuming {path} would change {keys[0]} from {old!r} to {new!r}{more}, mixing two "
            "experiments in one run: resume with the run's own settings, or pass "
            "resume_changes=true to train on with the change (recorded in changes.json)"
        )
    return {"epoch": done, "changes": changes}


def record_changes(run_dir: Path, change: dict[str, Any] | None) -> None:
    """Append ``change`` (:func:`experiment_changes`) to the run's ``changes.json``."""
    if change is None:
        return
    path = run_dir / CHANGES_FILE
    history = json.loads(path.read_text()) if path.is_file() else []
    write_text_atomic(path, json.dumps([*history, change], indent=2) + "\n")


def resume_checkpoint(
    cfg: DictConfig, run_dir: Path, module: DMLModule
) -> tuple[str | None, dict[str, Any] | None]:
    """The checkpoint to start from (``ckpt_path``; ``last``: the run's own ``last.ckpt``) and,
    when it continues this run, what the new config changes in its experiment
    (:func:`experiment_changes`); checked before anything is written: it loads safely, its
    weights fit ``module``, it has epochs left to train, and the experiment is the same (or
    ``resume_changes=true``). A run killed before its first checkpoint restarts from the
    beginning; one that trained but lost its ``last.ckpt`` is refused."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return None, None
    path = run_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if ckpt_path == "last" and not path.exists():
        trained = [p.relative_to(run_dir) for p in (run_dir / "metrics.json",
                                                     *sorted(run_dir.glob("checkpoints/*.ckpt")))
                   if p.is_file()]
        if trained:
            raise RunDirError(
                f"cannot resume {run_dir}: {path} is missing but the run has trained "
                f"({', '.join(map(str, trained))} exist): restore last.ckpt, or train into a new "
                "directory (hydra.run.dir=...)"
            )
        warnings.warn(
            f"{path} not found: the run stopped before its first epoch ended; training it from "
            "the start",
            stacklevel=2,
        )
        return None, None
    ckpt = load_checkpoint_file(path)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        fix = ("resume_changes=true allows only changes that fit the run's weights and state (not "
               "another model shape, nor adding or dropping a memory): train the new setting in a "
               "new directory (hydra.run.dir=...)" if cfg.get("resume_changes")
               else "resume with the run's own settings")
        raise CheckpointError(
            f"{path} does not fit this config's model or loss ({first[0].strip()}): {fix}"
        ) from None
    done = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    done = done.get("current", {}).get("processed", ckpt.get("epoch", -1) + 1)
    max_epochs = cfg.trainer.get("max_epochs")
    finished = (run_dir / "metrics.json").exists()
    if max_epochs not in (None, -1) and (done > max_epochs or (done == max_epochs and finished)):
        raise RunDirError(
            f"{path} has trained {done} epochs and trainer.max_epochs={max_epochs}: nothing to "
            f"resume (pass trainer.max_epochs > {done} to train it longer)"
        )
    if not resumes(cfg, run_dir):
        return str(path), None
    return str(path), experiment_changes(cfg, ckpt.get("dml_config") or {}, module, path, done)


def stop_interrupted(run_dir: Path, epoch: int, primary: bool) -> NoReturn:
    """The run received SIGTERM (a scheduler's time limit, ``scancel``, ``kill``): Lightning
    stopped it at the next step with ``SIGTERMException``, a ``SystemExit`` whose exit code 0
    a scheduler would record as success. Leave the ``interrupted`` marker (``dml-report`` lists
    the run as interrupted; resuming and finishing it removes the marker) and raise a one-line
    :class:`RunInterrupted` (exit code 2). One place, so that a requeue can build on it."""
    reason = f"SIGTERM at epoch {epoch}"
    if primary:
        mark_interrupted(run_dir, reason)
    raise RunInterrupted(f"{run_dir} was interrupted ({reason}): resume it with "
                         f"`dml-train resume={run_dir}`")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, pick the best validation checkpoint, test it; returns what metrics.json holds.

    The run directory is claimed first (:func:`dml.runs.run_dir.claim`): a second run cannot write
    into it, and nothing is written there before the data, model, loss and resume checkpoint
    have passed their checks. A SLURM job requeued after preemption or its time limit resumes the
    run its first start began there (:mod:`dml.slurm`)."""
    register_resolvers()  # the config is resolved below (a caller may not have composed it here)
    run_dir = Path(cfg.run_dir)
    if requeued(run_dir):  # SLURM started this job again: it continues its own run
        if (run_dir / "metrics.json").exists():  # requeued after the run had finished
            return json.loads((run_dir / "metrics.json").read_text())
        cfg.ckpt_path = "last"
    primary = is_launch_rank_zero()  # DDP workers read the directory, rank 0 owns it
    with claim(run_dir, resumes(cfg, run_dir)) if primary else contextlib.nullcontext():
        return _run(cfg, run_dir, primary)


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU accelerator (``trainer=ddp``) needs a visible CUDA GPU."""
    accelerator = cfg.trainer.get("accelerator")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible: for "
                          "DDP on CPU processes use trainer=ddp_cpu, else trainer.accelerator=cpu")


def _run(cfg: DictConfig, run_dir: Path, primary: bool) -> dict[str, Any]:
    start = time.time()
    check_accelerator(cfg)
    grid = grid_size(cfg)
    if cfg.get("keep_freed_memory"):
        keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    module = build_module(cfg)
    check_batches_form_tuples(module.loss, datamodule.batch_p, datamodule.batch_k)
    check_wrappers(module.loss, datamodule.batch_p * datamodule.batch_k, module.net.embedding_dim)
    ckpt_path, change = resume_checkpoint(cfg, run_dir, module)
    if primary:
        write_records(run_dir, cfg)
        record_changes(run_dir, change)

    callbacks = {k: instantiate(c) for k, c in (cfg.get("callbacks") or {}).items() if c}
    has_val = "val" in datamodule.datasets
    if not has_val and callbacks.pop("best_checkpoint", None) is not None:
        warnings.warn("no validation split: the last checkpoint is the selected one", stacklevel=1)
    reporter = trial_reporter(cfg)
    if reporter is not None:
        callbacks["trial_reporter"] = reporter
    callbacks["wall_clock"] = clock = WallClock(start)
    made_by = provenance()
    loggers = [instantiate(c, **run_id(c, run_dir, primary))
               for c in (cfg.get("logger") or {}).values() if c]
    for logger in loggers:  # so W&B / CSV can filter and group runs by any config value
        logger.log_hyperparams({**module.config, "provenance": made_by})
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        default_root_dir=str(run_dir),
        callbacks=list(callbacks.values()),
        logger=loggers or False,
        plugins=[SafeCheckpointIO(), *cluster_plugins()],
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

        chosen = callbacks.get("best_checkpoint") or callbacks.get("last_checkpoint")
        selected = (chosen.best_model_path or None) if chosen is not None else None
        result: dict[str, Any] = {"run_dir": str(run_dir), "checkpoint": selected}
        if reporter is not None:
            result["pruned_at"] = reporter.pruned_at
        shown = final_split(cfg, has_val) if grid is not None else None
        if has_val:  # the final evaluation keeps its embeddings for the grid (nothing re-embeds)
            module.keep_eval_embeddings = shown == "val"
            trainer.validate(module, datamodule=datamodule, ckpt_path=selected, verbose=False)
            result["val"] = module.eval_metrics.get("val", {})
        if cfg.get("test", True):
            module.keep_eval_embeddings = shown == "test"
            trainer.test(module, datamodule=datamodule, ckpt_path=selected, verbose=False)
            result["test"] = module.eval_metrics.get("test", {})
        result["epochs"] = trainer.current_epoch
        result["wall_time_s"] = round(clock.elapsed(), 1)
        result["provenance"] = made_by
        if trainer.is_global_zero:
            write_text_atomic(run_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
            mark_interrupted(run_dir, None)
            print(
                f"run directory: {run_dir}\n  metrics: {run_dir / 'metrics.json'}\n"
                f"  checkpoint: {selected}\n  logs: {run_dir / 'csv'}"
            )
            if shown is not None and module.eval_embeddings.get(shown):
                try:  # a picture: failing to draw it must not fail a finished, recorded run
                    path = write_run_grid(trainer, datamodule, shown,
                                          module.eval_embeddings[shown], run_dir, grid)
                    print(f"  retrieval grid: {path}")
                except Exception as err:
                    warnings.warn(f"retrieval grid not drawn: {err}", RuntimeWarning,
                                  stacklevel=1)
        return result
    except SIGTERMException:
        stop_interrupted(run_dir, trainer.current_epoch, primary)
    finally:
        finish_runs(loggers)
