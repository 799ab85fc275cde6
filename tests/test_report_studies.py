"""The tuned-comparison report: confidence intervals and Welch's test against a hand computation,
and dml-report on study directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dml.cli.report import main as report_main
from dml.report.stats import mean_ci, welch

# t quantiles from a printed table (two-sided 95 %): t_{0.975,2} = 4.302653, t_{0.975,4} = 2.776445
T975 = {2: 4.302653, 4: 2.776445}


def test_confidence_interval_matches_a_hand_computation():
    values = [0.70, 0.74, 0.75]
    mean = (0.70 + 0.74 + 0.75) / 3
    s = math.sqrt(((0.70 - mean) ** 2 + (0.74 - mean) ** 2 + (0.75 - mean) ** 2) / 2)
    got_mean, half = mean_ci(values)
    assert got_mean == pytest.approx(mean, rel=1e-12)
    assert half == pytest.approx(T975[2] * s / math.sqrt(3), rel=1e-6)
    assert mean_ci([0.5]) == (0.5, None)


def test_welch_matches_a_hand_computation():
    a, b = [0.80, 0.82, 0.81], [0.70, 0.75, 0.72]
    ma, mb = sum(a) / 3, sum(b) / 3
    va = sum((x - ma) ** 2 for x in a) / 2 / 3
    vb = sum((x - mb) ** 2 for x in b) / 2 / 3
    t = (ma - mb) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    result = welch(a, b)
    assert result.difference == pytest.approx(ma - mb, rel=1e-12)
    assert result.t == pytest.approx(t, rel=1e-12)
    assert result.dof == pytest.approx(dof, rel=1e-12)
    # p from the t distribution's CDF by numerical integration of its density (no scipy)
    scale = math.gamma((dof + 1) / 2) / (math.sqrt(dof * math.pi) * math.gamma(dof / 2))

    def density(x: float) -> float:
        return scale * (1 + x * x / dof) ** (-(dof + 1) / 2)

    n, upper = 200_000, 2000.0
    h = (upper - abs(t)) / n
    tail = h * sum(density(abs(t) + (i + 0.5) * h) for i in range(n))
    assert result.p == pytest.approx(2 * tail, abs=2e-4)
    assert result.significant() == (result.p < 0.05)
    assert welch([0.5], b) is None
    for b in ([0.5, 0.5], [0.4, 0.4]):  # no spread: undefined, never "significant"
        flat = welch([0.5, 0.5], b)
        assert math.isnan(flat.p) and not flat.significant()


def write_study(root: Path, strategy: str, best: list[float], defaults: list[float]) -> None:
    d = root / strategy
    runs = {"best": [f"best_seed{i}" for i in range(len(best))],
            "defaults": [f"defaults_seed{i}" for i in range(len(defaults))]}
    for setting, values in (("best", best), ("defaults", defaults)):
        for i, v in enumerate(values):
            (d / f"{setting}_seed{i}").mkdir(parents=True)
            (d / f"{setting}_seed{i}" / "metrics.json").write_text(
                json.dumps({"test": {"recall@1": v, "map@r": v / 2}, "wall_time_s": 60.0}))
    (d / "study.json").write_text(json.dumps({
        "strategy": strategy, "objective": "val/map@r",
        "trials": {"complete": 8, "pruned": 4, "failed": 0, "diverged": 1},
        "defaults": {"optimizer.lr": 0.001}, "defaults_value": 0.1,
        "best": {"number": 3, "value": 0.2, "params": {"optimizer.lr": 0.004}}, "runs": runs,
    }))


def test_dml_report_on_studies_shows_the_tests_and_intervals(tmp_path, capsys):
    write_study(tmp_path, "sct", [0.80, 0.82, 0.81], [0.70, 0.75, 0.72])
    write_study(tmp_path, "nca_semihard", [0.70, 0.75, 0.72], [0.70, 0.75, 0.72])
    for i, cos in enumerate((0.9, 0.7, 0.8)):  # the collapse indicator of the tuned runs' logs
        log = tmp_path / "sct" / f"best_seed{i}" / "csv" / "version_0" / "metrics.csv"
        log.parent.mkdir(parents=True)
        log.write_text("epoch,step,train/loss,train/mean_pairwise_sim\n0,0,1.0,0.1\n"
                       f"1,1,1.0,{cos}\n1,2,1.0,{cos}\n")
    report_main([str(tmp_path), "--baseline", "nca_semihard"])
    text = (tmp_path / "report" / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| sct |"))
    p = welch([0.80, 0.82, 0.81], [0.70, 0.75, 0.72]).p
    mean, half = mean_ci([0.80, 0.82, 0.81])
    assert f"[{100 * (mean - half):.1f}, {100 * (mean + half):.1f}] (n=3)" in row
    assert row.count(f"+8.7 (p = {p:.3f})") == 2 and "8 / 4 / 1 / 0" in row and "10.0 → 20.0" in row
    assert ("**significant**" in row) == (p < 0.05)
    assert row.endswith("| — / 0.80 |")  # untuned runs without logs; tuned: mean of 0.9, 0.7, 0.8
    assert "lr=0.004" in text


def test_dml_report_names_an_unknown_baseline(tmp_path, capsys):
    write_study(tmp_path, "sct", [0.8, 0.82], [0.7, 0.71])
    with pytest.raises(SystemExit) as exit_:
        report_main([str(tmp_path), "--baseline", "nope"])
    assert exit_.value.code == 2
    assert "error: --baseline nope is not one of the studies: sct" in capsys.readouterr().err


def test_dml_report_refuses_to_mix_two_studies_of_one_strategy(tmp_path, capsys):
    write_study(tmp_path / "plain", "sct", [0.8, 0.82], [0.7, 0.71])
    write_study(tmp_path / "merged", "sct", [0.5, 0.52], [0.3, 0.31])
    with pytest.raises(SystemExit):
        report_main([str(tmp_path)])
    assert "several studies under" in capsys.readouterr().err
