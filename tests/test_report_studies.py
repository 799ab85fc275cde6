"""The tuned-comparison report: confidence intervals and Welch's test against a hand computation,
and dml-report on study directories."""

from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from scipy import stats

from dml.cli.report import main as report_main
from dml.report.stats import family, format_comparison, holm, mean_ci, welch
from dml.report.studies import load_study_result, study_families
from dml.report.study_plots import curves_plot, effect_plot
from dml.tune.edges import position, range_edges, study_space
from dml.tune.space import distributions

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


def test_welch_matches_a_hand_computation_and_scipy():
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
    # the CI's quantile: the x where the upper tail is 2.5 %, by bisection on the same integral
    def upper_tail(x: float) -> float:  # the tail beyond 400 holds < 1e-6 at this dof
        step = (400.0 - x) / 20_000
        return step * sum(density(x + (i + 0.5) * step) for i in range(20_000))

    low_q, high_q = 1.0, 20.0
    for _ in range(24):
        mid = (low_q + high_q) / 2
        low_q, high_q = (mid, high_q) if upper_tail(mid) > 0.025 else (low_q, mid)
    half = low_q * math.sqrt(va + vb)
    assert (result.low, result.high) == pytest.approx((ma - mb - half, ma - mb + half), abs=1e-4)
    reference = stats.ttest_ind(a, b, equal_var=False)  # scipy: the same test and interval
    ci = reference.confidence_interval(0.95)
    assert (result.t, result.dof, result.p) == pytest.approx(
        (reference.statistic, reference.df, reference.pvalue), rel=1e-9)
    assert (result.low, result.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert result.significant() == (result.p < 0.05)
    assert welch([0.5], b) is None
    for b in ([0.5, 0.5], [0.4, 0.4]):  # no spread: undefined, never "significant"
        flat = welch([0.5, 0.5], b)
        assert math.isnan(flat.p) and math.isnan(flat.low) and not flat.significant()
    one_flat = welch([0.5, 0.5, 0.5], b := [0.70, 0.75, 0.72])  # spread on one side only
    with warnings.catch_warnings():  # scipy warns of "precision loss" on a constant sample
        warnings.simplefilter("ignore", RuntimeWarning)
        reference = stats.ttest_ind([0.5, 0.5, 0.5], b, equal_var=False)
    assert (one_flat.p, one_flat.dof) == pytest.approx((reference.pvalue, 2.0), rel=1e-6)


def holm_by_definition(p: list[float], alpha_grid: list[float] | None = None) -> list[float]:
    """Holm's adjusted p from its definition: the smallest level α at which the step-down
    procedure (reject H_(1), H_(2), … while p_(i) ≤ α / (m − i + 1)) rejects the hypothesis;
    the candidates are the (m − i + 1)·p_(i) and 1 (no shortcut through a running maximum)."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    candidates = sorted({min(1.0, (m - r) * p[i]) for r, i in enumerate(order)} | {1.0})

    def rejected(alpha: float) -> set[int]:
        out = set()
        for r, i in enumerate(order):
            if p[i] * (m - r) > alpha * (1 + 1e-12):
                break
            out.add(i)
        return out

    return [next(a for a in candidates if i in rejected(a)) if p[i] <= 1 else 1.0
            for i in range(m)]


def expected_cell(t, holm_p: float) -> str:
    """A difference cell of the report, written out by hand: points, CI, raw and Holm p."""
    def p_text(x: float) -> str:
        return "< 0.001" if x < 0.001 else f"= {x:.3f}"

    return (f"{100 * t.difference:+.1f} [{100 * t.low:+.1f}, {100 * t.high:+.1f}], "
            f"p {p_text(t.p)}, Holm p {p_text(holm_p)}")


def test_holm_matches_a_hand_computation_and_its_definition():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → max so far 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.02, 0.02, 0.5]) == pytest.approx([0.06, 0.06, 0.5])  # ties: the same value
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([0.3]) == [0.3]  # one test: no correction
    adjusted = holm([0.01, math.nan, 0.04])  # a comparison without a test is not counted
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.04)
    assert holm([]) == []
    rng = random.Random(0)
    for _ in range(200):
        p = [rng.choice([0.001, 0.01, 0.02, 0.05]) if rng.random() < 0.3 else rng.random() / 10
             for _ in range(rng.randint(1, 8))]  # with ties
        assert holm(p) == pytest.approx(holm_by_definition(p), rel=1e-12)


def test_a_family_counts_the_tests_it_makes():
    tested = ([0.80, 0.82, 0.81], [0.70, 0.75, 0.72])
    fam = family("claims", [("sct", "nca", *tested), ("one seed", "nca", [0.9], tested[1]),
                            ("flat", "nca flat", [0.5, 0.5], [0.4, 0.4])])
    assert fam.size == 1 and fam.comparisons[0].p_holm == fam.comparisons[0].welch.p
    assert fam.describe() == ("Holm family `claims`: 1 test (no test, fewer than 2 seeds or no "
                              "spread: one seed, flat)")
    assert format_comparison(fam.comparisons[1]) == "no test (n = 1 vs 3)"
    assert format_comparison(fam.comparisons[2]) == "+10.0, no test (no spread)"
    sct = fam.comparisons[0]
    assert format_comparison(sct) == expected_cell(sct.welch, sct.welch.p) + " **significant**"


def write_study(root: Path, strategy: str, best: list[float], defaults: list[float],
                params: dict | None = None, ranges: dict | None = None) -> None:
    d = root / strategy
    runs = {"best": [f"best_seed{i}" for i in range(len(best))],
            "defaults": [f"defaults_seed{i}" for i in range(len(defaults))]}
    for setting, values in (("best", best), ("defaults", defaults)):
        for i, v in enumerate(values):
            (d / f"{setting}_seed{i}").mkdir(parents=True)
            (d / f"{setting}_seed{i}" / "metrics.json").write_text(
                json.dumps({"test": {"recall@1": v, "map@r": v / 2}, "wall_time_s": 60.0}))
    (d / "study.json").write_text(json.dumps({
        "study": strategy, "strategy": strategy, "objective": "val/map@r",
        "trials": {"complete": 8, "pruned": 4, "failed": 0, "diverged": 1},
        "defaults": {"optimizer.lr": 0.001}, "defaults_value": 0.1,
        "best": {"number": 0, "value": 0.2, "params": params or {"optimizer.lr": 0.004}},
        "runs": runs, **({"ranges": ranges} if ranges else {}),
    }))


def write_log(run_dir: Path, rows: list[str]) -> None:
    log = run_dir / "csv" / "version_0" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text("epoch,step,train/loss,train/mean_pairwise_sim,val/recall@1\n"
                   + "".join(f"{r}\n" for r in rows))


def test_range_edges_flag_values_within_5_percent_of_a_bound_in_their_scale():
    space = distributions({
        "lin": {"low": 0.3, "high": 0.8}, "log": {"low": 10.0, "high": 100.0, "log": True},
        "int": {"low": 1, "high": 101, "type": "int"}, "cat": {"choices": [0.1, 0.2]},
    })
    lin = {0.3 + 0.049 * 0.5: "floor", 0.3 + 0.051 * 0.5: None,
           0.8 - 0.049 * 0.5: "ceiling", 0.8 - 0.051 * 0.5: None, 0.3: "floor", 0.8: "ceiling"}
    log = {10 ** 1.049: "floor", 10 ** 1.051: None, 10 ** 1.951: "ceiling", 10 ** 1.949: None}
    for key, cases in (("lin", lin), ("log", log), ("int", {5: "floor", 7: None, 96: "ceiling"})):
        for value, bound in cases.items():
            edges = range_edges({key: value}, space)
            assert [e.bound for e in edges] == ([bound] if bound else []), (key, value)
    # the log range in log space: 20 is 30 % of [10, 100] (linear: 11 %), never flagged at 5 %
    assert range_edges({"log": 14.0}, space, fraction=0.1) == []
    assert position(10 ** 1.3, space["log"]) == pytest.approx(0.3)
    assert range_edges({"cat": 0.1, "cat2": 0.2}, space) == []  # categorical: never; unknown key
    (edge,) = range_edges({"log": 10.5}, space)
    assert edge.describe() == "log=10.5 lies 2.1 % of its log range [10, 100] from the floor"


def test_dml_report_on_studies_shows_the_tests_intervals_and_range_edges(tmp_path, capsys):
    ranges = {"optimizer.lr": {"low": 1e-4, "high": 1e-2, "log": True},
              "loss.lam": {"low": 0.1, "high": 10.0, "log": True},
              "loss.hard_threshold": {"choices": [None, 0.7, 0.8]}}
    write_study(tmp_path, "sct", [0.80, 0.82, 0.81], [0.70, 0.75, 0.72],
                {"optimizer.lr": 0.004, "loss.lam": 0.12, "loss.hard_threshold": 0.8}, ranges)
    write_study(tmp_path, "nca_semihard", [0.70, 0.75, 0.72], [0.70, 0.75, 0.72],
                {"optimizer.lr": 0.0099})
    # an older study: no ranges in study.json, its Optuna journal holds them
    journal = JournalStorage(JournalFileBackend(str(tmp_path / "nca_semihard" / "optuna.journal")))
    study = optuna.create_study(study_name="nca_semihard", storage=journal, direction="maximize")
    study.enqueue_trial({"optimizer.lr": 0.0099})
    study.optimize(lambda t: t.suggest_float("optimizer.lr", 1e-4, 1e-2, log=True), n_trials=1)
    for i, cos in enumerate((0.9, 0.7, 0.8)):  # the collapse indicator of the tuned runs' logs
        write_log(tmp_path / "sct" / f"best_seed{i}", ["0,0,1.0,0.1,", f"1,1,1.0,{cos},",
                                                        f"1,2,1.0,{cos},"])
    write_log(tmp_path / "sct" / "trial_0", ["0,0,1.0,0.5,", "0,0,,,0.61", "1,1,1.0,0.4,",
                                             "1,1,,,0.65"])
    report_main([str(tmp_path), "--baseline", "nca_semihard"])
    printed = capsys.readouterr().out
    text = (tmp_path / "report" / "report.md").read_text()
    assert text in printed
    row = next(line for line in text.splitlines() if line.startswith("| sct |"))
    tuned, untuned = [0.80, 0.82, 0.81], [0.70, 0.75, 0.72]
    mean, half = mean_ci(tuned)
    assert f"[{100 * (mean - half):.1f}, {100 * (mean + half):.1f}] (n=3)" in row
    assert "8 / 4 / 1 / 0" in row and "10.0 → 20.0" in row
    # tuned − untuned: a family of 2 (nca_semihard's difference is 0, p = 1); vs the baseline: 1
    sct = welch(tuned, untuned)
    q_untuned, q_nca = holm_by_definition([sct.p, 1.0])
    assert q_nca == 1.0 and q_untuned == pytest.approx(2 * sct.p)
    mark = " **significant**"
    assert (f"| {expected_cell(sct, q_untuned)}{mark * (q_untuned < 0.05)} "
            f"| {expected_cell(sct, sct.p)}{mark * (sct.p < 0.05)} | — / 0.80 |") in row
    assert "Holm family `tuned vs untuned`: 2 tests" in text
    assert "Holm family `tuned vs nca_semihard`: 1 test" in text
    # range edges: lam 0.12 at 4 % of [0.1, 10] (log) from the floor; lr 0.0099 from the journal
    assert "lr=0.004 [80 %], lam=0.12 [4 %]†, hard_threshold=0.8 |" in text
    assert "| nca_semihard | lr=0.0099 [100 %]† |" in text
    assert "  - sct: loss.lam=0.12 lies 4.0 % of its log range [0.1, 10] from the floor" in text
    assert ("  - nca_semihard: optimizer.lr=0.0099 lies 0.2 % of its log range [0.0001, 0.01] "
            "from the ceiling") in text
    summary = json.loads((tmp_path / "nca_semihard" / "study.json").read_text())
    assert study_space(tmp_path / "nca_semihard", {**summary, "study": "other"}) is None
    assert study_space(tmp_path / "sct", {**summary, "storage": "/nowhere"}) is None  # no journal
    for name in ("effects.png", "curves.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"
    # the pictures draw the table's numbers
    results = [load_study_result(tmp_path / s) for s in ("nca_semihard", "sct")]
    families = study_families(results, "recall@1", "nca_semihard")
    _, drawn = effect_plot(families)
    assert drawn["tuned vs nca_semihard"] == [
        ("sct", 100 * sct.difference, 100 * sct.low, 100 * sct.high, sct.p)]
    assert [d[0] for d in drawn["tuned vs untuned"]] == ["nca_semihard", "sct"]
    _, curves = curves_plot(results)
    steps, means, stds, seeds = curves["sct"]["tuned"]
    assert steps == [0, 1, 2] and seeds == 3 and means[1:] == pytest.approx([0.8, 0.8])
    assert stds[1] == pytest.approx(0.1)  # std of 0.9, 0.7, 0.8
    assert curves["sct"]["val"] == ([0, 1], [0.61, 0.65], [0.0, 0.0], 1)
    assert "untuned" not in curves["sct"] and curves["nca_semihard"] == {}


def test_dml_report_tests_a_named_family_of_pairs(tmp_path, capsys):
    write_study(tmp_path, "sct", [0.80, 0.82, 0.81], [0.70, 0.75, 0.72])
    write_study(tmp_path, "nca_semihard", [0.70, 0.75, 0.72], [0.60, 0.62, 0.66])
    write_study(tmp_path, "nca_hardest", [0.50], [0.40, 0.42])
    report_main([str(tmp_path), "--compare", "sct:nca_semihard", "sct:nca_hardest",
                 "sct [untuned]:nca_semihard [untuned]", "--family", "claims"])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Holm family `claims`: 2 tests (no test, fewer than 2 seeds or no spread: sct)" in text
    first = welch([0.80, 0.82, 0.81], [0.70, 0.75, 0.72])
    third = welch([0.70, 0.75, 0.72], [0.60, 0.62, 0.66])
    q = holm_by_definition([first.p, third.p])
    section = text.split("## Family `claims`")[1]
    assert f"| sct − nca_semihard | 3 vs 3 | {expected_cell(first, q[0])}" in section
    assert "| sct − nca_hardest | 3 vs 1 | no test (n = 3 vs 1) | — |" in section
    assert (f"| sct [untuned] − nca_semihard [untuned] | 3 vs 3 | {expected_cell(third, q[1])}"
            in section)
    with pytest.raises(SystemExit) as exit_:
        report_main([str(tmp_path), "--compare", "sct:nope"])
    assert exit_.value.code == 2
    assert "error: --compare: nope is not a study's row" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        report_main([str(tmp_path), "--compare", "sct-nca_semihard"])
    assert exit_.value.code == 2
    assert "--compare takes ROW:BASE pairs, got 'sct-nca_semihard'" in capsys.readouterr().err


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
