"""Hydra discovers sweepers under the ``hydra_plugins`` namespace: this is dml's Optuna sweeper
(``hydra/sweeper=optuna``); the work is done in :mod:`dml.tune`."""
