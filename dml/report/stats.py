"""Statistics of a comparison over seeds: Student-t confidence intervals, Welch's t-test with the
confidence interval of the difference, and Holm's correction for a family of tests.

With n seeds of a strategy (values x_1..x_n, mean m, sample standard deviation s):

* 95 % confidence interval of the mean: m ± t_{0.975, n-1} · s / √n.
* Welch's two-sided t-test of two strategies a, b (unequal variances, Welch 1947):
  t = (m_a - m_b) / se with se = √(s_a²/n_a + s_b²/n_b) and ν = se⁴ /
  ((s_a²/n_a)² / (n_a - 1) + (s_b²/n_b)² / (n_b - 1)) degrees of freedom (Welch–Satterthwaite);
  p = 2·P(T_ν > |t|); 95 % confidence interval of m_a - m_b: m_a - m_b ± t_{0.975, ν} · se.
  The same numbers as ``scipy.stats.ttest_ind(a, b, equal_var=False)`` and its
  ``confidence_interval()``, computed here so that a sample without spread is no warning.
* Holm's step-down correction (Holm 1979) of the m tests of a family: sort the raw p ascending,
  p_(1) ≤ … ≤ p_(m); the adjusted p_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)). Rejecting where
  the adjusted p < α keeps the chance of any false rejection in the family below α.

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
    """Welch's t-test of ``mean(a) - mean(b)``, with the ``level`` confidence interval
    [``low``, ``high``] of the difference (all NaN but the difference without spread)."""

    difference: float
    t: float
    dof: float
    p: float
    low: float
    high: float

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p < alpha  # False when p is NaN (undefined)


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Welch | None:
    """Welch's two-sided t-test (None unless both have 2+ values; t, p and the interval are NaN
    when neither sample has any spread)."""
    if len(a) < 2 or len(b) < 2:
        return None
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    if va + vb == 0:  # no spread on either side: the test is undefined
        return Welch(ma - mb, math.nan, math.nan, math.nan, math.nan, math.nan)
    se = math.sqrt(va + vb)
    t = (ma - mb) / se
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return Welch(ma - mb, t, dof, float(2 * stats.t.sf(abs(t), dof)), ma - mb - half,
                 ma - mb + half)


def holm(p: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given. A NaN (a test that could not be made) stays
    NaN and is not counted in the family; tied p-values get the same adjusted value."""
    order = sorted((i for i, x in enumerate(p) if not math.isnan(x)), key=lambda i: p[i])
    adjusted, running = [math.nan] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


#: The significance level of the reports' tests.
ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    """``row`` minus ``baseline`` over seeds: Welch's test (None with fewer than two values on a
    side) and the Holm-adjusted p within its family (NaN when no test was made)."""

    row: str
    baseline: str
    n: int
    n_baseline: int
    welch: Welch | None
    p_holm: float

    @property
    def tested(self) -> bool:
        return self.welch is not None and not math.isnan(self.welch.p)


@dataclass(frozen=True)
class Family:
    """The comparisons one Holm correction runs over, and the name the report gives it."""

    name: str
    comparisons: tuple[Comparison, ...]

    @property
    def size(self) -> int:
        """The number of tests made (comparisons without a test are not counted)."""
        return sum(c.tested for c in self.comparisons)

    def describe(self) -> str:
        untested = [c.row for c in self.comparisons if not c.tested]
        text = f"Holm family `{self.name}`: {self.size} test{'' if self.size == 1 else 's'}"
        return text + (f" (no test, fewer than 2 seeds or no spread: {', '.join(untested)})"
                       if untested else "")


def family(name: str, pairs: Sequence[tuple[str, str, Sequence[float], Sequence[float]]]
           ) -> Family:
    """The :class:`Family` ``name`` of ``(row, baseline, row values, baseline values)``."""
    tests = [welch(a, b) for _, _, a, b in pairs]
    adjusted = holm([t.p if t is not None else math.nan for t in tests])
    return Family(name, tuple(Comparison(row, base, len(a), len(b), t, q)
                              for (row, base, a, b), t, q in zip(pairs, tests, adjusted,
                                                                 strict=True)))


def format_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def format_comparison(c: Comparison, alpha: float = ALPHA) -> str:
    """The difference in percentage points (values are fractions) with its 95 % CI, the raw p
    and the Holm-adjusted p, marked **significant** when the Holm-adjusted p < ``alpha``; what
    is missing when no test can be made."""
    if c.welch is None:
        return f"no test (n = {c.n} vs {c.n_baseline})"
    w = c.welch
    if math.isnan(w.p):
        return f"{100 * w.difference:+.1f}, no test (no spread)"
    mark = " **significant**" if c.p_holm < alpha else ""
    return (f"{100 * w.difference:+.1f} [{100 * w.low:+.1f}, {100 * w.high:+.1f}], "
            f"p {format_p(w.p)}, Holm p {format_p(c.p_holm)}{mark}")
