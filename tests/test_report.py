"""dml-report on hand-made run directories (the files dml-train and Hydra write), no training."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dml.cli.report import main as dml_report
from dml.report import (
    collect_runs,
    diagram_grid,
    group_runs,
    latest_sweep,
    load_triplet_diagrams,
    make_report,
)
from dml.report.diagrams import first_seed_diagrams
from dml.report.dynamics import read_dynamics
from dml.report.labels import cell_labels
from dml.report.table import format_percent, metric_names


def fake_run(
    job: Path,
    loss: str,
    data: str,
    seed: int,
    metrics: dict | None,
    extra: tuple[str, ...] = (),
    experiment: str | None = None,
    hydra_files: bool = True,
) -> Path:
    """A job directory as `dml-train -m` leaves it (metrics None: a job that never finished)."""
    (job / ".hydra").mkdir(parents=True)
    overrides = [f"experiment={experiment}"] if experiment else []
    overrides += [f"loss={loss}", f"data={data}", f"seed={seed}", *extra]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if hydra_files:
        choices = {"loss": loss, "data": data, "experiment": experiment, "hydra/launcher": "basic"}
        hydra = {"hydra": {"runtime": {"choices": choices}, "sweep": {"dir": "${now:%H}"}}}
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
        (job / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "loss": {"x": 1}}))
    if metrics is not None:
        result = {"run_dir": str(job), "val": {"recall@1": 0.5}, "test": metrics,
                  "epochs": 1, "wall_time_s": 30.0}
        (job / "metrics.json").write_text(json.dumps(result))
    return job


STRATEGIES = ("sct", "nca_hardest", "triplet_batchhard")
DATASETS, SEEDS = ("cub200", "sop"), (0, 1, 2)


@pytest.fixture
def sweep(tmp_path) -> tuple[Path, dict]:
    """3 strategies × 2 datasets × 3 seeds with random metrics, plus one crashed job."""
    rng = np.random.default_rng(0)
    truth, n = {}, 0
    for s in STRATEGIES:
        for d in DATASETS:
            for seed in SEEDS:
                m = {"recall@1": rng.random(), "recall@2": rng.random(), "map@r": rng.random(),
                     "r_precision": rng.random(), "num_queries": 100.0}
                truth[(s, d, seed)] = m
                fake_run(tmp_path / str(n), s, d, seed, m, extra=("trainer.max_epochs=3",))
                n += 1
    fake_run(tmp_path / str(n), "sct", "cub200", 3, None)
    return tmp_path, truth


def test_cells_are_mean_and_sample_std_over_seeds(sweep):
    root, truth = sweep
    runs, incomplete = collect_runs(root)
    assert len(runs) == 18 and [p.name for p in incomplete] == ["18"]
    cells = group_runs(runs)
    assert [(c.dataset, c.strategy) for c in cells] == sorted(
        (d, s) for s in STRATEGIES for d in DATASETS
    )
    for c in cells:
        assert c.seeds() == list(SEEDS)
        for m in ("recall@1", "recall@2", "map@r", "r_precision"):
            ref = np.array([truth[(c.strategy, c.dataset, seed)][m] for seed in SEEDS])
            assert c.mean(m) == pytest.approx(ref.mean(), abs=1e-12)
            assert c.std(m) == pytest.approx(ref.std(ddof=1), abs=1e-12)
    assert metric_names(runs) == ["recall@1", "map@r", "recall@2", "r_precision"]


def test_report_files(sweep, tmp_path_factory):
    root, truth = sweep
    out = tmp_path_factory.mktemp("out")
    report = make_report(root, out, paper=True)
    text = report.markdown.read_text()
    ref = np.array([truth[("sct", "cub200", s)]["recall@1"] for s in SEEDS])
    expected = f"{100 * ref.mean():.1f} ± {100 * ref.std(ddof=1):.1f}"
    sct_row = next(line for line in text.splitlines() if line.startswith("| sct | 3 |"))
    assert sct_row.split(" | ")[2] == expected and sct_row.endswith("| 57.7 |")
    assert "| nca_hardest | 3 |" in text and "| collapse |" in text
    assert "## R@1 (%) by dataset" in text and "## cub200" in text and "## sop" in text
    assert "**incomplete jobs (no test metrics): 1**: `18`" in text
    assert "`trainer.max_epochs=3`" in text  # shared settings are stated once
    assert "num_queries" not in text and "command:" not in text  # no multirun.yaml here

    rows = list(csv.DictReader(report.table_csv.open()))
    assert len(rows) == 6
    sct = next(r for r in rows if (r["strategy"], r["dataset"]) == ("sct", "sop"))
    ref = np.array([truth[("sct", "sop", s)]["map@r"] for s in SEEDS])
    assert float(sct["map@r_mean"]) == pytest.approx(ref.mean(), abs=1e-12)
    assert float(sct["map@r_std"]) == pytest.approx(ref.std(ddof=1), abs=1e-12)
    assert sct["seeds"] == "0 1 2" and sct["paper_recall@1_percent"] == "81.9"
    assert float(sct["wall_time_s"]) == 90.0
    runs = list(csv.DictReader(report.runs_csv.open()))
    assert len(runs) == 18 and all(Path(r["run_dir"]).is_dir() for r in runs)
    with Image.open(report.plot) as img:
        assert img.format == "PNG" and img.width > 200


def test_single_seed_has_no_std_and_unknown_pairs_no_paper_number(tmp_path):
    fake_run(tmp_path / "0", "contrastive", "cub200", 0, {"recall@1": 0.25, "map@r": 0.125})
    report = make_report(tmp_path, paper=True)
    assert report.markdown.parent == tmp_path / "report"
    assert "| contrastive | 1 | 25.0 | 12.5 | — |" in report.markdown.read_text()
    row = next(csv.DictReader(report.table_csv.open()))
    assert row["recall@1_std"] == "" and row["paper_recall@1_percent"] == ""
    assert format_percent(None, None) == "—"


def test_settings_that_vary_within_a_cell_split_it(tmp_path):
    n = iter(range(100))

    def run(loss, data, seed, extra=(), experiment=None):
        fake_run(tmp_path / str(next(n)), loss, data, seed, {"recall@1": 0.5}, extra, experiment)

    for seed in (0, 1):
        # the SCT reproduction: each experiment fixes its own loss -> experiment splits nothing
        run("sct", "cub200", seed, experiment="sct_cub200")
        run("nca_semihard", "cub200", seed, experiment="sct_cub200_semihard")
        # a loss ablation and a dataset variant within one (loss, data) pair
        run("sct", "omniglot", seed, ("loss.lam=0.5",), "fair_omniglot")
        run("sct", "omniglot", seed, ("loss.lam=1.0",), "fair_omniglot")
        run("sct", "omniglot", seed, ("loss.lam=1.0",), "fair_omniglot_merged")
    runs, _ = collect_runs(tmp_path)
    labels = sorted(set(cell_labels(runs)))
    assert labels == [
        ("nca_semihard", "cub200"),
        ("sct", "cub200"),
        ("sct [loss.lam=0.5]", "omniglot [experiment=fair_omniglot]"),
        ("sct [loss.lam=1.0]", "omniglot [experiment=fair_omniglot]"),
        ("sct [loss.lam=1.0]", "omniglot [experiment=fair_omniglot_merged]"),
    ]
    cells = group_runs(runs)
    assert all(len(c.runs) == 2 for c in cells)
    variant = next(c for c in cells if c.strategy == "sct [loss.lam=1.0]")
    assert variant.variant and variant.published() is None
    plain = next(c for c in cells if c.strategy == "sct")
    assert not plain.variant and plain.published() == 57.7


def test_runs_without_hydra_files_fall_back_to_overrides(tmp_path):
    fake_run(tmp_path / "0", "sct", "inshop", 4, {"recall@1": 1.0}, hydra_files=False)
    (run,), _ = collect_runs(tmp_path)
    assert (run.strategy, run.dataset, run.seed) == ("sct", "inshop", 4)


def test_cli(sweep, tmp_path, capsys):
    root, _ = sweep
    dml_report([str(root), "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert out.startswith("# Sweep report") and "paper R@1" not in out
    assert (tmp_path / "r" / "report.png").is_file()
    with pytest.raises(SystemExit) as info:
        dml_report([str(tmp_path / "r")])
    assert info.value.code == 2
    assert "error: no finished run under" in capsys.readouterr().err


def test_latest_sweep_is_the_newest(tmp_path):
    for i, name in enumerate(("2024-01-02/10-00-00", "2024-01-01/09-00-00")):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "multirun.yaml").write_text("{}")
        os.utime(tmp_path / name / "multirun.yaml", (1000 + i, 1000 + i))
    assert latest_sweep(tmp_path) == tmp_path / "2024-01-01/09-00-00"
    with pytest.raises(FileNotFoundError, match="no sweep"):
        latest_sweep(tmp_path / "empty")


def save_diagrams(run_dir: Path, epochs: tuple[int, ...], count: int = 1) -> None:
    edges = np.linspace(-1, 1, 11)
    (run_dir / "triplet_diagrams").mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        hist = np.zeros((10, 10))
        hist[7, 3] = count + epoch  # S_an in bin 7, S_ap in bin 3: a hard triplet
        np.savez(run_dir / "triplet_diagrams" / f"epoch_{epoch:03d}.npz",
                 hist=hist, edges=edges, epoch=epoch)


def test_triplet_diagrams_load_and_plot(tmp_path):
    save_diagrams(tmp_path, (2, 0))
    diagrams = load_triplet_diagrams(tmp_path)
    assert [d.epoch for d in diagrams] == [0, 2] and diagrams[1].hist[7, 3] == 3
    fig = diagram_grid({"sct": diagrams, "semihard": diagrams[:1]})
    assert len(fig.axes) == 2 * 2 + 1  # panels + colour bar
    fig.savefig(tmp_path / "grid.png")
    assert load_triplet_diagrams(tmp_path / "nowhere") == []


def test_report_diagrams_are_each_strategys_first_seed(tmp_path):
    for n, (loss, seed) in enumerate([("sct", 1), ("sct", 0), ("nca_hardest", 2)]):
        job = fake_run(tmp_path / str(n), loss, "omniglot", seed, {"recall@1": 0.5})
        save_diagrams(job, (0, 1), count=10 * seed + 1)
    pair_loss = fake_run(tmp_path / "3", "contrastive", "omniglot", 0, {"recall@1": 0.5})
    save_diagrams(pair_loss, (0,), count=0)  # a pair loss: empty histograms
    rows = first_seed_diagrams(group_runs(collect_runs(tmp_path)[0]))
    assert sorted(rows) == ["nca_hardest", "sct"]
    assert [d.hist[7, 3] for d in rows["sct"]] == [1, 2]  # seed 0's, not seed 1's
    assert [d.hist[7, 3] for d in rows["nca_hardest"]] == [21, 22]
    report = make_report(tmp_path, tmp_path / "out", diagrams=True)
    with Image.open(report.diagrams) as img:
        assert report.diagrams.name == "diagrams.png" and img.height > img.width / 2
    assert make_report(tmp_path, tmp_path / "out2").diagrams is None  # not asked for
    for f in tmp_path.glob("*/triplet_diagrams/*"):
        f.unlink()  # no run has diagrams: no figure
    assert make_report(tmp_path, tmp_path / "out3", diagrams=True).diagrams is None


def write_csv_log(run_dir: Path, version: int, rows: list[dict]) -> None:
    """A Lightning CSVLogger file: one header with every key, empty cells where not logged."""
    path = run_dir / "csv" / f"version_{version}" / "metrics.csv"
    path.parent.mkdir(parents=True)
    keys = sorted({k for r in rows for k in r})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)


def train_row(epoch, sim, hard=None, loss=1.0):
    row = {"epoch": epoch, "step": 0, "train/loss": loss, "train/mean_pairwise_sim": sim,
           "train/mean_s_ap": 0.5, "train/mean_s_an": 0.25}
    return row if hard is None else {**row, "train/hard_fraction": hard}


def test_dynamics_val_curve_last_epoch_stats_and_resumed_logs(tmp_path):
    run = tmp_path / "run"
    write_csv_log(run, 0, [
        {"epoch": "", "step": 0, "lr-AdamW": 0.1},  # a row without epoch (learning-rate monitor)
        train_row(0, 0.1, 0.5), {"epoch": 0, "val/recall@1": 0.8},
        train_row(1, 0.9, 0.0),  # epoch 1 interrupted: replaced by version_1
    ])
    write_csv_log(run, 1, [
        train_row(1, 0.2, 0.25), train_row(1, 0.4, float("nan")), train_row(1, 0.6, 0.75),
        {"epoch": 1, "val/recall@1": 0.8},
        {"epoch": 2, "val/recall@1": 0.8},  # after fit: the selected checkpoint re-evaluated
    ])
    d = read_dynamics(run)
    assert d.val_recall_at_1 == {0: 0.8, 1: 0.8}
    assert d.best_epoch == 0 and d.last_val_recall_at_1 == 0.8  # ties: the first epoch
    assert d.last_epoch["mean_pairwise_sim"] == pytest.approx(0.4)  # version_1's epoch 1 only
    assert d.last_epoch["hard_fraction"] == pytest.approx(0.5)  # NaN steps skipped
    assert d.last_epoch["mean_s_ap"] == 0.5 and d.last_epoch["mean_s_an"] == 0.25
    write_csv_log(tmp_path / "pairs", 0, [train_row(0, 0.2), train_row(1, 0.3)])
    pairs = read_dynamics(tmp_path / "pairs")
    assert np.isnan(pairs.last_epoch["hard_fraction"])  # a pair loss logs none
    assert pairs.last_epoch["mean_pairwise_sim"] == pytest.approx(0.3)
    assert pairs.best_epoch is None and pairs.last_val_recall_at_1 is None
    assert read_dynamics(tmp_path / "nowhere") is None


def test_report_shows_training_dynamics_per_strategy(tmp_path):
    for n, (loss, seed, sims, val) in enumerate([
        ("nca_hardest", 0, (0.9, 0.99), (0.5, 0.1)),  # collapsed after epoch 0
        ("nca_hardest", 1, (0.8, 0.97), (0.4, 0.2)),
        ("sct", 0, (0.1, 0.05), (0.5, 0.7)),
    ]):
        job = fake_run(tmp_path / str(n), loss, "omniglot", seed, {"recall@1": 0.5})
        rows = []
        for epoch, (sim, r1) in enumerate(zip(sims, val, strict=True)):
            rows += [train_row(epoch, sim, hard=0.5 + 0.25 * epoch),
                     {"epoch": epoch, "val/recall@1": r1}]
        write_csv_log(job, 0, [*rows, {"epoch": 2, "val/recall@1": max(val)}])
    fake_run(tmp_path / "9", "contrastive", "omniglot", 0, {"recall@1": 0.5})  # no CSV logs
    text = make_report(tmp_path).markdown.read_text()
    section = text[text.index("## Training dynamics"):]
    assert "| nca_hardest | 45.0 ± 7.1 | 0 0 | 15.0 ± 7.1 | 0.98 ± 0.01 | 75.0 ± 0.0 |" in section
    assert "| sct | 70.0 | 1 | 70.0 | 0.05 | 75.0 | 0.50 | 0.25 |" in section
    assert "contrastive" not in section
    assert "Training dynamics" not in make_report(tmp_path, split="val").markdown.read_text()


def test_dynamics_show_the_validation_curve_of_epochs_too_short_to_log_a_step(tmp_path):
    """Fewer steps per epoch than ``log_every_n_steps``: no train row, only validation rows."""
    job = fake_run(tmp_path / "0", "sct", "omniglot", 0, {"recall@1": 0.5})  # epochs: 1
    write_csv_log(job, 0, [{"epoch": 0, "step": 3, "val/recall@1": 0.6},
                           {"epoch": 1, "step": 3, "val/recall@1": 0.6}])  # the re-evaluation
    assert read_dynamics(job).val_recall_at_1 == {0: 0.6}
    section = make_report(tmp_path).markdown.read_text().split("## Training dynamics")[1]
    assert "| sct | 60.0 | 0 | 60.0 |" in section


def test_a_run_directory_name_that_is_not_utf8_is_shown_escaped(tmp_path):
    from dml.cli.report import main as dml_report

    sweep = tmp_path / "sweep"
    m = {"recall@1": 0.5, "map@r": 0.3}
    fake_run(sweep / "0", "sct", "cub200", 0, m)
    fake_run(sweep / os.fsdecode(b"run_\xff"), "sct", "cub200", 1, m)
    fake_run(sweep / os.fsdecode(b"crash_\xff"), "sct", "cub200", 2, None)
    dml_report([str(sweep)])
    out = sweep / "report"
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.md", "report.png",
                                                     "runs.csv"]
    assert "`crash_\\udcff`" in (out / "report.md").read_text()
    assert f"{sweep}/run_\\udcff," in (out / "runs.csv").read_text()


def test_a_report_that_fails_midway_leaves_no_partial_files(tmp_path, monkeypatch):
    from dml.cli.report import main as dml_report

    sweep = tmp_path / "sweep"
    fake_run(sweep / "0", "sct", "cub200", 0, {"recall@1": 0.5})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("dml.report.make.bar_plot", fail)  # after report.md and the CSVs
    with pytest.raises(OSError, match="disk full"):
        dml_report([str(sweep)])
    assert list((sweep / "report").iterdir()) == []
