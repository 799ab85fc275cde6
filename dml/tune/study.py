"""Run a study: ask Optuna for trials, launch them through Hydra's launcher, tell the outcomes;
then retrain the best setting (and the config's defaults) with several seeds and test them.

Layout under the study directory (``hydra.sweep.dir``, or one subdirectory per combination of
the command line's other sweeps)::

    optuna.journal            the study (Optuna journal; or hydra.sweeper.storage)
    trial_<n>/[fold_<i>/]      one run directory per trial (per fold with data.val_folds)
    best_seed<s>/              the best setting retrained on all training classes, tested
    defaults_seed<s>/          the config's own values, same protocol (the untuned baseline)
    study.json                 what dml-report reads: tuned values, trial counts, retrain runs

Every stage resumes: finished trials are not run again, a trial interrupted with its sweeper
(same host, process gone) continues from its ``last.ckpt``, and a retrain run with a
``metrics.json`` is skipped."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from dml.errors import ConfigError, DivergenceError
from dml.eval.retrieval import positive_ks
from dml.files import write_text_atomic
from dml.tune.space import check_space, distributions, overrides
from dml.tune.storage import PRUNER_ATTR, open_storage

Launch = Callable[[list[list[str]]], Sequence[JobReturn]]
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# A diverged trial scores the worst value of a retrieval metric, so the sampler learns to avoid
# its region (Optuna's samplers ignore failed trials).
DIVERGED_VALUE = 0.0


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


def _sweeper_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _orphaned(trial: optuna.trial.FrozenTrial, adopt: bool = False) -> bool:
    """A running trial whose sweeper process (on this host) is gone: it was interrupted.
    ``adopt``: any running trial of another process (the user knows no other sweeper is alive,
    e.g. on another machine after a restart)."""
    host, _, pid = str(trial.user_attrs.get("sweeper", "")).rpartition(":")
    if trial.state != optuna.trial.TrialState.RUNNING:
        return False
    if host != socket.gethostname():
        return adopt
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def _job_error(ret: JobReturn) -> BaseException | None:
    if ret.status == JobStatus.COMPLETED:
        return None
    error = ret._return_value
    return error if isinstance(error, BaseException) else RuntimeError(str(error))


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


@dataclass
class Study:
    """One study of one search space (``params``) over the job config ``fixed`` composes to."""

    settings: StudySettings
    params: dict[str, Any]
    config: DictConfig  # a job's composed config (no trial values), for checks and defaults
    fixed: list[str]  # the command line's overrides of this study
    directory: Path
    subdir: str  # the study directory relative to hydra.sweep.dir
    launch: Launch
    name: str = ""
    storage: str = ""
    folds: int = 0
    _study: optuna.Study | None = None

    def __post_init__(self) -> None:
        s = self.settings
        self.storage = s.storage or str((self.directory / "optuna.journal").resolve())
        self.name = s.study_name or str(self.directory)
        self.folds = int(self.config.data.get("val_folds") or 0)
        if s.n_trials < 0 or s.n_jobs < 1:
            raise ConfigError("hydra.sweeper.n_trials must be >= 0 and hydra.sweeper.n_jobs >= 1")
        check_objective(s.objective, self.config)
        check_space(self.params, self.config)
        self.space = distributions(self.params)

    # -- the Optuna study -------------------------------------------------------------------
    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            from hydra.utils import instantiate

            storage = open_storage(self.storage)
            self._study = optuna.create_study(
                storage=storage,
                study_name=self.name,
                direction="maximize",
                sampler=self._sampler(storage),
                pruner=instantiate(self.settings.pruner) if self.settings.pruner else None,
                load_if_exists=True,
            )
            # trials decide on pruning in their own processes: they rebuild the pruner from here
            self._study.set_user_attr(PRUNER_ATTR, self.settings.pruner)
        return self._study

    def _sampler(self, storage: optuna.storages.BaseStorage) -> optuna.samplers.BaseSampler | None:
        """The configured sampler; its seed is offset by the trials already in the study, so a
        resumed study draws new points instead of repeating the first session's draws."""
        from hydra.utils import instantiate

        config = self.settings.sampler
        if not config:
            return None
        seed = config.get("seed")
        if seed is not None:
            done = next((len(storage.get_all_trials(s._study_id, deepcopy=False))
                         for s in storage.get_all_studies() if s.study_name == self.name), 0)
            return instantiate(config, seed=seed + done)
        return instantiate(config)

    def _set_attr(self, number: int, key: str, value: Any) -> None:
        """A user attribute of trial ``number`` (Optuna sets them only through a live Trial)."""
        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        storage.set_trial_user_attr(trial_id, key, value)

    def defaults(self) -> dict[str, Any]:
        return default_values(self.space, self.config)

    def counted(self) -> list[optuna.trial.FrozenTrial]:
        """Trials that count towards ``n_trials``: complete, pruned, or failed (not interrupted)."""
        return [t for t in self.study.get_trials(deepcopy=False)
                if t.state in FINISHED or t.state == optuna.trial.TrialState.FAIL]

    # -- jobs -------------------------------------------------------------------------------
    def _trial_jobs(self, number: int, values: dict[str, Any], resume: bool) -> list[list[str]]:
        s = self.settings
        base = [
            *self.fixed,
            *overrides(values),
            f"+trial.number={number}",
            f"+trial.study='{self.name}'",
            f"+trial.storage='{self.storage}'",
            f"+trial.objective={s.objective}",
            "test=false",
            *self._monitor(),
            *(["ckpt_path=last"] if resume else []),
            *self._group(),
        ]
        where = f"{self.subdir}/trial_{number}".lstrip("/")
        if not self.folds:
            return [[*base, f"hydra.sweep.subdir={where}"]]
        return [[*base, f"data.val_fold={i}", f"hydra.sweep.subdir={where}/fold_{i}"]
                for i in range(self.folds)]

    def _monitor(self) -> list[str]:
        """Trials and retrains select their checkpoint on the objective too."""
        if OmegaConf.select(self.config, "callbacks.best_checkpoint.monitor") is None:
            return []
        return [f"callbacks.best_checkpoint.monitor={self.settings.objective}"]

    def _group(self) -> list[str]:
        """A study's trials and retrains form one W&B group, named after the study."""
        if OmegaConf.select(self.config, "logger.wandb") is None:
            return []
        return [f"logger.wandb.group='{self.name}'"]

    def _outcome(self, number: int, returns: Sequence[JobReturn]) -> None:
        """Tell the study what the trial's jobs (one per fold) returned."""
        metric = self.settings.objective.split("/", 1)[1]
        values, pruned = [], False
        for ret in returns:
            error = _job_error(ret)
            if isinstance(error, DivergenceError):
                self._set_attr(number, "diverged", str(error).splitlines()[0])
                values.append(DIVERGED_VALUE)
                continue
            if error is not None:
                self.study.tell(number, state=optuna.trial.TrialState.FAIL)
                raise error  # a config or data error (or a bug) would fail every trial
            result = ret.return_value or {}
            pruned |= result.get("pruned_at") is not None
            values.append(float(result.get("val", {}).get(metric, DIVERGED_VALUE)))
        if pruned:
            self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(number, sum(values) / len(values))

    def run_trials(self) -> None:
        study = self.study
        if self.settings.enqueue_defaults and not study.get_trials(deepcopy=False):
            study.enqueue_trial(self.defaults())
        adopt = self.settings.resume_running
        orphans = [t for t in study.get_trials(deepcopy=False) if _orphaned(t, adopt)]
        while True:
            batch: list[tuple[int, list[list[str]]]] = []
            for t in orphans[: self.settings.n_jobs]:  # interrupted: continue from last.ckpt
                self._set_attr(t.number, "sweeper", _sweeper_id())
                batch.append((t.number, self._trial_jobs(t.number, t.params, resume=True)))
            orphans = orphans[len(batch):]
            live = sum(t.state == optuna.trial.TrialState.RUNNING and not _orphaned(t)
                       for t in study.get_trials(deepcopy=False))  # ours and other sweepers'
            room = self.settings.n_trials - len(self.counted()) - live - len(orphans)
            for _ in range(min(self.settings.n_jobs - len(batch), max(room, 0))):
                trial = study.ask(self.space)
                trial.set_user_attr("sweeper", _sweeper_id())
                batch.append((trial.number, self._trial_jobs(trial.number, trial.params, False)))
            if not batch:
                return
            returns = list(self.launch([job for _, jobs in batch for job in jobs]))
            for number, jobs in batch:
                self._outcome(number, returns[: len(jobs)])
                returns = returns[len(jobs):]

    def best(self) -> optuna.trial.FrozenTrial | None:
        complete = [t for t in self.study.get_trials(deepcopy=False)
                    if t.state == optuna.trial.TrialState.COMPLETE
                    and "diverged" not in t.user_attrs]
        return max(complete, key=lambda t: t.value) if complete else None

    def retrain(self) -> dict[str, list[str]]:
        """The best setting (and the defaults) with each of ``retrain_seeds``, trained on all
        training classes (no validation hold-out: the last epoch is the selected checkpoint) and
        tested. Runs that finished are skipped; an interrupted one resumes."""
        best = self.best()
        settings: dict[str, dict[str, Any]] = {}
        if self.settings.retrain_defaults:
            settings["defaults"] = self.defaults()
        if best is not None and best.params != settings.get("defaults"):
            settings["best"] = best.params
        runs: dict[str, list[str]] = {}
        jobs = []
        for name, values in settings.items():
            for seed in self.settings.retrain_seeds:
                run_dir = self.directory / f"{name}_seed{seed}"
                runs.setdefault(name, []).append(run_dir.name)
                if (run_dir / "metrics.json").exists():
                    continue
                where = f"{self.subdir}/{run_dir.name}".lstrip("/")
                jobs.append([
                    *self.fixed, *overrides(values), f"seed={seed}", "test=true",
                    "data.val_holdout=0", "data.val_folds=0",
                    *(["ckpt_path=last"] if run_dir.exists() else []),
                    *self._group(),
                    f"hydra.sweep.subdir={where}",
                ])
        for ret in self.launch(jobs) if jobs else []:
            error = _job_error(ret)
            if error is not None:
                raise error
        if best is not None and "best" not in settings and "defaults" in runs:
            runs["best"] = runs["defaults"]  # the defaults won: their runs are the tuned ones too
        return runs

    def summary(self, runs: dict[str, list[str]]) -> dict[str, Any]:
        trials = self.study.get_trials(deepcopy=False)
        state = optuna.trial.TrialState
        best = self.best()
        choices = OmegaConf.select(self.config, "hydra.runtime.choices", default={}) or {}
        return {
            "study": self.name,
            "storage": self.storage,
            "objective": self.settings.objective,
            "strategy": choices.get("loss"),
            "search": choices.get("search"),
            "overrides": self.fixed,
            "folds": self.folds,
            "trials": {
                "complete": sum(t.state == state.COMPLETE for t in trials),
                "pruned": sum(t.state == state.PRUNED for t in trials),
                "failed": sum(t.state == state.FAIL for t in trials),
                "diverged": sum("diverged" in t.user_attrs for t in trials),
            },
            "defaults": self.defaults(),
            "defaults_value": next((t.value for t in trials if t.state == state.COMPLETE
                                    and t.params == self.defaults()), None),
            "best": None if best is None else {
                "number": best.number, "value": best.value, "params": best.params,
            },
            "runs": runs,
        }

    def run(self) -> dict[str, Any]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.run_trials()
        summary = self.summary(self.retrain() if self.settings.retrain_seeds else {})
        write_text_atomic(self.directory / "study.json", json.dumps(summary, indent=2) + "\n")
        return summary
