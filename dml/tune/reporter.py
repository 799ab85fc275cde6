"""The trial side of a study: report the validation objective every epoch, stop when pruned."""

from __future__ import annotations

import lightning as L
import optuna
from lightning.pytorch.trainer.states import TrainerFn

from dml.errors import ConfigError
from dml.tune.storage import load_study


class TrialReporter(L.Callback):
    """After each validation epoch, reports ``objective`` (e.g. ``val/map@r``) to trial ``number``
    of the study at step ``step_offset + epoch`` and asks its pruner (median, Hyperband, …) whether
    to go on; a pruned run stops at the end of that epoch (``pruned_at`` holds the epoch), on every
    rank. ``step_offset`` separates the folds of a cross-validated trial. A trial is never pruned
    at its last epoch: stopping there saves nothing and loses a finished trial."""

    def __init__(self, storage: str, study: str, number: int, objective: str,
                 step_offset: int = 0) -> None:
        self.storage, self.study_name, self.number = storage, study, number
        self.objective, self.step_offset = objective, step_offset
        self.pruned_at: int | None = None
        self._trial: optuna.Trial | None = None

    def trial(self) -> optuna.Trial:
        if self._trial is None:
            study = load_study(self.storage, self.study_name)
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(
                study._study_id, self.number
            )
            self._trial = optuna.Trial(study, trial_id)
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # the selected checkpoint's re-validation after fit reports nothing
        value = trainer.callback_metrics.get(self.objective)
        if value is None:
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
            raise ConfigError(
                f"hydra.sweeper.objective={self.objective} is not a logged metric; "
                f"logged: {', '.join(logged)}"
            )
        prune = False
        epochs = trainer.max_epochs
        last = epochs not in (None, -1) and trainer.current_epoch + 1 >= epochs
        if trainer.is_global_zero:
            trial = self.trial()
            trial.report(float(value), step=self.step_offset + trainer.current_epoch)
            prune = not last and trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True
