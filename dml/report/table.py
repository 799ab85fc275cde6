"""Mean ± standard deviation over seeds per strategy × dataset, as markdown and CSV."""

from __future__ import annotations

import csv
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dml.report.labels import cell_labels
from dml.report.paper import published_recall_at_1
from dml.report.stats import Family, family, format_comparison
from dml.runs.records import Run

#: How the report files write a run directory's name that is not valid UTF-8 (Python decodes its
#: bytes with surrogate escapes): backslash-escaped, ``b"run_\xff"`` → ``run_\udcff``.
UNENCODABLE = "backslashreplace"

FIRST_METRICS = ("recall@1", "map@r")
NAMES = {"map@r": "MAP@R", "r_precision": "R-Prec", "nmi": "NMI"}


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean (None when empty) and sample standard deviation (n − 1; None below two values)."""
    mean = statistics.fmean(values) if values else None
    return mean, statistics.stdev(values) if len(values) > 1 else None


@dataclass(frozen=True)
class Cell:
    """The runs (seeds) of one strategy on one dataset. ``strategy``/``dataset`` are the row and
    column labels (with any distinguishing settings); ``loss``/``data`` the config names."""

    strategy: str
    dataset: str
    loss: str
    data: str
    runs: tuple[Run, ...]

    @property
    def variant(self) -> bool:
        """True when the labels carry settings beyond the config names."""
        return (self.strategy, self.dataset) != (self.loss, self.data)

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if metric in r.metrics]

    def mean(self, metric: str) -> float | None:
        return mean_std(self.values(metric))[0]

    def std(self, metric: str) -> float | None:
        """Sample standard deviation (n − 1), None with fewer than two values."""
        return mean_std(self.values(metric))[1]

    def seeds(self) -> list[int | None]:
        return sorted((r.seed for r in self.runs), key=lambda s: (s is None, s))

    def wall_time_s(self) -> float:
        return sum(r.wall_time_s or 0.0 for r in self.runs)

    def published(self) -> float | str | None:
        """The paper's R@1 (%) for this loss and dataset (never for a variant)."""
        return None if self.variant else published_recall_at_1(self.loss, self.data)


def group_runs(runs: Sequence[Run]) -> list[Cell]:
    """One :class:`Cell` per (strategy, dataset) label, sorted by dataset then strategy."""
    cells: dict[tuple[str, str], list[Run]] = {}
    for run, labels in zip(runs, cell_labels(runs), strict=True):
        cells.setdefault(labels, []).append(run)
    return [
        Cell(strategy, dataset, rs[0].strategy, rs[0].dataset, tuple(rs))
        for (strategy, dataset), rs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]


def metric_names(runs: Sequence[Run]) -> list[str]:
    """R@1 and MAP@R first, then the other Recall@K by K, then the rest alphabetically."""
    present = {m for r in runs for m in r.metrics}

    def rank(m: str) -> tuple:
        if m in FIRST_METRICS:
            return (0, FIRST_METRICS.index(m), "")
        k = re.fullmatch(r"recall@(\d+)", m)
        return (1, int(k.group(1)), "") if k else (2, 0, m)

    return sorted(present, key=rank)


def display_name(metric: str) -> str:
    k = re.fullmatch(r"recall@(\d+)", metric)
    return f"R@{k.group(1)}" if k else NAMES.get(metric, metric)


def format_mean_std(
    mean: float | None, std: float | None, scale: float = 1.0, digits: int = 2
) -> str:
    """``mean ± std`` (each times ``scale``, ``digits`` decimals); ``—`` without a mean, the mean
    alone without a std."""
    if mean is None:
        return "—"
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def format_percent(mean: float | None, std: float | None) -> str:
    return format_mean_std(mean, std, scale=100, digits=1)


def _published_text(value: float | str | None) -> str:
    return "—" if value is None else value if isinstance(value, str) else f"{value:.1f}"


def baseline_families(cells: Sequence[Cell], baseline: str, metric: str) -> dict[str, Family]:
    """Per dataset with a ``baseline`` row, the Holm family of every other row's ``metric``
    against it (named ``<dataset>: all vs <baseline>``)."""
    families = {}
    for d in dict.fromkeys(c.dataset for c in cells):
        base = next((c for c in cells if (c.strategy, c.dataset) == (baseline, d)), None)
        if base is not None:
            families[d] = family(f"{d}: all vs {baseline}", [
                (c.strategy, baseline, c.values(metric), base.values(metric))
                for c in cells if c.dataset == d and c is not base])
    return families


def pair_families(cells: Sequence[Cell], pairs: Sequence[tuple[str, str]], name: str,
                  metric: str) -> dict[str, Family]:
    """Per dataset holding both rows of some pair, the Holm family ``name`` (``<dataset>: name``
    with several datasets) of each such pair's ``metric``, row minus base."""
    datasets = list(dict.fromkeys(c.dataset for c in cells))
    by = {(c.strategy, c.dataset): c for c in cells}
    families = {}
    for d in datasets:
        tests = [(a, b, by[a, d].values(metric), by[b, d].values(metric))
                 for a, b in pairs if (a, d) in by and (b, d) in by]
        if tests:
            families[d] = family(name if len(datasets) == 1 else f"{d}: {name}", tests)
    return families


def family_markdown(f: Family, metric: str) -> str:
    """A family's own table: per pair the seeds, the difference in ``metric`` with its 95 % CI,
    raw and Holm p, and t with its Welch–Satterthwaite df."""
    rows = [["comparison", "seeds", f"difference in {display_name(metric)} [95 % CI], p, Holm p",
             "t (df)"], ["---"] * 4]
    rows += [[f"{c.row} − {c.baseline}", f"{c.n} vs {c.n_baseline}", format_comparison(c),
              f"{c.welch.t:.2f} ({c.welch.dof:.1f})" if c.tested else "—"]
             for c in f.comparisons]
    return f"## Family `{f.name}`\n\n" + rows_to_markdown(rows)


def markdown_tables(
    cells: Sequence[Cell],
    metrics: Sequence[str],
    paper: bool,
    baseline: str | None = None,
    metric: str = "recall@1",
) -> str:
    """A table per dataset (rows: strategies; columns: seeds and every metric in %, the
    published R@1 with ``paper``, and with a ``baseline`` row label each row's ``metric`` minus
    the baseline's on that dataset: 95 % CI, Welch's p and the Holm-adjusted p over the
    dataset's :func:`baseline_families`), preceded by an R@1 overview when there are several
    datasets."""
    datasets = list(dict.fromkeys(c.dataset for c in cells))
    parts = []
    if len(datasets) > 1:
        strategies = sorted({c.strategy for c in cells})
        by = {(c.strategy, c.dataset): c for c in cells}
        rows = [["strategy", *datasets], ["---"] * (len(datasets) + 1)]
        for s in strategies:
            row = [s]
            for d in datasets:
                c = by.get((s, d))
                row.append(format_percent(c.mean("recall@1"), c.std("recall@1")) if c else "")
            rows.append(row)
        parts.append("## R@1 (%) by dataset\n\n" + rows_to_markdown(rows))
    tests = {(d, c.row): format_comparison(c)
             for d, f in (baseline_families(cells, baseline, metric) if baseline else {}).items()
             for c in f.comparisons}
    for d in datasets:
        header = ["strategy", "seeds", *(display_name(m) for m in metrics)]
        header += ["paper R@1"] if paper else []
        header += [f"{display_name(metric)} − {baseline} [95 % CI], p, Holm p"] if baseline else []
        rows = [header, ["---"] * len(header)]
        base = next((c for c in cells if (c.strategy, c.dataset) == (baseline, d)), None)
        for c in (c for c in cells if c.dataset == d):
            row = [c.strategy, str(len(c.runs))]
            row += [format_percent(c.mean(m), c.std(m)) for m in metrics]
            row += [_published_text(c.published())] if paper else []
            if baseline:
                row.append("baseline" if c is base else tests.get((d, c.strategy), "—"))
            rows.append(row)
        parts.append(f"## {d}\n\n" + rows_to_markdown(rows))
    return "\n".join(parts)


def rows_to_markdown(rows: list[list[str]]) -> str:
    return "".join("| " + " | ".join(r) + " |\n" for r in rows)


def write_cells_csv(cells: Sequence[Cell], metrics: Sequence[str], path: Path, paper: bool) -> None:
    """One row per cell: labels, config names, seeds, ``<metric>_mean``/``<metric>_std`` (as
    fractions, empty when undefined), summed wall time, and the published R@1 (%) with ``paper``."""
    columns = ["strategy", "dataset", "loss", "data", "n_runs", "seeds"]
    columns += [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    columns += ["wall_time_s"] + (["paper_recall@1_percent"] if paper else [])
    with open(path, "w", newline="", encoding="utf-8", errors=UNENCODABLE) as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for c in cells:
            row = [c.strategy, c.dataset, c.loss, c.data, len(c.runs)]
            row.append(" ".join(str(s) for s in c.seeds()))
            for m in metrics:
                row += [_csv_number(c.mean(m)), _csv_number(c.std(m))]
            row.append(round(c.wall_time_s(), 1))
            if paper:
                published = c.published()
                row.append("" if published is None else published)
            writer.writerow(row)


def write_runs_csv(runs: Sequence[Run], metrics: Sequence[str], path: Path) -> None:
    """One row per run (what the notebook reads to find each run's directory)."""
    with open(path, "w", newline="", encoding="utf-8", errors=UNENCODABLE) as f:
        writer = csv.writer(f)
        writer.writerow(["strategy", "dataset", "seed", "run_dir", "code", "wall_time_s",
                         *metrics])
        for run, (strategy, dataset) in zip(runs, cell_labels(runs), strict=True):
            row = [strategy, dataset, run.seed, str(run.run_dir), run.code or "", run.wall_time_s]
            writer.writerow(row + [_csv_number(run.metrics.get(m)) for m in metrics])


def write_comparisons_csv(families: Sequence[Family], path: Path) -> None:
    """One row per comparison: its family, the rows, seeds, the difference with its 95 % CI,
    t, Welch–Satterthwaite df, raw and Holm-adjusted p (as fractions; empty without a test)."""
    with open(path, "w", newline="", encoding="utf-8", errors=UNENCODABLE) as f:
        writer = csv.writer(f)
        writer.writerow(["family", "row", "baseline", "n", "n_baseline", "difference",
                         "ci_low", "ci_high", "t", "df", "p", "p_holm"])
        for fam in families:
            for c in fam.comparisons:
                w = c.welch
                numbers = [] if w is None else [w.difference, w.low, w.high, w.t, w.dof, w.p]
                numbers = [x if x == x else None for x in numbers] or [None] * 6  # NaN: empty
                numbers.append(c.p_holm if c.p_holm == c.p_holm else None)
                writer.writerow([fam.name, c.row, c.baseline, c.n, c.n_baseline,
                                 *(_csv_number(x) for x in numbers)])


def _csv_number(x: float | None) -> str:
    return "" if x is None else repr(x)
