"""``make_report``: one sweep directory or several in, a table (markdown + CSV) and a bar plot
out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dml.files import staged_files
from dml.report.code_versions import code_line, warn_if_mixed
from dml.report.diagrams import diagram_grid, first_seed_diagrams
from dml.report.dynamics import dynamics_markdown
from dml.report.labels import common_settings, rows_kept_apart, source_names
from dml.report.paper import SOURCE
from dml.report.plot import bar_plot
from dml.report.stats import ALPHA
from dml.report.study_plots import effect_plot
from dml.report.table import (
    UNENCODABLE,
    Cell,
    baseline_families,
    display_name,
    family_markdown,
    group_runs,
    markdown_tables,
    metric_names,
    pair_families,
    write_cells_csv,
    write_comparisons_csv,
    write_runs_csv,
)
from dml.runs.records import Run, collect_runs, join_runs, sweep_command, sweep_wall_time
from dml.runs.run_dir import interruption


class ReportError(RuntimeError):
    """Nothing to report (no finished run under a directory), or a baseline or metric that is
    not in the table."""


@dataclass(frozen=True)
class Report:
    """What :func:`make_report` wrote, and what it was made of."""

    markdown: Path  # report.md: the tables
    table_csv: Path  # report.csv: one row per strategy × dataset
    runs_csv: Path  # runs.csv: one row per run
    plot: Path  # report.png: the bar plot
    diagrams: Path | None  # diagrams.png: triplet diagrams (only when asked for and saved)
    comparisons: Path | None  # comparisons.csv: every test against the baseline (with one)
    effects: Path | None  # effects.png: the differences to the baseline with their CIs
    cells: list[Cell]
    runs: list[Run]
    incomplete: list[Path]


def make_report(
    sweep_dir: str | Path | Sequence[str | Path],
    out_dir: str | Path | None = None,
    paper: bool = False,
    split: str = "test",
    diagrams: bool = False,
    baseline: str | None = None,
    metric: str = "recall@1",
    compare: Sequence[tuple[str, str]] = (),
    family_name: str = "compared",
) -> Report:
    """Collect every run under ``sweep_dir`` (its ``metrics.json``, config and Hydra choices),
    average over seeds per strategy × dataset and write ``report.md``, ``report.csv``,
    ``runs.csv`` and ``report.png`` to ``out_dir`` (default ``<sweep_dir>/report``).
    ``paper`` adds the published R@1 beside ours; ``split`` picks the metrics (``test``/``val``);
    ``diagrams`` also writes ``diagrams.png``, the triplet diagrams of each strategy's first seed
    by epoch (when its runs saved any); ``baseline``, a row label, adds each row's ``metric``
    minus the baseline's with its 95 % CI, Welch's p and the Holm-adjusted p over the dataset's
    rows; ``compare``, pairs of row labels, tests each pair (row minus base) as one more family,
    ``family_name``, per dataset (all tests also in ``comparisons.csv``, drawn in
    ``effects.png``).

    ``sweep_dir`` may be a list of directories: their runs are pooled into one table (see
    :func:`~dml.report.labels.cell_labels` for how rows stay apart); ``out_dir`` then defaults to
    ``multirun/report-<name>+<name>...`` (never inside one of them).
    """
    dirs = [Path(sweep_dir)] if isinstance(sweep_dir, (str, Path)) else [Path(d) for d in sweep_dir]
    collected = [collect_runs(d, split) for d in dirs]
    for d, (found, _) in zip(dirs, collected, strict=True):
        if not found:
            raise ReportError(
                f"no finished run under {d}: no metrics.json with '{split}' metrics "
                "(is it a dml-train output directory? did the jobs finish?)"
            )
    runs, incomplete = join_runs(collected)
    cells, metrics = group_runs(runs), metric_names(runs)
    _check_baseline(cells, metrics, baseline, metric)
    for row in (row for pair in compare for row in pair):
        _check_baseline(cells, metrics, row, metric, "--compare")
    if out_dir is not None:
        out = Path(out_dir)
    elif len(dirs) == 1:
        out = dirs[0] / "report"
    else:
        out = Path("multirun") / ("report-" + "+".join(source_names(dirs).values()))
    out.mkdir(parents=True, exist_ok=True)
    text = _header(dirs, runs, cells, incomplete, split, paper)
    against = list(baseline_families(cells, baseline, metric).values()) if baseline else []
    pairs = list(pair_families(cells, compare, family_name, metric).values())
    families = against + pairs
    if families:
        text += (f"- differences in {display_name(metric)}: of the means in points [Welch 95 % "
                 "confidence interval, Welch–Satterthwaite df], Welch's two-sided p over seeds, "
                 "Holm's adjusted p over the family of tests (a table's rows against its "
                 f"baseline, or the --compare pairs); **significant** when the Holm-adjusted p < "
                 f"{ALPHA}\n")
        text += "".join(f"- {f.describe()}\n" for f in families)
    text += "\n" + markdown_tables(cells, metrics, paper, baseline, metric)
    text += "".join("\n" + family_markdown(f, metric) for f in pairs)
    dynamics = dynamics_markdown(cells) if split == "test" else ""
    text += "\n" + dynamics if dynamics else ""
    diagram_rows = first_seed_diagrams(cells) if diagrams else {}
    report = Report(
        out / "report.md", out / "report.csv", out / "runs.csv", out / "report.png",
        out / "diagrams.png" if diagram_rows else None,
        out / "comparisons.csv" if families else None, out / "effects.png" if families else None,
        cells, runs, incomplete,
    )
    with staged_files(out) as stage:  # all the files, or (on an error) none
        (stage / report.markdown.name).write_text(text, encoding="utf-8", errors=UNENCODABLE)
        write_cells_csv(cells, metrics, stage / report.table_csv.name, paper)
        write_runs_csv(runs, metrics, stage / report.runs_csv.name)
        bar_plot(cells, paper).savefig(stage / report.plot.name, dpi=100)
        if report.comparisons is not None and report.effects is not None:
            write_comparisons_csv(families, stage / report.comparisons.name)
            effect_plot(families, display_name(metric))[0].savefig(stage / report.effects.name,
                                                                   dpi=100)
        if report.diagrams is not None:
            diagram_grid(diagram_rows).savefig(stage / report.diagrams.name, dpi=80)
    return report


def _check_baseline(
    cells: Sequence[Cell], metrics: Sequence[str], baseline: str | None, metric: str,
    option: str = "--baseline",
) -> None:
    """A :class:`ReportError` unless ``baseline`` is None or a row label with ``metric``."""
    if baseline is None:
        return
    rows = list(dict.fromkeys(c.strategy for c in cells))
    if baseline not in rows:
        raise ReportError(f"{option} {baseline} is not a row of the table: {', '.join(rows)}")
    if metric not in metrics:
        raise ReportError(f"--metric {metric} is not a metric of these runs: {', '.join(metrics)}")


def _header(
    dirs: Sequence[Path],
    runs: Sequence[Run],
    cells: Sequence[Cell],
    incomplete: Sequence[Path],
    split: str,
    paper: bool,
) -> str:
    seeds = sorted({r.seed for r in runs if r.seed is not None})
    n_strategies = len({c.strategy for c in cells})
    n_datasets = len({c.dataset for c in cells})
    what = (f"{len(runs)} runs, {n_strategies} strategies × {n_datasets} dataset(s), "
            f"seeds {', '.join(map(str, seeds)) or 'unknown'}")
    if len(dirs) == 1:
        lines = [f"- sweep `{dirs[0].resolve()}`: {what}"]
    else:
        counts = [sum(r.source == d for r in runs) for d in dirs]
        lines = [f"- {len(dirs)} directories pooled: {what}"]
        lines += [f"  - `{d.resolve()}`: {n} runs" for d, n in zip(dirs, counts, strict=True)]
    lines.append(f"- {split} metrics of each run's selected checkpoint; each cell: mean ± sample "
                 "standard deviation over seeds, in %")
    if any(r.tuning for r in runs):
        lines.append("- `[tuned]` / `[untuned]`: a study's retrain runs of its best setting / of "
                     "the config defaults (its search trials are not rows)")
    apart = rows_kept_apart(runs)
    if apart:
        shown = ", ".join(f"`{row}`" for row in apart)
        lines.append(f"- not pooled across directories, as a seed of each ran in several: "
                     f"{shown} (rows labelled `dir=<directory>`)")
    shared = common_settings(runs)
    if shared:
        shown = " ".join(f"`{k}={v}`" for k, v in shared.items())
        lines.append(f"- settings shared by all runs: {shown}")
    for d in dirs:
        command = sweep_command(d)
        if command:
            where = f" (`{d}`)" if len(dirs) > 1 else ""
            lines.append(f"- command{where}: `{command}`")
    lines.append(code_line([r.code for r in runs]))
    mixed = warn_if_mixed([r.code for r in runs])
    if mixed:
        lines.append(f"- **warning: {mixed}**")
    total = sum(r.wall_time_s or 0.0 for r in runs)
    timing = f"- run time: {format_duration(total)} in total (sum of the runs' wall times)"
    wall = sweep_wall_time(dirs[0], runs) if len(dirs) == 1 else None
    if wall is not None:
        timing += f"; sweep wall time {format_duration(wall)} (start to last metrics.json)"
    lines.append(timing)
    if incomplete:
        jobs = ", ".join(f"`{p.relative_to(dirs[0]) if len(dirs) == 1 else p}`"
                         + (f" (interrupted: {why})" if (why := interruption(p)) else "")
                         for p in incomplete)
        lines.append(f"- **incomplete jobs (no {split} metrics): {len(incomplete)}**: {jobs}")
    if paper:
        lines.append(f"- paper R@1: {SOURCE}; '—': not published, 'collapse': training collapsed")
    return "# Sweep report\n\n" + "\n".join(lines) + "\n"


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
