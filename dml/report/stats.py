"""Statistics of a comparison over seeds: Student-t confidence intervals and Welch's t-test.

With n seeds of a strategy (values x_1..x_n, mean m, sample standard deviation s):

* 95 % confidence interval of the mean: m ± t_{0.975, n-1} · s / √n.
* Welch's two-sided t-test of two strategies a, b (unequal variances, Welch 1947):
  t = (m_a - m_b) / √(s_a²/n_a + s_b²/n_b), with ν = (s_a²/n_a + s_b²/n_b)² /
  ((s_a²/n_a)² / (n_a - 1) + (s_b²/n_b)² / (n_b - 1)) degrees of freedom; p = 2·P(T_ν > |t|).

Both need two values per strategy; with 3 seeds the test has little power, so "not
significant" means "not shown", not "equal"."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """The mean and the half-width of its ``level`` confidence interval (None for n < 2)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * s / math.sqrt(n)


@dataclass(frozen=True)
class Welch:
    """Welch's t-test of ``mean(a) - mean(b)``."""

    difference: float
    t: float
    dof: float
    p: float

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p < alpha  # False when p is NaN (undefined)


def welch(a: Sequence[float], b: Sequence[float]) -> Welch | None:
    """Welch's two-sided t-test (None unless both have 2+ values; t and p are NaN when neither
    sample has any spread)."""
    if len(a) < 2 or len(b) < 2:
        return None
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    if va + vb == 0:  # no spread on either side: the test is undefined
        return Welch(ma - mb, math.nan, math.nan, math.nan)
    t = (ma - mb) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return Welch(ma - mb, t, dof, float(2 * stats.t.sf(abs(t), dof)))


#: The significance level of the reports' tests.
ALPHA = 0.05


def format_welch(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> str:
    """``mean(a) − mean(b)`` in percentage points (values are fractions) with Welch's p, marked
    **significant** when p < ``alpha``; ``—`` with fewer than two values on a side."""
    result = welch(a, b)
    if result is None:
        return "—"
    if math.isnan(result.p):
        return f"{100 * result.difference:+.1f} (p n/a: no spread)"
    mark = " **significant**" if result.significant(alpha) else ""
    return f"{100 * result.difference:+.1f} (p = {result.p:.3f}){mark}"
