"""A non-editable install (``pip install .`` of the files the Docker image installs: the
``installed`` fixture) finds its configs from any directory, and a user's own config directory
(``--config-dir``) adds options to our groups."""

import json

from .training_utils import REPO, TINY, run_installed


def test_the_wheel_holds_every_config(installed):
    ours = sorted(p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml"))
    shipped = sorted(p.relative_to(installed / "dml" / "conf")
                     for p in (installed / "dml" / "conf").rglob("*.yaml"))
    assert shipped == ours and not (installed / "dml" / "conf").is_symlink()


def test_installed_dml_train_runs_from_another_directory(installed, tmp_path):
    where = run_installed(installed, tmp_path, "-c", "import dml; print(dml.__file__)")
    assert where.stdout.startswith(str(installed)), where  # not the checkout
    proc = run_installed(installed, tmp_path, "-m", "dml.cli.train", *TINY,
                         "trainer.max_epochs=1", "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    provenance = json.loads((tmp_path / "run" / "metrics.json").read_text())["provenance"]
    assert provenance["commit"] is None and provenance["dirty"] is None  # no git: the version
    assert provenance["dml"] == "0.1.0" and provenance["torch"]


def test_a_users_config_dir_adds_options_to_our_groups(installed, tmp_path):
    mine = tmp_path / "my_conf" / "loss"
    mine.mkdir(parents=True)
    (mine / "my_triplet.yaml").write_text(
        "defaults:\n  - triplet_batchhard\n  - _self_\nmargin: 0.05\n"
    )
    proc = run_installed(installed, tmp_path, "-m", "dml.cli.train",
                         f"--config-dir={tmp_path / 'my_conf'}", "loss=my_triplet", *TINY,
                         "trainer.max_epochs=1", "test=false", "hydra.run.dir=run",
                         DML_COMMIT="0123abcd")  # as the Docker image tells its commit
    assert proc.returncode == 0, proc.stderr[-3000:]
    provenance = json.loads((tmp_path / "run" / "metrics.json").read_text())["provenance"]
    assert (provenance["commit"], provenance["dirty"]) == ("0123abcd", None)
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "margin: 0.05" in config and "MarginTripletLoss" in config
    resumed = run_installed(installed, tmp_path, "-m", "dml.cli.train",
                            f"resume={tmp_path / 'run'}", "trainer.max_epochs=2")  # my_triplet
    assert resumed.returncode == 0, resumed.stderr[-3000:]
