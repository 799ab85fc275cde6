"""One training run from a composed config: fit, select on validation, test, write metrics.json."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dml.checkpointing import AtomicCheckpointIO
from dml.models import DMLModule


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def build_module(cfg: DictConfig) -> DMLModule:
    """The LightningModule of a config (backbone, loss, optimizer and scheduler factories)."""
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return DMLModule(
        net=instantiate(cfg.model),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler,
        seed=cfg.seed,
        config=OmegaConf.to_container(cfg, resolve=True),
        **cfg.module,
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, pick the best validation checkpoint, test it; returns what metrics.json holds."""
    start = time.time()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    module = build_module(cfg)
    callbacks = {k: instantiate(c) for k, c in (cfg.get("callbacks") or {}).items() if c}
    has_val = "val" in datamodule.datasets
    if not has_val and callbacks.pop("best_checkpoint", None) is not None:
        warnings.warn("no validation split: the last checkpoint is the selected one", stacklevel=1)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    for logger in loggers:  # so W&B / CSV can filter and group runs by any config value
        logger.log_hyperparams(module.config)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        default_root_dir=str(run_dir),
        callbacks=list(callbacks.values()),
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        ckpt_path = str(run_dir / "checkpoints" / "last.ckpt")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    chosen = callbacks.get("best_checkpoint") or callbacks.get("last_checkpoint")
    selected = (chosen.best_model_path or None) if chosen is not None else None
    result: dict[str, Any] = {"run_dir": str(run_dir), "checkpoint": selected}
    if has_val:
        trainer.validate(module, datamodule=datamodule, ckpt_path=selected, verbose=False)
        result["val"] = module.eval_metrics.get("val", {})
    if cfg.get("test", True):
        trainer.test(module, datamodule=datamodule, ckpt_path=selected, verbose=False)
        result["test"] = module.eval_metrics.get("test", {})
    result["epochs"] = trainer.current_epoch
    result["wall_time_s"] = round(time.time() - start, 1)
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "metrics.json", result)
        print(
            f"run directory: {run_dir}\n  metrics: {run_dir / 'metrics.json'}\n"
            f"  checkpoint: {selected}\n  logs: {run_dir / 'csv'}"
        )
    return result
