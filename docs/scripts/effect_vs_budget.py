"""Each comparison's effect against the training budget, from ``dml-report``'s comparisons.csv.

``python docs/scripts/effect_vs_budget.py EPOCHS=DIR/comparisons.csv ... --family NAME --out PNG``
draws, for every comparison (``row − baseline``) of family NAME, its difference in the report's
metric with the Welch 95 % confidence interval at each budget (one ``dml-report`` output per
budget), and prints the rows as a Markdown table: difference [CI], raw p, Holm's p within its
report's family, and Holm's p over every row printed (the claim's tests at all budgets as one
family), seeds.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dml.report.stats import format_p, holm


def cell(p: float) -> str:
    return format_p(p).removeprefix("= ")


def read(spec: str, family: str) -> tuple[int, list[dict[str, str]]]:
    """``EPOCHS=PATH`` -> (epochs, the family's rows of that comparisons.csv)."""
    epochs, path = spec.split("=", 1)
    with Path(path).open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["family"] == family]
    if not rows:
        raise SystemExit(f"error: no comparison of family {family!r} in {path}")
    return int(epochs), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("budgets", nargs="+", help="EPOCHS=path/to/comparisons.csv")
    parser.add_argument("--family", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = sorted(read(spec, args.family) for spec in args.budgets)
    names = list(dict.fromkeys(f"{r['row']} − {r['baseline']}" for _, rows in data for r in rows))
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    table = [(name, epochs, r) for name in names for epochs, rows in data for r in rows
             if f"{r['row']} − {r['baseline']}" == name]
    across = holm([float(r["p"]) for _, _, r in table])
    print("| comparison | epochs | difference [95 % CI] | p | Holm p (report) | "
          f"Holm p ({len(table)} tests) | seeds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (name, epochs, r), p_all in zip(table, across, strict=True):
        d, a, b = (100 * float(r[k]) for k in ("difference", "ci_low", "ci_high"))
        print(f"| {name} | {epochs} | {d:+.1f} [{a:+.1f}, {b:+.1f}] | {cell(float(r['p']))} "
              f"| {cell(float(r['p_holm']))} | {cell(p_all)} | "
              f"{r['n']} vs {r['n_baseline']} |")
    for i, name in enumerate(names):
        points = [(epochs, r) for n, epochs, r in table if n == name]
        shift = 0.08 * (i - (len(names) - 1) / 2)
        d = [100 * float(r["difference"]) for _, r in points]
        lo = [x - 100 * float(r["ci_low"]) for x, (_, r) in zip(d, points, strict=True)]
        hi = [100 * float(r["ci_high"]) - x for x, (_, r) in zip(d, points, strict=True)]
        ax.errorbar([e + shift for e, _ in points], d, yerr=[lo, hi], marker="o", capsize=3,
                    label=name)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks([epochs for epochs, _ in data])
    ax.set_xlabel("training budget (epochs)")
    ax.set_ylabel("difference (points) [95 % CI]")
    ax.set_title(f"family {args.family}")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside: never on a line
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
