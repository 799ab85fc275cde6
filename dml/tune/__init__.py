"""Hyperparameter search on Optuna's ask/tell API, driven by Hydra (``hydra/sweeper=optuna``).

``space`` turns a search-space config into trial overrides, ``storage`` opens a study on disk,
``reporter`` reports each epoch's validation objective to the study and stops pruned trials,
``study`` runs a study (trials, resumption, retraining of the best setting)."""
