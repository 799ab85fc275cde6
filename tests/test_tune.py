"""Hyperparameter search (hydra/sweeper=optuna): search spaces, pruning, resumption, folds, and
the one-line errors, through the real ``dml-train -m`` entry point where a user meets them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from dml.cli.errors import user_error
from dml.data.datamodule import DMLDataModule, class_folds
from dml.data.records import Record
from dml.errors import ConfigError, DatasetError
from dml.losses.wrappers.compose import build_loss
from dml.tune.settings import default_values
from dml.tune.space import check_space, distributions, flat, overrides
from dml.tune.storage import open_storage
from dml.wandb_run import group_name

from .training_utils import REPO, TINY
from .wandb_offline import wandb_run_record

SPACES = sorted(p.stem for p in (REPO / "conf" / "search").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml"))
WRAPPERS = ("memory", "synthesis")


def compose_job(*overrides_: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides_), return_hydra_config=True)


def test_every_loss_has_a_search_space_and_the_others_wrap_one():
    assert set(LOSSES) <= set(SPACES)
    for name in sorted(set(SPACES) - set(LOSSES)):  # <loss>_<memory or synthesis config>
        choices = compose_job(f"search={name}").hydra.runtime.choices
        wrapper = next((choices[w] for w in WRAPPERS if choices.get(w) not in (None, "null")), None)
        assert wrapper is not None, f"conf/search/{name}.yaml names no loss and no wrapper"
        assert name == f"{choices.loss}_{wrapper}"
        loss_space = compose_job(f"search={choices.loss}").hydra.sweeper.params
        assert set(loss_space) < set(compose_job(f"search={name}").hydra.sweeper.params)


@pytest.mark.parametrize("name", SPACES)
def test_every_search_space_composes_with_its_loss_and_samples_valid_configs(name):
    cfg = compose_job(f"search={name}")
    assert name.startswith(cfg.hydra.runtime.choices.loss)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    params = dict(cfg.hydra.sweeper.params)
    check_space(params, cfg)
    space = distributions(params)
    assert "optimizer.lr" in space
    assert cfg.hydra.sweeper.n_trials == (24 if len(space) > 3 else 12)  # effort per value
    default_values(space, cfg)  # the config's own values lie inside every range
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(16, cfg.model.embedding_dim), dim=1)
    x.requires_grad_()
    labels = torch.arange(4).repeat_interleave(4)
    for _ in range(6):
        trial = study.ask(space)
        job = compose_job(f"search={name}", *overrides(trial.params))
        for key, value in trial.params.items():  # the override sets exactly the sampled value
            assert OmegaConf.select(job, key) == value
        instantiate(job.optimizer)([torch.nn.Parameter(torch.zeros(1))])
        loss = build_loss(job)  # with its memory or synthesis wrapper
        loss.set_epoch(1)  # past the memory's warm-up
        for _ in range(2):  # the second call also uses what the first put in a memory
            assert torch.isfinite(loss(x, labels))
        if job.get("memory"):
            assert int(loss.memory_count) > 0
        study.tell(trial, 0.0)


# -- studies through dml-train -m --------------------------------------------------------------
STUDY = [*TINY, "search=sct", "test=false", "trainer.max_epochs=2", "hydra/sweeper/pruner=none"]


def sweep_cli(sweep_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "dml.cli.train", "-m", *STUDY,
            f"hydra.sweep.dir={sweep_dir}", *args]


def run_multirun(sweep_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """``dml-train -m`` on the tiny config with ``args``, into ``sweep_dir``."""
    return subprocess.run(
        [sys.executable, "-m", "dml.cli.train", "-m", *TINY, *args, f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def run_sweep(sweep_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """A study of ``search=sct`` (:data:`STUDY`) with ``args``."""
    return run_multirun(sweep_dir, *STUDY[len(TINY):], *args)


def stored_trials(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal")))
    (study,) = storage.get_all_studies()  # one study per directory, named after it
    assert study.study_name == sweep_dir.name
    return optuna.load_study(study_name=study.study_name, storage=storage).trials


def test_a_pruner_that_fires_stops_trials_after_their_first_epoch(tmp_path):
    # a threshold above any retrieval metric: every trial is pruned at its first report
    proc = run_sweep(tmp_path, "hydra.sweeper.n_trials=2",
                     "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                     "+hydra.sweeper.pruner.lower=2.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = stored_trials(tmp_path)
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert [sorted(t.intermediate_values) for t in trials] == [[0], [0]]
    for t in trials:
        metrics = json.loads((tmp_path / f"trial_{t.number}" / "metrics.json").read_text())
        assert metrics["pruned_at"] == 0 and metrics["epochs"] == 1  # 1 of 2 epochs trained
    summary = json.loads((tmp_path / "study.json").read_text())
    assert summary["trials"]["pruned"] == 2 and summary["best"] is None


def test_no_trial_is_pruned_at_its_last_epoch_and_it_is_scored_there(tmp_path):
    # the pruner fires at every report, but the only epoch is the last: the trial completes, and
    # its objective is the last epoch's value (the checkpoint a retrain would be tested at)
    proc = run_sweep(tmp_path, "hydra.sweeper.n_trials=1", "trainer.max_epochs=1",
                     "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                     "+hydra.sweeper.pruner.lower=2.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (trial,) = stored_trials(tmp_path)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    metrics = json.loads((tmp_path / "trial_0" / "metrics.json").read_text())
    assert metrics["pruned_at"] is None
    assert Path(metrics["checkpoint"]).name == "last.ckpt"
    assert trial.value == pytest.approx(metrics["val"]["map@r"]) == trial.intermediate_values[0]


def test_a_killed_study_resumes_from_its_storage_without_repeating_finished_trials(tmp_path):
    args = ["hydra.sweeper.n_trials=3"]
    proc = subprocess.Popen(sweep_cli(tmp_path, *args), cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    interrupted = tmp_path / "trial_1" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not interrupted.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-trial 1: trial 0 finished, trial 1 has 1+ epochs
    proc.wait()
    before = {t.number: t.state for t in stored_trials(tmp_path)}
    assert before[0] == optuna.trial.TrialState.COMPLETE, before
    assert before[1] == optuna.trial.TrialState.RUNNING, before
    first = (tmp_path / "trial_0" / "metrics.json").read_bytes()

    proc = run_sweep(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = stored_trials(tmp_path)
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    launched = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines()
                if "+trial.number=" in line]
    assert not any("+trial.number=0 " in line for line in launched)  # not run again
    assert any("+trial.number=1 " in line and "ckpt_path=last" in line for line in launched)
    assert (tmp_path / "trial_0" / "metrics.json").read_bytes() == first
    assert "Restoring states from the checkpoint path at " + str(interrupted) in proc.stdout + \
        proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["loss=triplet_batchhard"], "the search space names loss.lam, which this config does "
                                     "not have"),
        (["hydra.sweeper.objective=val/nmi"], "hydra.sweeper.objective=val/nmi is not a "
                                              "validation metric"),
        (["+hydra.sweeper.params.loss.lam={low: 2.0, high: 4.0}"], "does not contain the "
                                                                   "config's value 1.0"),
        (["hydra.sweeper.retrain_seeds=[-1,abc]"], "hydra.sweeper.retrain_seeds must be a list "
                                                   "of integers >= 0, got [-1, 'abc']"),
    ],
)
def test_a_bad_study_config_is_one_line_before_any_trial(tmp_path, args, message):
    proc = run_sweep(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.glob("trial_*"))


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"), (b"not a journal\n", "is corrupt (line 1"),
    (b'{"op_code": 99, "worker_id": "w"}\n', "is corrupt (line 1"),  # Optuna: "Should not reach"
])
def test_an_empty_or_corrupt_study_storage_is_one_line(tmp_path, content, message):
    (tmp_path / "optuna.journal").write_bytes(content)
    proc = run_sweep(tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: study storage {tmp_path / 'optuna.journal'} {message}")
    assert "delete it" in line
    assert (tmp_path / "optuna.journal").read_bytes() == content  # nothing lost


def test_a_rerun_whose_range_changed_its_log_scale_is_one_line(tmp_path):
    # a study whose journal holds a trial drawn from search=sct's space, with lr on a log scale
    params = compose_job("search=sct").hydra.sweeper.params
    space = distributions(flat(OmegaConf.to_container(params, resolve=True)))
    storage = open_storage(str(tmp_path / "optuna.journal"))
    study = optuna.create_study(study_name=tmp_path.name, storage=storage, direction="maximize")
    study.tell(study.ask(space), 0.5)
    proc = run_sweep(tmp_path, "hydra.sweeper.n_trials=2",
                     "+hydra.sweeper.params.optimizer.lr={low: 1e-4, high: 5e-2, log: false}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: hydra.sweeper.params.optimizer.lr is now {low: 0.0001, high: 0.05, log: false} "
        f"but study {tmp_path.name} drew trial 0 from {{low: 0.0001, high: 0.05, log: true}}: "
        "keep its log, type and choices (low and high may change) or start a new study (another "
        "hydra.sweep.dir)")
    # no trial asked (Optuna's error left one RUNNING) nor started
    assert [t.state for t in stored_trials(tmp_path)] == [optuna.trial.TrialState.COMPLETE]
    assert not list(tmp_path.glob("trial_*"))


def test_an_sqlite_storage_that_is_not_a_database_is_one_line(tmp_path):
    path = tmp_path / "study.db"
    path.write_text("not sqlite")
    with pytest.raises(ConfigError, match=f"study storage sqlite:///{path} cannot be opened"):
        open_storage(f"sqlite:///{path}")


# -- class-disjoint folds ----------------------------------------------------------------------
def records(groups: int, classes_per_group: int = 2) -> list[Record]:
    return [Record(item=f"{g}/{c}/{i}.png", label=f"{g}/{c}", group=f"g{g}")
            for g in range(groups) for c in range(classes_per_group) for i in range(2)]


def test_folds_are_class_disjoint_cover_every_group_once_and_are_seeded():
    recs = records(10)
    folds = class_folds(recs, 4, seed=0)
    assert sorted(len(f) for f in folds) == [2, 2, 3, 3]
    assert sorted(g for f in folds for g in f) == sorted({r.group_key for r in recs})
    assert class_folds(recs, 4, seed=0) == folds
    assert class_folds(recs, 4, seed=1) != folds
    with pytest.raises(DatasetError, match=r"data\.val_folds=11 folds of 10 training groups"):
        class_folds(recs, 11)


def test_the_datamodule_validates_on_one_fold_and_trains_on_the_others():
    cfg = compose_job(*TINY, "data.val_folds=3")
    seen, everything = [], set()
    for fold in range(3):
        dm = instantiate(cfg.data, val_fold=fold)
        assert isinstance(dm, DMLDataModule)
        splits = dm.split_records()
        train, val = {r.label for r in splits["train"]}, {r.label for r in splits["val"]}
        assert train and val and not train & val
        seen.append(val)
        everything |= train | val
    assert set().union(*seen) == everything  # every class validates in one fold, only one
    assert sum(map(len, seen)) == len(everything)
    with pytest.raises(Exception) as raised:  # Hydra wraps what the constructor raises
        instantiate(cfg.data, val_fold=3)
    assert isinstance(user_error(raised.value), ConfigError)
    assert "data.val_fold=3 must be < data.val_folds=3" in str(user_error(raised.value))


# -- W&B: a sweep's or a study's runs form one group ------------------------------------------
def test_a_study_retrains_its_best_and_default_settings_in_one_wandb_group(tmp_path):
    # edge_fraction 0.5: every numeric value of the best trial lies at a range edge (the
    # arithmetic of the flag: tests/test_report_studies.py)
    proc = run_sweep(tmp_path, "logger=default", "hydra.sweeper.n_trials=2",
                     "trainer.max_epochs=1", "hydra.sweeper.retrain_seeds=[0,1]",
                     "+hydra.sweeper.params.loss.lam={low: 0.5, high: 4.0, log: true}",
                     "hydra.sweeper.edge_fraction=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "study.json").read_text())
    assert summary["strategy"] == "sct" and summary["trials"]["complete"] == 2
    assert summary["ranges"]["loss.lam"] == {"low": 0.5, "high": 4.0, "log": True}
    assert summary["ranges"]["loss.hard_threshold"] == {"choices": [None, 0.6, 0.7, 0.8, 0.9]}
    warned = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    keys = ("optimizer.lr", "loss.lam", "loss.temperature")  # hard_threshold: a choice
    assert len(warned) == 3 and all(
        line.startswith(f"warning: study {tmp_path.name}: the best {key}=") and
        line.endswith(f"widen hydra.sweeper.params.{key} or say why the bound is physical")
        for line, key in zip(warned, keys, strict=True))
    assert summary["runs"]["defaults"] == ["defaults_seed0", "defaults_seed1"]
    for name in summary["runs"]["defaults"] + summary["runs"]["best"]:
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert "test" in metrics and "val" not in metrics  # all training classes, then test
    overrides_ = (tmp_path / "defaults_seed1" / ".hydra" / "overrides.yaml").read_text()
    assert "seed=1" in overrides_ and "loss.lam=1.0" in overrides_
    jobs = [("trial_1", 0, "trial", "sct-seed0-trial1"),
            ("defaults_seed1", 1, "retrain-defaults", "sct-seed1"),
            *((name, int(name[-1]), "retrain-best", f"sct-seed{name[-1]}")
              for name in summary["runs"]["best"] if name.startswith("best"))]
    for job, seed, job_type, name in jobs:
        run = wandb_run_record(tmp_path / job)  # every run of the study: one W&B group
        assert run.run_group == group_name(tmp_path)
        assert (run.job_type, run.display_name) == (job_type, name)
        assert list(run.tags) == ["loss=sct", "memory=none", "synthesis=none", "data=synthetic",
                                  f"seed={seed}"]


def test_a_sweeps_runs_form_one_wandb_group_named_after_its_directory(tmp_path):
    proc = run_multirun(tmp_path, "logger=default", "test=false", "trainer.max_epochs=1",
                        "loss=triplet_batchhard", "seed=3,4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, seed in (("0", 3), ("1", 4)):  # each job its own W&B run (not the first's)
        run = wandb_run_record(tmp_path / job)
        assert run.run_group == group_name(tmp_path)
        assert (run.job_type, run.display_name) == ("train", f"triplet_batchhard-seed{seed}")
        assert list(run.tags) == ["loss=triplet_batchhard", "memory=none", "synthesis=none",
                                  "data=synthetic", f"seed={seed}"]


def test_trials_run_as_separate_submitit_jobs(tmp_path):
    # submitit's local executor: the path of hydra/launcher=slurm, one process per trial
    proc = run_sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2",
                     "hydra.sweeper.n_trials=2", "trainer.max_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = stored_trials(tmp_path)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(len(t.intermediate_values) == 1 for t in trials)  # reported from the jobs
    assert len(list((tmp_path / ".submitit").glob("*/*_result.pkl"))) == 2


def test_cross_validated_trials_run_their_folds_and_score_their_mean(tmp_path):
    proc = run_sweep(tmp_path, "data.val_folds=2", "hydra.sweeper.n_trials=2",
                     "trainer.max_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for trial in stored_trials(tmp_path):
        folds = [json.loads((tmp_path / f"trial_{trial.number}" / f"fold_{i}" /
                             "metrics.json").read_text())["val"]["map@r"] for i in range(2)]
        assert trial.value == pytest.approx(sum(folds) / 2, rel=1e-12)
        assert sorted(trial.intermediate_values) == [0, 1]  # step = fold × epochs + epoch
    overrides_ = (tmp_path / "trial_0" / "fold_1" / ".hydra" / "overrides.yaml").read_text()
    assert "data.val_fold=1" in overrides_


def test_a_diverging_trial_scores_the_worst_value_and_the_study_goes_on(tmp_path):
    proc = run_sweep(tmp_path, "hydra.sweeper.n_trials=1", "trainer.max_epochs=1",
                     "hydra.sweeper.enqueue_defaults=false", "hydra.sweeper.retrain_defaults=false",
                     "+hydra.sweeper.params.optimizer.lr={low: 1.0e6, high: 2.0e6}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (trial,) = stored_trials(tmp_path)
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.0
    assert "is not finite" in trial.user_attrs["diverged"]
    summary = json.loads((tmp_path / "study.json").read_text())
    assert summary["trials"] == {"complete": 0, "pruned": 0, "failed": 0, "diverged": 1}
    assert summary["best"] is None


def test_a_retrain_of_another_setting_is_not_taken_for_the_best(tmp_path):
    from dml.tune.settings import check_same_setting

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- loss.lam=1.0\n- seed=0\n")
    check_same_setting(tmp_path, ["loss.lam=1.0"])
    with pytest.raises(ConfigError, match="holds a retrain of another setting"):
        check_same_setting(tmp_path, ["loss.lam=2.5"])


def test_a_study_without_validation_classes_is_one_line(tmp_path):
    proc = run_sweep(tmp_path, "data.val_holdout=0")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "a study needs validation classes" in proc.stderr.strip().splitlines()[-1]


def test_a_study_killed_between_folds_continues_job_by_job(tmp_path):
    args = ["data.val_folds=2", "hydra.sweeper.n_trials=1"]
    proc = subprocess.Popen(sweep_cli(tmp_path, *args), cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    interrupted = tmp_path / "trial_0" / "fold_1" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not interrupted.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # fold 0 finished, fold 1 has 1+ epochs
    proc.wait()
    first = (tmp_path / "trial_0" / "fold_0" / "metrics.json").read_bytes()

    proc = run_sweep(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (trial,) = stored_trials(tmp_path)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    output = (proc.stdout + proc.stderr).splitlines()
    (launched,) = [line for line in output if "+trial.number=" in line]  # fold 0 is not re-run
    assert "data.val_fold=1" in launched and "ckpt_path=last" in launched
    assert (tmp_path / "trial_0" / "fold_0" / "metrics.json").read_bytes() == first  # reused
    folds = [json.loads((tmp_path / "trial_0" / f"fold_{i}" / "metrics.json").read_text())
             ["val"]["map@r"] for i in range(2)]
    assert trial.value == pytest.approx(sum(folds) / 2, rel=1e-12)


def test_each_search_space_of_a_comma_list_is_its_own_study(tmp_path):
    proc = run_multirun(tmp_path, "test=false", "trainer.max_epochs=1", "hydra/sweeper=optuna",
                        "search=sct,sct_xbm", "hydra.sweeper.n_trials=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a wrapped loss's study is named as dml-report names its runs, not after the bare loss
    for name, strategy in (("sct", "sct"), ("sct_xbm", "sct+xbm")):
        summary = json.loads((tmp_path / name / "study.json").read_text())
        assert summary["strategy"] == strategy and summary["trials"]["complete"] == 1
        assert (tmp_path / name / "trial_0" / "metrics.json").is_file()


def test_a_stored_pruner_naming_untrusted_code_is_not_loaded(tmp_path):
    from dml.tune.storage import PRUNER_ATTR, load_study

    storage = f"{tmp_path / 'optuna.journal'}"
    study = optuna.create_study(study_name="s", storage=open_storage(storage))
    marker = tmp_path / "pwned"
    study.set_user_attr(PRUNER_ATTR, {"_target_": "shutil.copyfile", "src": storage,
                                      "dst": str(marker)})
    with pytest.raises(ConfigError, match=r"stores pruner._target_='shutil.copyfile', not a"):
        load_study(storage, "s")
    assert not marker.exists()


def test_failed_trials_do_not_count_and_a_truncated_journal_is_repaired(tmp_path):
    failed = run_sweep(tmp_path, "hydra.sweeper.n_trials=1", "data.val_folds=100")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    # the corrected rerun runs the trial the failed one would have been
    rerun = run_sweep(tmp_path, "hydra.sweeper.n_trials=1")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((tmp_path / "study.json").read_text())
    assert summary["trials"] == {"complete": 1, "pruned": 0, "failed": 1, "diverged": 0}
    assert summary["best"]["number"] == 1
    # a journal cut inside its last record (a killed write): repaired, never appended onto
    journal = tmp_path / "optuna.journal"
    os.truncate(journal, journal.stat().st_size - 40)
    again = run_sweep(tmp_path, "hydra.sweeper.n_trials=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"study storage {journal}: its last line was an incomplete record" in again.stderr
    assert all(json.loads(line) for line in journal.read_text().splitlines())
    assert [t.state for t in stored_trials(tmp_path)] == [optuna.trial.TrialState.FAIL,
                                                          optuna.trial.TrialState.COMPLETE]
    assert json.loads((tmp_path / "study.json").read_text())["best"] == summary["best"]


def test_the_journal_check_knows_every_optuna_operation():
    from optuna.storages.journal._storage import JournalOperation

    from dml.tune.storage import OP_CODES

    assert {int(op) for op in JournalOperation} == OP_CODES


def test_a_study_dir_or_journal_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_sweep(blocker / "study")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: hydra.sweep.dir={blocker / 'study'} cannot be written (NotADirectoryError): "
        "point it at a writable folder")
    with pytest.raises(ConfigError, match=rf"^study storage {blocker}/optuna.journal cannot be "
                                          r"written \(FileExistsError\)"):
        open_storage(str(blocker / "optuna.journal"))
