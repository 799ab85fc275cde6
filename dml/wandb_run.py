"""A run's identity in W&B, so a team can read a project: its group (one per sweep or study
directory), name (strategy and seed, and the trial number of a study's trial), tags (loss,
memory, synthesis, dataset, seed) and id (kept in the run directory: a resumed run continues
the same W&B run). ``conf/logger/default.yaml`` asks for these through the resolvers below;
``job_type`` is a plain value there (``train``), set by a study for its trials and retrains."""

from __future__ import annotations

import hashlib
import secrets
import string
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dml.files import write_text_atomic

#: Where a run directory keeps the id of its W&B run.
ID_FILE = Path("wandb") / "run_id"
#: W&B's longest group name.
MAX_GROUP = 128


def group_name(directory: str | Path) -> str:
    """The W&B group of the runs under ``directory``: its last two path components and a hash
    of its absolute path, ``a/hcl-1f3c9a2b``: studies/a/hcl and studies/b/hcl never share one."""
    path = Path(directory).resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    readable = "/".join(path.parts[-2:])
    return f"{readable[-(MAX_GROUP - 9):]}-{digest}"


def _choices() -> dict[str, Any]:
    """Hydra's runtime choices (which config of each group this job composed), {} outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def sweep_group() -> str | None:
    """``${dml.sweep_group:}``: the group of a ``-m`` job's sweep directory, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return group_name(HydraConfig.get().sweep.dir)


def run_name(seed: int, trial: int | None = None) -> str | None:
    """``${dml.run_name:${seed},<trial number>}``: ``sct-seed0``, ``multisimilarity+xbm-seed1``,
    ``sct-seed0-trial3``; None (W&B's own) outside Hydra."""
    from dml.runs.records import chosen_wrappers, strategy_name

    choices = _choices()
    if not choices.get("loss"):
        return None
    name = f"{strategy_name(choices['loss'], chosen_wrappers(choices))}-seed{seed}"
    return name if trial is None else f"{name}-trial{trial}"


def run_tags(seed: int) -> list[str]:
    """``${dml.run_tags:${seed}}``: ``loss=sct``, ``memory=xbm`` (``none``), ``synthesis=…``,
    ``data=omniglot``, ``seed=0``."""
    choices = _choices()
    groups = ("loss", "memory", "synthesis", "data")
    tags = [f"{g}={choices.get(g) or 'none'}" for g in groups if choices]
    return [*tags, f"seed={seed}"]


# the resolvers conf/logger/default.yaml names (registered by dml.runs.run_dir.register_resolvers)
RESOLVERS = {"dml.sweep_group": sweep_group, "dml.run_name": run_name, "dml.run_tags": run_tags}


def is_wandb(logger: DictConfig) -> bool:
    return str(logger.get("_target_", "")).endswith("WandbLogger")


def run_id(logger: DictConfig, run_dir: Path, primary: bool) -> dict[str, Any]:
    """``{"id": ...}`` for a W&B logger config without one: the id kept in ``run_dir`` (a
    resumed run), else a new one, kept there by the process that owns the directory. {} for
    other loggers or an id set by hand."""
    if not is_wandb(logger) or logger.get("id"):
        return {}
    path = run_dir / ID_FILE
    if path.is_file():
        return {"id": path.read_text().strip()}
    if not primary:
        return {}
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, new + "\n")
    return {"id": new}
