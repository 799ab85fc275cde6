"""``make_report``: a sweep directory in, a table (markdown + CSV) and a bar plot out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dml.report.diagrams import diagram_grid, first_seed_diagrams
from dml.report.dynamics import dynamics_markdown
from dml.report.paper import SOURCE
from dml.report.plot import bar_plot
from dml.report.runs import Run, collect_runs, common_settings, sweep_command, sweep_wall_time
from dml.report.table import (
    Cell,
    group_runs,
    markdown_tables,
    metric_names,
    write_cells_csv,
    write_runs_csv,
)


class ReportError(RuntimeError):
    """Nothing to report (no finished run under the directory)."""


@dataclass(frozen=True)
class Report:
    """What :func:`make_report` wrote, and what it was made of."""

    markdown: Path  # report.md: the tables
    table_csv: Path  # report.csv: one row per strategy × dataset
    runs_csv: Path  # runs.csv: one row per run
    plot: Path  # report.png: the bar plot
    diagrams: Path | None  # diagrams.png: triplet diagrams (only when asked for and saved)
    cells: list[Cell]
    runs: list[Run]
    incomplete: list[Path]


def make_report(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    paper: bool = False,
    split: str = "test",
    diagrams: bool = False,
) -> Report:
    """Collect every run under ``sweep_dir`` (its ``metrics.json``, config and Hydra choices),
    average over seeds per strategy × dataset and write ``report.md``, ``report.csv``,
    ``runs.csv`` and ``report.png`` to ``out_dir`` (default ``<sweep_dir>/report``).
    ``paper`` adds the published R@1 beside ours; ``split`` picks the metrics (``test``/``val``);
    ``diagrams`` also writes ``diagrams.png``, the triplet diagrams of each strategy's first seed
    by epoch (when its runs saved any).
    """
    sweep_dir = Path(sweep_dir)
    runs, incomplete = collect_runs(sweep_dir, split)
    if not runs:
        raise ReportError(
            f"no finished run under {sweep_dir}: no metrics.json with '{split}' metrics "
            "(is it a dml-train output directory? did the jobs finish?)"
        )
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    cells, metrics = group_runs(runs), metric_names(runs)
    text = _header(sweep_dir, runs, cells, incomplete, split, paper)
    text += "\n" + markdown_tables(cells, metrics, paper)
    dynamics = dynamics_markdown(cells) if split == "test" else ""
    text += "\n" + dynamics if dynamics else ""
    diagram_rows = first_seed_diagrams(cells) if diagrams else {}
    report = Report(
        out / "report.md", out / "report.csv", out / "runs.csv", out / "report.png",
        out / "diagrams.png" if diagram_rows else None, cells, runs, incomplete,
    )
    report.markdown.write_text(text)
    write_cells_csv(cells, metrics, report.table_csv, paper)
    write_runs_csv(runs, metrics, report.runs_csv)
    bar_plot(cells, paper).savefig(report.plot, dpi=100)
    if report.diagrams is not None:
        diagram_grid(diagram_rows).savefig(report.diagrams, dpi=80)
    return report


def _header(
    sweep_dir: Path,
    runs: Sequence[Run],
    cells: Sequence[Cell],
    incomplete: Sequence[Path],
    split: str,
    paper: bool,
) -> str:
    seeds = sorted({r.seed for r in runs if r.seed is not None})
    n_strategies = len({c.strategy for c in cells})
    n_datasets = len({c.dataset for c in cells})
    lines = [
        f"- sweep `{sweep_dir.resolve()}`: {len(runs)} runs, {n_strategies} strategies × "
        f"{n_datasets} dataset(s), seeds {', '.join(map(str, seeds)) or 'unknown'}",
        f"- {split} metrics of each run's selected checkpoint; each cell: mean ± sample "
        "standard deviation over seeds, in %",
    ]
    shared = common_settings(runs)
    if shared:
        shown = " ".join(f"`{k}={v}`" for k, v in shared.items())
        lines.append(f"- settings shared by all runs: {shown}")
    command = sweep_command(sweep_dir)
    if command:
        lines.append(f"- command: `{command}`")
    total = sum(r.wall_time_s or 0.0 for r in runs)
    timing = f"- run time: {format_duration(total)} in total (sum of the runs' wall times)"
    wall = sweep_wall_time(sweep_dir, runs)
    if wall is not None:
        timing += f"; sweep wall time {format_duration(wall)} (start to last metrics.json)"
    lines.append(timing)
    if incomplete:
        jobs = ", ".join(f"`{p.relative_to(sweep_dir)}`" for p in incomplete)
        lines.append(f"- **incomplete jobs (no {split} metrics): {len(incomplete)}**: {jobs}")
    if paper:
        lines.append(f"- paper R@1: {SOURCE}; '—': not published, 'collapse': training collapsed")
    return "# Sweep report\n\n" + "\n".join(lines) + "\n"


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
