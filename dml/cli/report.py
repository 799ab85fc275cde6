"""``dml-report [SWEEP_DIR] [--paper] [--diagrams] [--out DIR]``: the table and bar plot of a sweep.

Reads every run under SWEEP_DIR (a ``dml-train -m`` output directory, default: the newest under
./multirun) from disk: its ``metrics.json``, ``config.yaml`` and ``.hydra/`` files. Groups runs
by strategy (the loss config) × dataset (the data config), averages over seeds, and writes
``report.md`` (with each strategy's training dynamics: validation curve, collapse indicator),
``report.csv``, ``runs.csv`` and ``report.png``; ``--diagrams`` adds ``diagrams.png``, the triplet
diagrams of each strategy's first seed. Never needs W&B.

A directory of studies (``dml-train -m search=<loss>``, each with a ``study.json``) gets the tuned
comparison instead: per strategy the tuned values, trials run / pruned, validation objective,
untuned and tuned test metric over seeds with 95 % confidence intervals, and Welch's t-test
against the untuned setting and against ``--baseline``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dml-report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", nargs="?", type=Path,
                   help="a dml-train -m output directory (default: the newest under ./multirun)")
    p.add_argument("--paper", action="store_true", help="put the papers' published R@1 beside ours")
    p.add_argument("--diagrams", action="store_true",
                   help="also plot each strategy's triplet diagrams (first seed) to diagrams.png")
    p.add_argument("--out", type=Path, help="output directory (default: <sweep_dir>/report)")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="which metrics of each run to report (default: test)")
    p.add_argument("--baseline", help="studies: the strategy every tuned result is tested against")
    p.add_argument("--metric", default="recall@1",
                   help="studies: the test metric compared (default: recall@1; e.g. map@r)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from dml.report import ReportError, RunFileError, latest_sweep, make_report
    from dml.report.studies import find_studies, make_study_report

    args = parse_args(argv)
    try:
        sweep = args.sweep_dir or latest_sweep()
        if find_studies(sweep):  # tuned comparisons (dml-train -m search=...)
            path = make_study_report(sweep, args.out, args.metric, args.baseline)
            print(path.read_text() + f"wrote {path}")
            return
        report = make_report(sweep, args.out, paper=args.paper, split=args.split,
                             diagrams=args.diagrams)
    except (ReportError, RunFileError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(report.markdown.read_text())
    written = [report.markdown, report.table_csv, report.runs_csv, report.plot, report.diagrams]
    print("wrote " + ", ".join(str(p) for p in written if p is not None))


if __name__ == "__main__":
    main(sys.argv[1:])
