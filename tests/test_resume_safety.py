"""``dml-train resume=<dir>`` trusts a run directory only for what dml-train itself wrote there:
overrides that name code outside the allow-list, set ``hydra.*``, or make the run a study's trial
are refused in one line before anything runs or is written."""

from pathlib import Path

import pytest
import yaml

from .test_training_promises import TINY_CLI, last_line, run_cli, run_records


def planted_run(run_dir: Path, *overrides: str) -> Path:
    """A run directory whose recorded overrides are ``TINY_CLI`` plus ``overrides``, as someone
    else's folder could hold it."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*TINY_CLI, *overrides]))
    (run_dir / "config.yaml").write_text("seed: 0\n")
    return run_dir


def copy_to(marker: Path) -> str:
    return f"{{_target_: shutil.copyfile, src: {__file__}, dst: {marker}}}"


@pytest.mark.parametrize("planted", ["callback", "hydra callback"])
def test_resume_refuses_overrides_that_name_untrusted_code(planted, tmp_path):
    marker = tmp_path / "pwned"
    override, error = {
        "callback": (f"+callbacks.evil={copy_to(marker)}",
                     "names callbacks.evil._target_='shutil.copyfile', not a dml or vetted"),
        "hydra callback": (f"+hydra.callbacks.evil={copy_to(marker)}", "sets '+hydra.callbacks"),
    }[planted]
    run_dir = planted_run(tmp_path / "run", override)
    records = run_records(run_dir)
    proc = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last_line(proc).startswith(f"error: cannot resume {run_dir}: ")
    assert error in last_line(proc)
    assert not marker.exists() and run_records(run_dir) == records


def test_resume_of_a_tuner_trial_is_refused_before_anything_is_written(tmp_path):
    study = tmp_path / "study"
    run_dir = planted_run(study / "trial_0", "+trial.number=0", "+trial.study=study",
                          f"+trial.storage={study / 'optuna.journal'}", "+trial.objective=val")
    records = run_records(run_dir)
    proc = run_cli(f"resume={run_dir}", "trainer.max_epochs=3", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last_line(proc) == (f"error: cannot resume {run_dir}: it is a trial of the study in "
                               f"{study} and belongs to it; rerun the study's command to "
                               "continue its trials")
    assert run_records(run_dir) == records
