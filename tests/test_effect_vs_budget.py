"""docs/scripts/effect_vs_budget.py: a family's comparisons at several budgets, table and plot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "scripts" / "effect_vs_budget.py"
HEADER = "family,row,baseline,n,n_baseline,difference,ci_low,ci_high,t,df,p,p_holm\n"


def test_each_comparison_is_drawn_and_tabled_at_each_budget(tmp_path):
    two, six = tmp_path / "two.csv", tmp_path / "six.csv"
    two.write_text(HEADER + "claims,a,b,5,5,-0.026,-0.046,-0.006,-3.5,4.4,0.021,0.063\n"
                   "other,c,b,5,5,0.5,0.4,0.6,9,4,0.001,0.001\n")
    six.write_text(HEADER + "claims,a,b,5,4,0.010,-0.005,0.025,1.5,6.0,0.18,0.18\n")
    out = tmp_path / "effect.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), f"6={six}", f"2={two}",
                           "--family", "claims", "--out", str(out)],
                          capture_output=True, text=True, check=True)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| a − b")]
    # Holm over both budgets' tests: 0.021 * 2 = 0.042, then max(0.042, 0.18 * 1) = 0.18.
    assert rows == ["| a − b | 2 | -2.6 [-4.6, -0.6] | 0.021 | 0.063 | 0.042 | 5 vs 5 |",
                    "| a − b | 6 | +1.0 [-0.5, +2.5] | 0.180 | 0.180 | 0.180 | 5 vs 4 |"]
    assert Image.open(out).size[0] > 100


def test_a_family_missing_from_a_report_is_one_line(tmp_path):
    two = tmp_path / "two.csv"
    two.write_text(HEADER)
    proc = subprocess.run([sys.executable, str(SCRIPT), f"2={two}", "--family", "claims",
                           "--out", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: no comparison of family 'claims' in {two}"
