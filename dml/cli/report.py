"""``dml-report [DIR ...] [--paper] [--diagrams] [--baseline ROW] [--out DIR]``: the table and bar
plot of a sweep, or of several directories pooled; the tuned comparison of a directory of studies.

Reads every run under DIR (a ``dml-train -m`` output directory, default: the newest under
./multirun) from disk: its ``metrics.json``, ``config.yaml`` and ``.hydra/`` files. Groups runs
by strategy (the loss config) × dataset (the data config), averages over seeds, and writes
``report.md`` (with each strategy's training dynamics: validation curve, collapse indicator),
``report.csv``, ``runs.csv`` and ``report.png``; ``--diagrams`` adds ``diagrams.png``, the triplet
diagrams of each strategy's first seed. Never needs W&B.

A row is a strategy: the loss config with the configs wrapping it, ``multisimilarity+xbm`` for
``loss=multisimilarity memory=xbm``, ``sct+mochi`` for ``synthesis=mochi``; a setting that
differs between runs of one row is added to its label, ``sct [loss.lam=0.5]``. With
``--baseline ROW`` each table gets a column: ``--metric`` of the row minus the baseline's, with
the Welch 95 % confidence interval of the difference, Welch's two-sided p over seeds and the
Holm-adjusted p over the family of all the table's rows against the baseline (the report names
each family); ``--compare A:B ...`` tests the listed pairs of rows as one more family, named by
``--family``, in a table of its own; all tests also in ``comparisons.csv``, drawn in
``effects.png``.

One directory of studies (``dml-train -m search=<loss>``, each with a ``study.json``) gets the
tuned comparison instead: per strategy the tuned values, trials run / pruned, validation
objective, untuned and tuned test metric over seeds with 95 % confidence intervals, and the
difference to the untuned setting and to ``--baseline`` (95 % CI, raw and Holm-adjusted p; one
Holm family per column). ``--compare A:B ...`` tests listed pairs of rows (``sct:nca_semihard``,
``'sct [untuned]:nca_semihard [untuned]'``) as one more family, named by ``--family`` (e.g. the
claims of a verdict). Each tuned value is shown with its place in its search range, and flagged
(†, and listed in the header) within ``--edge-fraction`` of a bound (log space for log ranges).
Pictures: ``effects.png`` (each difference with its CI, per family) and ``curves.png`` (per
strategy: the best trial's validation R@1 per epoch, the collapse indicator per step of the
retrain runs with a band over seeds).

Several directories (``dml-report A B C``) are pooled into one table, written to
``multirun/report-A+B+C`` unless ``--out``. A study among them contributes its retrain runs as
the rows ``<strategy> [tuned]`` (its best setting) and ``<strategy> [untuned]`` (the config
defaults); its trials are not rows. Runs of one row from several directories are the seeds of
one cell (e.g. seed 2 re-run into a directory of its own), unless one seed of that row comes
from two directories: such runs are never averaged together; each of the row's runs is labelled
with its directory instead, ``contrastive [dir=A]`` and ``contrastive [dir=B]``, and the header
lists those rows.

One run directory with ``--show N`` also gets the picture of what its model retrieves: N queries
of ``--split`` with their top-``--show-k`` neighbours, drawn from the run's selected checkpoint
exactly as ``dml-eval CKPT --show N`` draws them, into ``retrieval_grid.png`` (and its ``.json``
table) in the output directory.

The header lists the code the runs recorded (commit, ``+dirty``, or the installed version); a
table whose runs were made by different code also gets a warning, printed to stderr too.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from dml.tune.edges import EDGE_FRACTION


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dml-report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dirs", nargs="*", type=Path, metavar="DIR",
                   help="dml-train -m output directories, pooled into one table when several "
                        "(default: the newest under ./multirun)")
    p.add_argument("--paper", action="store_true", help="put the papers' published R@1 beside ours")
    p.add_argument("--diagrams", action="store_true",
                   help="also plot each strategy's triplet diagrams (first seed) to diagrams.png")
    p.add_argument("--out", type=Path,
                   help="output directory (default: DIR/report; several: multirun/report-...)")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="which metrics of each run to report (default: test)")
    p.add_argument("--baseline", metavar="ROW",
                   help="the row every other is tested against, a label of the table, e.g. "
                        "'multisimilarity [untuned]' (studies: the tuned strategy)")
    p.add_argument("--metric", default="recall@1",
                   help="the metric compared with --baseline (default: recall@1; e.g. map@r)")
    p.add_argument("--compare", nargs="+", default=[], metavar="ROW:BASE",
                   help="pairs of rows tested as one Holm family (row minus base), e.g. "
                        "sct:nca_semihard loop_multisimilarity:multisimilarity")
    p.add_argument("--family", default="compared", metavar="NAME",
                   help="the name of the --compare family, e.g. claims (default: compared)")
    p.add_argument("--show", type=int, metavar="N",
                   help="one run directory: also draw N queries of --split with their top-k "
                        "(dml-eval --show, from the run's selected checkpoint) to "
                        "retrieval_grid.png")
    p.add_argument("--show-k", type=int, default=5, metavar="K",
                   help="neighbours per query in the --show grid (default: 5)")
    p.add_argument("--edge-fraction", type=float, default=EDGE_FRACTION, metavar="F",
                   help="studies: flag tuned values within this share of a search-range bound "
                        f"(default: {EDGE_FRACTION})")
    args = p.parse_args(argv)
    bad = [pair for pair in args.compare if pair.count(":") != 1]
    if bad:
        p.error(f"--compare takes ROW:BASE pairs, got {bad[0]!r}")
    if not 0 <= args.edge_fraction < 0.5:
        p.error("--edge-fraction must be in [0, 0.5)")
    return args


def main(argv: list[str] | None = None) -> None:
    from dml.report.code_versions import MixedCodeWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MixedCodeWarning)
        _report(parse_args(argv))
    for warning in caught:
        if issubclass(warning.category, MixedCodeWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename,
                                 warning.lineno)


def _report(args: argparse.Namespace) -> None:
    from dml.errors import UserError
    from dml.report import ReportError, latest_sweep, make_report
    from dml.report.studies import find_studies, make_study_report

    try:
        dirs = args.sweep_dirs or [latest_sweep()]
        pairs = [tuple(pair.split(":")) for pair in args.compare]
        grid = grid_args(args, dirs) if args.show is not None else None
        if len(dirs) == 1 and find_studies(dirs[0]):  # tuned comparisons (dml-train -m search=)
            paths = make_study_report(dirs[0], args.out, args.metric, args.baseline, pairs,
                                      args.family, args.edge_fraction)
            print(paths[0].read_text() + "wrote " + ", ".join(map(str, paths)))
            return
        report = make_report(dirs[0] if len(dirs) == 1 else dirs, args.out, paper=args.paper,
                             split=args.split, diagrams=args.diagrams, baseline=args.baseline,
                             metric=args.metric, compare=pairs, family_name=args.family)
        if grid is not None:
            from dml.cli.eval import evaluate

            evaluate(grid)
    except (ReportError, UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(report.markdown.read_text())
    written = [report.markdown, report.table_csv, report.runs_csv, report.plot, report.diagrams,
               report.comparisons, report.effects, grid and grid.show_path]
    print("wrote " + ", ".join(str(p) for p in written if p is not None))


def grid_args(args: argparse.Namespace, dirs: list[Path]) -> argparse.Namespace:
    """``dml-eval``'s arguments that draw ``--show`` queries of the one run in ``dirs`` from its
    selected checkpoint into the report's directory; checked before anything is written."""
    from dml.cli.eval import check_show
    from dml.cli.eval import parse_args as eval_args
    from dml.errors import ConfigError
    from dml.runs.records import selected_checkpoint

    if len(dirs) != 1 or not (dirs[0] / "metrics.json").is_file():
        given = " ".join(map(str, dirs))
        raise ConfigError(f"--show draws the retrieval grid of one finished run: pass its "
                          f"directory (holding metrics.json), not {given}")
    path = (args.out or dirs[0] / "report") / "retrieval_grid.png"
    grid = eval_args([str(selected_checkpoint(dirs[0])), "--split", args.split,
                      "--show", str(args.show), "--show-k", str(args.show_k),
                      "--show-path", str(path), "module.nmi=false"])
    check_show(grid)
    return grid


if __name__ == "__main__":
    main(sys.argv[1:])
