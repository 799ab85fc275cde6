"""The retrieval grid a run draws at its end: ``eval.show`` queries of its final evaluation (the
test split; validation with ``test=false``) with their top-``eval.show_k`` neighbours, drawn as
``dml-eval --show`` draws them (:func:`dml.eval.retrieval_grid.write_retrieval_grid`) from the
embeddings that evaluation computed, into ``<run_dir>/retrieval_grid.png`` (and its ``.json``
table), and logged to an attached W&B logger as the image ``<split>/retrieval_grid``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from omegaconf import DictConfig
from torch import Tensor

from dml.config_checks import check_int
from dml.train.wandb_image import log_image_to_wandb

#: The grid's PNG in the run directory (its table: the ``.json`` of the same name).
GRID_FILE = "retrieval_grid.png"


def grid_size(cfg: DictConfig) -> tuple[int, int] | None:
    """``(eval.show, eval.show_k)``, checked; None when ``eval.show`` is 0 or null (or the config
    has no such key: a run made before it existed)."""
    settings = cfg.get("eval") or {}
    show = settings.get("show")
    if show is None or show == 0:
        return None
    check_int("eval.show", show, 0, "the queries of the end-of-run retrieval grid; 0: none", 8)
    k = settings.get("show_k", 5)
    check_int("eval.show_k", k, 1, "the neighbours per query in the retrieval grid", 5)
    return show, k


def final_split(cfg: DictConfig, has_val: bool) -> str | None:
    """The split of the run's final evaluation: ``test``, else ``val`` (``test=false``); None
    with neither."""
    return "test" if cfg.get("test", True) else "val" if has_val else None


def write_run_grid(
    trainer: L.Trainer,
    datamodule: L.LightningDataModule,
    split: str,
    parts: list[tuple[Tensor, Tensor]],
    run_dir: Path,
    size: tuple[int, int],
) -> Path:
    """Draw the grid of ``split`` (``parts``: the module's kept eval embeddings) into
    ``run_dir``, log it to the trainer's W&B loggers, and return the PNG's path."""
    from dml.eval.retrieval_grid import write_retrieval_grid

    n, k = size
    path = run_dir / GRID_FILE
    grid = write_retrieval_grid(datamodule, split, parts, path, n, k)
    worst = grid.kinds.count("worst")
    caption = (f"{len(grid.queries)} {split} queries ({worst} worst by precision@{k}, "
               f"{len(grid.queries) - worst} random), top-{k}: green correct, red wrong")
    log_image_to_wandb(trainer.loggers, path, trainer.global_step, key=f"{split}/retrieval_grid",
                       caption=caption)
    return path
