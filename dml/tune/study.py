"""Run a study: ask Optuna for trials, launch them through Hydra's launcher, tell the outcomes;
then retrain the best setting (and the config's defaults) with several seeds and test them.

Layout under the study directory (``hydra.sweep.dir``, or one subdirectory per combination of
the command line's other sweeps)::

    optuna.journal            the study (Optuna journal; or hydra.sweeper.storage)
    trial_<n>/[fold_<i>/]      one run directory per trial (per fold with data.val_folds)
    best_seed<s>/              the best setting retrained on all training classes, tested
    defaults_seed<s>/          the config's own values, same protocol (the untuned baseline)
    study.json                 what dml-report reads: tuned values, trial counts, retrain runs

Every stage resumes: finished trials are not run again; a trial interrupted with its sweeper
(no job of it holds its run directory's lock, and its sweeper process is gone from this host, or
``resume_running``) continues job by job: a finished job's ``metrics.json`` is reused, a started
one continues from its ``last.ckpt``, the others start; a retrain run with a ``metrics.json`` of
the same setting is kept. With ``data.val_folds`` a trial's folds run one after another and a
pruned fold ends the trial."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from dml.errors import ConfigError, DivergenceError, UserError
from dml.files import write_text_atomic
from dml.runs.records import chosen_wrappers, strategy_name
from dml.runs.run_dir import resume_overrides
from dml.tune.edges import range_edges
from dml.tune.liveness import lock_held, sweeper_gone, sweeper_id
from dml.tune.settings import (
    StudySettings,
    check_objective,
    check_same_setting,
    check_validation,
    default_values,
)
from dml.tune.space import (
    check_space,
    check_stored_space,
    distributions,
    override_value,
    overrides,
)
from dml.tune.storage import PRUNER_ATTR, open_storage
from dml.wandb_run import group_name

Launch = Callable[[list[list[str]]], Sequence[JobReturn]]
# A diverged trial scores the worst value of a retrieval metric, so the sampler learns to avoid
# its region (Optuna's samplers ignore failed trials).
DIVERGED_VALUE = 0.0


def _job_error(ret: JobReturn) -> BaseException | None:
    if ret.status == JobStatus.COMPLETED:
        return None
    error = ret._return_value
    return error if isinstance(error, BaseException) else RuntimeError(str(error))


@dataclass
class _Trial:
    """A trial this sweeper runs: its values, the fold to run next, the folds' scores."""

    number: int
    values: dict[str, Any]
    fold: int = 0
    scores: list[float] = field(default_factory=list)


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
        self.folds = int(self.config.data.get("val_folds") or 0)
        if s.n_trials < 0 or s.n_jobs < 1:
            raise ConfigError("hydra.sweeper.n_trials must be >= 0 and hydra.sweeper.n_jobs >= 1")
        check_objective(s.objective, self.config)
        check_space(self.params, self.config)
        self.space = distributions(self.params)
        if s.enqueue_defaults or s.retrain_defaults:
            self.defaults()  # the ranges hold the defaults they are compared with
        check_validation(self.config)
        self.name = s.study_name or self._default_name()

    def _default_name(self) -> str:
        """The study in this directory's own journal (however the directory is spelled), else
        the directory's name."""
        if self.settings.storage is None and Path(self.storage).exists():
            names = [x.study_name for x in open_storage(self.storage).get_all_studies()]
            if len(names) == 1:
                return names[0]
        return self.directory.name

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

    # -- trials ----------------------------------------------------------------------------
    def _run_dir(self, number: int, fold: int | None) -> tuple[Path, str]:
        """A trial job's run directory and its ``hydra.sweep.subdir``."""
        where = f"trial_{number}" + ("" if fold is None else f"/fold_{fold}")
        return self.directory / where, f"{self.subdir}/{where}".lstrip("/")

    def _job(self, number: int, values: dict[str, Any], fold: int | None) -> list[str] | dict:
        """The overrides of a trial's job (of one fold), or the result a finished job left."""
        run_dir, where = self._run_dir(number, fold)
        if (run_dir / "metrics.json").exists():  # finished before an interruption
            return json.loads((run_dir / "metrics.json").read_text())
        s = self.settings
        return [
            *self.fixed,
            *overrides(values),
            f"+trial.number={number}",
            f"+trial.study={override_value(self.name)}",
            f"+trial.storage={override_value(self.storage)}",
            f"+trial.objective={s.objective}",
            "test=false",
            *self._last_epoch(),
            *resume_overrides(run_dir),
            *(["data.val_fold=" + str(fold)] if fold is not None else []),
            *self._wandb("trial"),
            f"hydra.sweep.subdir={override_value(where)}",
        ]

    def _last_epoch(self) -> list[str]:
        """A trial is scored at its last epoch, as a retrain (which has no validation split to
        select an epoch on) is tested at its last: the search then picks the setting whose final
        state is best, which is what the retrain measures."""
        if OmegaConf.select(self.config, "callbacks.best_checkpoint") is None:
            return []
        return ["callbacks.best_checkpoint=null"]

    def _wandb(self, job_type: str) -> list[str]:
        """A study's trials and retrains form one W&B group, that of the study's directory;
        ``job_type``: trial, retrain-best or retrain-defaults."""
        if OmegaConf.select(self.config, "logger.wandb") is None:
            return []
        return [f"logger.wandb.group={override_value(group_name(self.directory))}",
                f"logger.wandb.job_type={job_type}"]

    def _value(self, number: int, result: JobReturn | dict) -> float | str | BaseException:
        """A job's objective value, ``"pruned"``, ``"diverged"``, or the error it raised."""
        if isinstance(result, JobReturn):
            error = _job_error(result)
            if isinstance(error, DivergenceError):
                self._set_attr(number, "diverged", str(error).splitlines()[0])
                return "diverged"
            if error is not None:
                return error
            result = result.return_value or {}
        if result.get("pruned_at") is not None:
            return "pruned"
        metric = self.settings.objective.split("/", 1)[1]
        if metric not in result.get("val", {}):
            return ConfigError(f"trial {number} ran without validation: a study needs a "
                               "validation split (data.val_holdout or data.val_folds)")
        return float(result["val"][metric])

    def _trials_to_run(self, running: list[_Trial]) -> list[_Trial]:
        """Up to ``n_jobs`` trials: those this sweeper is running (between folds), the
        interrupted ones, then new ones while the study has room (``n_trials`` minus the
        complete and pruned trials and those running anywhere; failed ones do not count)."""
        study, s = self.study, self.settings
        trials = study.get_trials(deepcopy=False)
        mine = {t.number for t in running}
        elsewhere = [t for t in trials
                     if t.state == optuna.trial.TrialState.RUNNING and t.number not in mine]
        interrupted = [t for t in elsewhere
                       if not any(lock_held(d) for d in self._all_run_dirs(t.number))
                       and sweeper_gone(t, s.resume_running)]
        for t in interrupted[: s.n_jobs - len(running)]:
            self._set_attr(t.number, "sweeper", sweeper_id())
            running.append(_Trial(t.number, t.params))
        # failed trials (a config or data error, told in one line) do not count: a corrected
        # rerun of the command runs the trials they would have been
        finished = sum(t.state in (optuna.trial.TrialState.COMPLETE,
                                   optuna.trial.TrialState.PRUNED) for t in trials)
        room = s.n_trials - finished - len(elsewhere) - len(mine)
        for _ in range(min(s.n_jobs - len(running), max(room, 0))):
            trial = study.ask(self.space)
            trial.set_user_attr("sweeper", sweeper_id())
            running.append(_Trial(trial.number, trial.params))
        return running

    def _all_run_dirs(self, number: int) -> list[Path]:
        return [self._run_dir(number, f)[0] for f in (range(self.folds) if self.folds else [None])]

    def run_trials(self) -> None:
        """Ask, launch and tell until the study holds ``n_trials``; a trial's folds run one
        after another (a pruned fold ends the trial). A job error that is not a divergence (a
        config or data error, or a bug, that would fail every trial) stops the study once every
        trial of the round is told."""
        study = self.study
        trials = study.get_trials(deepcopy=False)
        check_stored_space(self.space, trials, self.name)
        tried = [t for t in trials if t.state != optuna.trial.TrialState.FAIL]
        if self.settings.enqueue_defaults and not tried:
            study.enqueue_trial(self.defaults())
        running: list[_Trial] = []
        while running := self._trials_to_run(running):
            jobs = [self._job(t.number, t.values, t.fold if self.folds else None)
                    for t in running]
            launched = [j for j in jobs if isinstance(j, list)]
            returns = iter(self.launch(launched) if launched else [])
            errors = []
            for trial, job in zip(running, jobs, strict=True):
                value = self._value(trial.number, next(returns) if isinstance(job, list) else job)
                if isinstance(value, BaseException):
                    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                    errors.append(value)
                elif value == "pruned":
                    study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
                else:
                    trial.scores.append(DIVERGED_VALUE if value == "diverged" else value)
                    if value == "diverged" or len(trial.scores) == max(self.folds, 1):
                        study.tell(trial.number, sum(trial.scores) / len(trial.scores))
                    else:
                        trial.fold = len(trial.scores)
                        continue
                trial.fold = -1  # told
            running = [t for t in running if t.fold >= 0]
            if errors:
                raise errors[0]

    def best(self) -> optuna.trial.FrozenTrial | None:
        complete = [t for t in self.study.get_trials(deepcopy=False)
                    if t.state == optuna.trial.TrialState.COMPLETE
                    and "diverged" not in t.user_attrs]
        return max(complete, key=lambda t: t.value) if complete else None

    # -- retraining -------------------------------------------------------------------------
    def retrain(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """The best setting (and the defaults) with each of ``retrain_seeds``, trained on all
        training classes (no validation hold-out: the last epoch is the selected checkpoint) and
        tested. A finished run of the same setting is kept (another setting's is an error: the
        best changed); an interrupted one resumes. Returns the runs of each setting and the runs
        that failed or diverged (each with its one-line error): they do not stop the others."""
        best = self.best()
        settings: dict[str, dict[str, Any]] = {}
        if self.settings.retrain_defaults:
            settings["defaults"] = self.defaults()
        if best is not None and best.params != settings.get("defaults"):
            settings["best"] = best.params
        runs: dict[str, list[str]] = {}
        jobs, names = [], []
        for name, values in settings.items():
            for seed in self.settings.retrain_seeds:
                run_dir = self.directory / f"{name}_seed{seed}"
                runs.setdefault(name, []).append(run_dir.name)
                if (run_dir / "metrics.json").exists():
                    check_same_setting(run_dir, overrides(values))
                    continue
                where = f"{self.subdir}/{run_dir.name}".lstrip("/")
                names.append(run_dir.name)
                jobs.append([
                    *self.fixed, *overrides(values), f"seed={seed}", "test=true",
                    "data.val_holdout=0", "data.val_folds=0",
                    *resume_overrides(run_dir),
                    *self._wandb(f"retrain-{name}"),
                    f"hydra.sweep.subdir={override_value(where)}",
                ])
        failed = {}
        for name, ret in zip(names, self.launch(jobs) if jobs else [], strict=True):
            error = _job_error(ret)
            if error is not None and not isinstance(error, UserError):
                raise error  # a bug
            if error is not None:
                failed[name] = str(error).strip().splitlines()[0]
        if best is not None and "best" not in settings and "defaults" in runs:
            runs["best"] = runs["defaults"]  # the defaults won: their runs are the tuned ones too
        return runs, failed

    def summary(self, runs: dict[str, list[str]], failed: dict[str, str]) -> dict[str, Any]:
        trials = self.study.get_trials(deepcopy=False)
        state = optuna.trial.TrialState
        best = self.best()
        choices = OmegaConf.select(self.config, "hydra.runtime.choices", default={}) or {}
        defaults = {key: OmegaConf.select(self.config, key) for key in self.space}
        diverged = [t for t in trials if "diverged" in t.user_attrs]
        return {
            "study": self.name,
            "storage": self.storage,
            "objective": self.settings.objective,
            "strategy": choices.get("loss") and strategy_name(choices["loss"],
                                                              chosen_wrappers(choices)),
            "search": choices.get("search"),
            "overrides": self.fixed,
            "folds": self.folds,
            "trials": {
                "complete": sum(t.state == state.COMPLETE for t in trials) - len(diverged),
                "pruned": sum(t.state == state.PRUNED for t in trials),
                "failed": sum(t.state == state.FAIL for t in trials),
                "diverged": len(diverged),
            },
            "ranges": self.params,
            "defaults": defaults,
            "defaults_value": next((t.value for t in trials if t.state == state.COMPLETE
                                    and "diverged" not in t.user_attrs
                                    and t.params == defaults), None),
            "best": None if best is None else {
                "number": best.number, "value": best.value, "params": best.params,
            },
            "runs": runs,
            "failed_runs": failed,
        }

    def run(self) -> dict[str, Any]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.run_trials()
        summary = self.summary(*(self.retrain() if self.settings.retrain_seeds else ({}, {})))
        write_text_atomic(self.directory / "study.json", json.dumps(summary, indent=2) + "\n")
        self.warn_range_edges(summary)
        return summary

    def warn_range_edges(self, summary: dict[str, Any]) -> None:
        """A warning (stderr) for each best value within ``edge_fraction`` of a range bound."""
        best = (summary.get("best") or {}).get("params", {})
        for edge in range_edges(best, self.space, self.settings.edge_fraction):
            print(f"warning: study {self.name}: the best {edge.describe()}: the search may have "
                  f"stopped at the wall; widen hydra.sweeper.params.{edge.key} or say why the "
                  "bound is physical", file=sys.stderr)
