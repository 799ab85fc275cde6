"""From a ``dml-train -m`` command line to studies: each combination of its swept values (e.g.
``search=sct,nca_semihard``) is one study with its own search space and directory."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf

from dml.errors import ConfigError
from dml.tune.settings import study_settings
from dml.tune.space import flat
from dml.tune.study import Study


def combinations(arguments: list[str]) -> list[tuple[list[str], str]]:
    """Each combination's overrides and its study directory's name: the swept value when one key
    is swept (``["search=a,b", "seed=1"]`` → ``(["search=a", "seed=1"], "a")``, …), ``key-value``
    pairs joined by ``_`` for several, ``""`` when nothing is swept."""
    choices: list[list[tuple[str, bool]]] = []
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override() and not override.is_discrete_sweep():
            raise ConfigError(f"{key}: the optuna sweeper runs one study per value of a comma "
                              "list; ranges to search go in hydra.sweeper.params")
        if override.is_sweep_override():
            choices.append([(f"{key}={v}", True) for v in override.sweep_string_iterator()])
        else:
            choices.append([(f"{key}={override.get_value_element_as_str()}", False)])
    result = []
    for combo in itertools.product(*choices):
        swept = [o.split("=", 1) for o, is_swept in combo if is_swept]
        name = swept[0][1] if len(swept) == 1 else "_".join(f"{k}-{v}" for k, v in swept)
        name = name.replace("/", "-").replace("=", "-")
        result.append(([o for o, _ in combo], name))
    return result


def run_studies(arguments: list[str], settings: dict[str, Any], master: DictConfig,
                loader: Any, launcher: Launcher) -> list[dict[str, Any]]:
    """Run (or resume) every study of the command line, one after another."""
    sweep_dir = Path(master.hydra.sweep.dir)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(master, sweep_dir / "multirun.yaml")
    except OSError as e:
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} cannot be written ({type(e).__name__}): "
                          "point it at a writable folder") from None
    next_job = itertools.count()
    summaries = []
    for fixed, name in combinations(arguments):
        config = loader.load_sweep_config(master, list(fixed))
        space = config.hydra.sweeper.get("params") or {}
        params = flat(OmegaConf.to_container(space, resolve=True))

        def launch(jobs: list[list[str]]) -> list:
            first = next(next_job)
            for _ in jobs[1:]:
                next(next_job)
            return list(launcher.launch(jobs, initial_job_idx=first))

        study = Study(study_settings(settings), params, config, list(fixed),
                      sweep_dir / name if name else sweep_dir, name, launch)
        summaries.append(study.run())
    return summaries
