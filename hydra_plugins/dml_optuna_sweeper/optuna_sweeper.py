"""``hydra/sweeper=optuna``: Hydra's sweeper interface over :mod:`dml.tune` (Optuna ask/tell).

Hydra's own ``hydra-optuna-sweeper`` pins ``optuna<3`` in its latest release (1.2.0); this one
uses current Optuna, adds per-epoch pruning, resumable studies, cross-validated trials and the
retraining of the best setting (conf/hydra/sweeper/optuna.yaml)."""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class OptunaSweeper(Sweeper):
    """One Optuna study per combination of the command line's other sweeps (e.g.
    ``search=sct,nca_semihard`` runs two studies), each maximising a validation metric."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from dml.cli.errors import exit_on_user_error
        from dml.tune.sweep import run_studies

        assert self.config is not None
        settings = {k: v for k, v in self.settings.items() if k != "params"}
        settings = OmegaConf.to_container(OmegaConf.create(settings), resolve=False)
        with exit_on_user_error():
            return run_studies(
                arguments, settings, self.config, self.hydra_context.config_loader, self.launcher
            )
