"""dml-eval config-group overrides, splits and --output; dml-report on damaged run files."""

import json
from pathlib import Path

import pytest
from PIL import Image

import dml.cli.eval
from dml.cli.eval import apply_overrides
from dml.cli.eval import main as dml_eval
from dml.cli.report import main as dml_report
from dml.inference import load_checkpoint
from dml.train.run import train

from .test_report import fake_run
from .training_utils import tiny_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    run_dir = tmp_path_factory.mktemp("run")
    return train(tiny_config(run_dir))["checkpoint"]


def one_line_error(capsys, run, argv: list[str]) -> str:
    """The one stderr line of a CLI call that must fail with exit code 2."""
    with pytest.raises(SystemExit) as info:
        run(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), lines
    return lines[-1]


def image_folder(root: Path, classes: int, per_class: int) -> Path:
    """``root/{train,test}/<class>/<i>.png``: small grey images, one shade per class."""
    for split in ("train", "test"):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(per_class):
                shade = 40 * c + 5 * i
                Image.new("L", (20, 20), shade).save(root / split / f"c{c}" / f"{i}.png")
    return root


def test_data_group_override_switches_the_dataset(checkpoint, tmp_path):
    root = image_folder(tmp_path / "images", classes=3, per_class=3)
    out = tmp_path / "m.json"
    dml_eval([
        checkpoint, "--accelerator", "cpu", "--output", str(out),
        "data=folder", f"data.source.root={root}", "data.num_workers=0", "data.val_holdout=0",
        "data.train_transform.size=16", "data.train_transform.resize=16",
        "data.train_transform.channels=1", "+data.train_transform.mean=[0.5]",
        "+data.train_transform.std=[0.25]", "data.eval_transform.mean=[0.5]",
        "data.eval_transform.std=[0.25]",
    ])  # fmt: skip
    assert json.loads(out.read_text())["num_queries"] == 9  # the folder's 3 x 3 test images


def test_composed_group_resolves_against_the_checkpoint_config(checkpoint):
    _, cfg = load_checkpoint(checkpoint)
    cfg.seed = 7
    new = apply_overrides(cfg, ["data=folder", "data.source.root=/x", "data.batch_p=5"])
    assert new.data.source._target_ == "dml.data.folder.ImageFolder"
    assert new.data.seed == 7 and new.data.batch_p == 5 and new.data.source.root == "/x"
    assert new.data.eval_transform.size == new.data.train_transform.size == 224
    assert new.model == cfg.model and cfg.data.source._target_ == "dml.data.synthetic.Synthetic"


def test_unknown_group_option_lists_the_available_ones(checkpoint, capsys):
    line = one_line_error(capsys, dml_eval, [checkpoint, "data=nope"])
    assert line.startswith("error: no data config 'nope'")
    assert all(f" {name}," in line for name in ("cub200", "folder", "omniglot"))


def test_query_split_of_a_dataset_without_one_lists_the_splits(checkpoint, capsys):
    argv = [checkpoint, "--split", "query", "--accelerator", "cpu"]
    line = one_line_error(capsys, dml_eval, argv)
    assert line.startswith("error: no 'query' split in this dataset; available: test, train, val")


def test_output_into_a_missing_directory_is_created(checkpoint, tmp_path):
    out = tmp_path / "new" / "dir" / "m.json"
    dml_eval([checkpoint, "--accelerator", "cpu", "--output", str(out)])
    assert json.loads(out.read_text())["split"] == "test"


def test_unwritable_output_fails_before_evaluating(checkpoint, tmp_path, capsys, monkeypatch):
    def never(_args):
        raise AssertionError("evaluated before checking --output")

    monkeypatch.setattr(dml.cli.eval, "evaluate", never)
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "m.json"
    line = one_line_error(capsys, dml_eval, [checkpoint, "--output", str(out)])
    assert line.startswith(f"error: cannot write --output {out}")


def finished_sweep(root: Path) -> Path:
    for seed in (0, 1):
        fake_run(root / str(seed), "sct", "cub200", seed, {"recall@1": 0.5})
    return root


def test_report_names_a_truncated_metrics_json(tmp_path, capsys):
    metrics = finished_sweep(tmp_path) / "1" / "metrics.json"
    metrics.write_text(metrics.read_text()[:20])
    line = one_line_error(capsys, dml_report, [str(tmp_path)])
    assert line.startswith(f"error: {metrics} is unreadable (")


@pytest.mark.parametrize(
    "text", ["- loss=sct\n- seed: [1\n", "loss: sct\n", "- loss=sct\n- {seed: 1}\n"]
)
def test_report_names_a_malformed_overrides_yaml(text, tmp_path, capsys):
    overrides = finished_sweep(tmp_path) / "0" / ".hydra" / "overrides.yaml"
    overrides.write_text(text)
    line = one_line_error(capsys, dml_report, [str(tmp_path)])
    assert line.startswith(f"error: {overrides} ")


def test_report_show_needs_one_finished_run(tmp_path, capsys):
    sweep = finished_sweep(tmp_path / "sweep")
    line = one_line_error(capsys, dml_report, [str(sweep), "--show", "4"])
    assert line == (f"error: --show draws the retrieval grid of one finished run: pass its "
                    f"directory (holding metrics.json), not {sweep}")
    line = one_line_error(capsys, dml_report, [str(sweep / "0"), "--show", "4"])
    assert line == (f"error: {sweep / '0'} has no selected checkpoint to draw from (its "
                    "metrics.json names none)")
    assert not (sweep / "report").exists() and not (sweep / "0" / "report").exists()
