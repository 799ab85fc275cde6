"""dml-report over several directories pooled into one table: row labels with the loss's wrappers
and a study's tuned/untuned runs, seeds of one row from several directories, a seed in two of
them, and --baseline against any row. Hand-made run directories, no training."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from dml.cli.report import main as dml_report
from dml.report import collect_runs, make_report
from dml.report.labels import cell_labels
from dml.report.stats import welch
from tests.test_report import fake_run, train_row, write_csv_log
from tests.test_report_studies import expected_cell, holm_by_definition, write_study


def with_choices(job: Path, **choices: str | None) -> Path:
    """Add config-group choices (e.g. ``memory="xbm"``) to a fake run's ``.hydra/hydra.yaml``,
    as Hydra records a group picked by an experiment or on the command line."""
    path = job / ".hydra" / "hydra.yaml"
    hydra = yaml.safe_load(path.read_text())
    hydra["hydra"]["runtime"]["choices"].update(choices)
    path.write_text(yaml.safe_dump(hydra))
    return job


def table_section(report_md: Path) -> str:
    """The report's tables (everything after the header, which names the directories)."""
    text = report_md.read_text()
    return text[text.index("\n## "):]


def cell_numbers(cells) -> list[tuple]:
    return [(c.strategy, c.dataset, c.seeds(), c.mean("recall@1"), c.std("recall@1"),
             c.mean("map@r")) for c in cells]


def r1(value: float) -> dict[str, float]:
    return {"recall@1": value, "map@r": value / 4}


def study(root: Path, strategy: str, best: list[float], defaults: list[float]) -> None:
    """A finished study (see tests/test_report_studies.py) whose retrain runs have the Hydra
    files of a real one: the loss and dataset chosen, the setting's values as overrides."""
    write_study(root, strategy, best, defaults)
    for setting, values, lr in (("best", best, 0.004), ("defaults", defaults, 0.001)):
        for seed, value in enumerate(values):
            fake_run(root / strategy / f"{setting}_seed{seed}", strategy, "omniglot", seed,
                     r1(value), extra=(f"search={strategy}", f"optimizer.lr={lr}", "test=true"))


@pytest.fixture
def two_dirs(tmp_path) -> tuple[Path, Path]:
    """Directory a: contrastive seeds 0, 1 and a study of sct; directory b: contrastive seed 2
    (re-run on its own, like studies/untuned_merged/contrastive_seed2), hcl and
    multisimilarity + memory=xbm, with CSV logs."""
    a, b = tmp_path / "a", tmp_path / "b"
    fake_run(a / "0", "contrastive", "omniglot", 0, r1(0.56))
    fake_run(a / "1", "contrastive", "omniglot", 1, r1(0.55))
    study(a / "studies", "sct", [0.48, 0.46, 0.50], [0.27, 0.28, 0.27])
    fake_run(a / "studies" / "sct" / "trial_0", "sct", "omniglot", 0, None)  # a search trial
    fake_run(b / "0", "contrastive", "omniglot", 2, r1(0.58))
    for seed, value in enumerate((0.48, 0.49, 0.48)):
        fake_run(b / f"hcl{seed}", "hcl", "omniglot", seed, r1(value))
        job = fake_run(b / f"xbm{seed}", "multisimilarity", "omniglot", seed,
                       r1(0.30 + seed / 100), extra=("memory=xbm",))
        with_choices(job, memory="xbm", synthesis=None)
        write_csv_log(job, 0, [{**train_row(1, 0.36), "train/memory_fraction": 0.98}])
    return a, b


def test_pooling_two_dirs_gives_the_numbers_of_one_dir_holding_all_runs(two_dirs, tmp_path):
    a, b = two_dirs
    together = tmp_path / "together"
    shutil.copytree(a, together)
    shutil.copytree(b, together / "from_b")
    pooled = make_report([a, b], tmp_path / "pooled", baseline="contrastive")
    single = make_report(together, tmp_path / "single", baseline="contrastive")
    assert cell_numbers(pooled.cells) == cell_numbers(single.cells)
    assert table_section(pooled.markdown) == table_section(single.markdown)
    contrastive = next(c for c in pooled.cells if c.strategy == "contrastive")
    assert contrastive.seeds() == [0, 1, 2]  # seed 2 from b joins a's seeds 0 and 1
    assert contrastive.mean("recall@1") == pytest.approx((0.56 + 0.55 + 0.58) / 3)
    assert len(pooled.runs) == 15 and pooled.incomplete == []  # the trial is not a run here
    header = pooled.markdown.read_text().split("\n## ")[0]
    assert f"`{a.resolve()}`: 8 runs" in header and f"`{b.resolve()}`: 7 runs" in header


def test_rows_are_labelled_by_strategy_wrappers_and_tuning(two_dirs, tmp_path):
    a, b = two_dirs
    c = tmp_path / "c"  # synthesis recorded in the overrides only (no .hydra/hydra.yaml)
    fake_run(c / "0", "sct", "omniglot", 0, r1(0.3), ("synthesis=mochi",), hydra_files=False)
    fake_run(c / "1", "sct", "omniglot", 0, r1(0.3), ("memory=xbm", "synthesis=mochi"),
             hydra_files=False)
    fake_run(c / "2", "sct", "omniglot", 0, r1(0.3), ("memory=null",), hydra_files=False)
    # a memory chosen by an experiment: in the Hydra choices, not in the overrides
    with_choices(fake_run(c / "3", "hcl", "omniglot", 0, r1(0.3), experiment="hcl_xbm"),
                 memory="xbm")
    report = make_report([a, b, c], tmp_path / "out")
    assert [cell.strategy for cell in report.cells] == [
        "contrastive", "hcl", "hcl+xbm", "multisimilarity+xbm", "sct", "sct [tuned]",
        "sct [untuned]", "sct+mochi", "sct+xbm+mochi",
    ]
    xbm = next(cell for cell in report.cells if cell.strategy == "multisimilarity+xbm")
    assert xbm.loss == "multisimilarity" and xbm.published() is None
    tuned = next(cell for cell in report.cells if cell.strategy == "sct [tuned]")
    assert tuned.mean("recall@1") == pytest.approx(0.48)
    section = report.markdown.read_text().split("## Training dynamics")[1]
    assert ("| multisimilarity+xbm | — | — | — | 0.36 ± 0.00 | — | 0.50 ± 0.00 | 0.25 ± 0.00 | "
            "98.0 ± 0.0 |") in section


def test_a_study_whose_defaults_won_has_the_same_runs_tuned_and_untuned(tmp_path):
    study(tmp_path / "s", "sct", [], [0.3, 0.32])
    study_json = tmp_path / "s" / "sct" / "study.json"
    summary = json.loads(study_json.read_text())
    summary["runs"]["best"] = summary["runs"]["defaults"]
    study_json.write_text(json.dumps(summary))
    runs, _ = collect_runs(tmp_path / "s")
    assert sorted(label for label, _ in cell_labels(runs)) == ["sct [tuned]"] * 2 + [
        "sct [untuned]"] * 2


def test_a_seed_in_two_dirs_is_kept_apart_with_the_directory_in_the_label(
    tmp_path, capsys, monkeypatch
):
    # the same overrides, other config values (e.g. new code defaults): never averaged together
    for d, value, margin in (("x", 0.5, 0.2), ("y", 0.3, 0.5)):
        for seed in (0, 1):
            job = fake_run(tmp_path / d / str(seed), "contrastive", "omniglot", seed,
                           r1(value + seed / 100))
            (job / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "loss": {"m": margin}}))
    fake_run(tmp_path / "y" / "2", "hcl", "omniglot", 0, r1(0.4))  # hcl: only in y, pooled
    dml_report([str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(tmp_path / "out"),
                "--baseline", "contrastive [dir=x]"])
    out = capsys.readouterr().out
    assert "| contrastive [dir=x] | 2 | 50.5 ± 0.7 |" in out
    assert "| contrastive [dir=y] | 2 | 30.5 ± 0.7 |" in out and "| hcl | 1 | 40.0 |" in out
    assert "not pooled across directories, as a seed of each ran in several: `contrastive`" in out
    # two directories of one name are told apart by their paths, as given
    shutil.copytree(tmp_path / "x", tmp_path / "other" / "x")
    monkeypatch.chdir(tmp_path)
    report = make_report(["x", "other/x"], tmp_path / "out2")
    labels = [c.strategy for c in report.cells]
    assert labels == ["contrastive [dir=other/x]", "contrastive [dir=x]"]
    # one directory given twice (or nested in another): each run counted once, nothing apart
    report = make_report([tmp_path / "x", tmp_path / "x"], tmp_path / "out3")
    assert [(c.strategy, len(c.runs)) for c in report.cells] == [("contrastive", 2)]


def test_baseline_is_any_row_of_the_pooled_table(two_dirs, tmp_path, capsys):
    a, b = two_dirs
    dml_report([str(a), str(b), "--out", str(tmp_path / "out"), "--baseline", "sct [untuned]"])
    out = capsys.readouterr().out
    assert "| R@1 − sct [untuned] [95 % CI], p, Holm p |" in out
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines()
            if line.startswith("| ") and " | 3 | " in line}
    assert rows["sct [untuned]"].endswith("| baseline |")
    base = [0.27, 0.28, 0.27]
    others = {"contrastive": [0.56, 0.55, 0.58], "hcl": [0.48, 0.49, 0.48],
              "multisimilarity+xbm": [0.30, 0.31, 0.32], "sct [tuned]": [0.48, 0.46, 0.50]}
    tests = {row: welch(values, base) for row, values in others.items()}
    adjusted = holm_by_definition([t.p for t in tests.values()])  # the family: 4 rows vs base
    assert "Holm family `omniglot: all vs sct [untuned]`: 4 tests" in out
    for (row, t), q in zip(tests.items(), adjusted, strict=True):
        mark = " **significant**" if q < 0.05 else ""
        assert rows[row].endswith(expected_cell(t, q) + mark + " |"), row
    dml_report([str(a), str(b), "--out", str(tmp_path / "out"), "--baseline", "hcl",
                "--metric", "map@r"])
    out = capsys.readouterr().out
    assert "| MAP@R − hcl [95 % CI], p, Holm p |" in out
    assert "Holm family `omniglot: all vs hcl`: 4 tests" in out
    assert (tmp_path / "out" / "effects.png").stat().st_size > 0
    with open(tmp_path / "out" / "comparisons.csv") as f:
        xbm_csv = next(r for r in csv.DictReader(f) if r["row"] == "multisimilarity+xbm")
    xbm = welch([0.30 / 4, 0.31 / 4, 0.32 / 4], [0.48 / 4, 0.49 / 4, 0.48 / 4])
    assert float(xbm_csv["p"]) == xbm.p and float(xbm_csv["ci_low"]) == xbm.low
    xbm_row = next(line for line in out.splitlines() if line.startswith("| multisimilarity+xbm"))
    assert f"| {expected_cell(xbm, float(xbm_csv['p_holm']))}" in xbm_row
    # a named family of pairs of rows (e.g. a verdict's claims), Holm over those pairs only
    dml_report([str(a), str(b), "--out", str(tmp_path / "out"), "--compare",
                "hcl:sct [untuned]", "multisimilarity+xbm:hcl", "--family", "claims"])
    out = capsys.readouterr().out
    assert "Holm family `claims`: 2 tests" in out
    first, second = tests["hcl"], welch([0.30, 0.31, 0.32], [0.48, 0.49, 0.48])
    q = holm_by_definition([first.p, second.p])
    section = out.split("## Family `claims`")[1]
    assert f"| hcl − sct [untuned] | 3 vs 3 | {expected_cell(first, q[0])}" in section
    assert f"| multisimilarity+xbm − hcl | 3 vs 3 | {expected_cell(second, q[1])}" in section
    with pytest.raises(SystemExit) as exit_:
        dml_report([str(a), str(b), "--out", str(tmp_path / "out"), "--compare", "hcl:sct"])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith(
        "error: --compare sct is not a row of the table: contrastive, hcl,")
    with pytest.raises(SystemExit) as exit_:
        dml_report([str(a), str(b), "--out", str(tmp_path / "out"), "--baseline", "sct"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --baseline sct is not a row of the "
                                                    "table: contrastive, hcl,")
    assert "sct [tuned], sct [untuned]" in err


def test_several_dirs_default_to_a_report_outside_them(two_dirs, tmp_path, monkeypatch):
    a, b = two_dirs
    monkeypatch.chdir(tmp_path)
    report = make_report([a, b])
    assert report.markdown == Path("multirun") / "report-a+b" / "report.md"
    assert not (a / "report").exists() and not (b / "report").exists()
    with pytest.raises(SystemExit):  # an empty directory among them is named, not skipped
        dml_report([str(a), str(tmp_path / "empty")])
