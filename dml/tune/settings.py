"""What a study is configured with (``hydra.sweeper.*``), and the checks made before any trial:
the objective is a logged validation metric, there are validation classes, the ranges hold the
config's defaults, a kept retrain run is of the setting asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from dml.errors import ConfigError
from dml.eval.retrieval import positive_ks
from dml.tune.edges import EDGE_FRACTION


@dataclass
class StudySettings:
    """``hydra.sweeper.*`` (conf/hydra/sweeper/optuna.yaml documents each value)."""

    objective: str = "val/map@r"
    n_trials: int = 12
    n_jobs: int = 1
    sampler: Any = None
    pruner: Any = None
    storage: str | None = None
    study_name: str | None = None
    enqueue_defaults: bool = True
    retrain_seeds: list[int] = field(default_factory=list)
    retrain_defaults: bool = True
    resume_running: bool = False
    edge_fraction: float = EDGE_FRACTION


def study_settings(settings: dict[str, Any]) -> StudySettings:
    """:class:`StudySettings` from ``hydra.sweeper``'s values; an unknown key is a one-line
    :class:`ConfigError`."""
    known = set(StudySettings.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"hydra.sweeper.{unknown[0]} is not a setting of the optuna sweeper "
                          f"(settings: {', '.join(sorted(known))})")
    seeds = settings.get("retrain_seeds") or []
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if not isinstance(seeds, list) or bad:
        raise ConfigError(f"hydra.sweeper.retrain_seeds must be a list of integers >= 0, got "
                          f"{seeds!r}: e.g. hydra.sweeper.retrain_seeds=[0,1,2]")
    return StudySettings(**settings)


def validation_metrics(cfg: DictConfig) -> list[str]:
    """The names a run logs for its validation split (``val/recall@K``, ``val/map@r``, …)."""
    ks = positive_ks(cfg.module.get("eval_ks") or [1])
    return [f"val/recall@{k}" for k in ks] + ["val/map@r", "val/r_precision"]


def check_objective(objective: str, cfg: DictConfig) -> None:
    logged = validation_metrics(cfg)
    if objective not in logged:
        raise ConfigError(
            f"hydra.sweeper.objective={objective} is not a validation metric this config logs "
            f"(one of {', '.join(logged)}; a study never looks at test)"
        )


def check_validation(cfg: DictConfig) -> None:
    """A study's trials need a validation split: ``data.val_folds``, ``data.val_holdout``, or one
    of the dataset's own."""
    data = cfg.data
    if data.get("val_folds") or data.get("val_holdout"):
        return
    from hydra.utils import instantiate

    if "val" not in instantiate(data.source).splits():
        raise ConfigError(
            "a study needs validation classes and this config has none: set data.val_holdout "
            "(e.g. 0.1) or data.val_folds (e.g. 4)"
        )


def default_values(space: dict[str, optuna.distributions.BaseDistribution],
                   cfg: DictConfig) -> dict[str, Any]:
    """The config's own value of each searched key, checked to lie inside its range (a space
    must contain the defaults the tuned setting is compared with)."""
    values = {}
    for key, dist in space.items():
        value = OmegaConf.select(cfg, key)
        try:
            inside = dist._contains(dist.to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            raise ConfigError(
                f"the search space of {key} does not contain the config's value {value!r}: "
                "widen hydra.sweeper.params so the tuned setting is compared with the default"
            )
        values[key] = value
    return values


def check_same_setting(run_dir: Path, wanted: list[str]) -> None:
    """A finished retrain run was made with the setting ``wanted`` (its ``.hydra/overrides.yaml``
    holds those overrides); otherwise a :class:`ConfigError`: the best setting changed since."""
    import yaml

    recorded = set(yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or [])
    if not set(wanted) <= recorded:
        raise ConfigError(
            f"{run_dir} holds a retrain of another setting (the best trial changed since): move "
            "it away to retrain the new best, or keep it with hydra.sweeper.n_trials unchanged"
        )
