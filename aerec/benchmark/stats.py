"""Statistics of a benchmark: confidence intervals over seeds, paired tests on per-user values, Holm's correction.

- :func:`mean_ci`: mean, sample standard deviation and the Student-t confidence
  interval of a metric over the split seeds (``scipy.stats.t``).
- :func:`paired_tests`: two models' per-user values on the same test users,
  Wilcoxon's signed-rank test and the paired t-test (``scipy.stats.wilcoxon``,
  ``scipy.stats.ttest_rel``), two-sided.
- :func:`holm`: Holm's step-down adjustment of a family of p-values (written
  here: scipy offers Benjamini-Hochberg, not Holm, and statsmodels is not a
  dependency).
- :func:`compare`: every model against one reference model (the best, or a
  named baseline), adjusted across the models and marked significant at ``alpha``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["compare", "holm", "mean_ci", "paired_tests"]


def _finite_vector(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} has shape {array.shape}; expected a non-empty 1-D sequence of numbers")
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise ValueError(f"{name} holds {bad} non-finite value(s); expected finite numbers")
    return array


def mean_ci(values, confidence: float = 0.95) -> dict:
    """``{"mean", "sd", "ci_low", "ci_high", "n"}``: the t interval of the mean (sd ddof=1; one value: no interval)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}; expected a number in (0, 1)")
    array = _finite_vector("values", values)
    mean, n = float(array.mean()), int(array.size)
    if n == 1:
        return {"mean": mean, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 1}
    sd = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def paired_tests(a, b) -> dict:
    """Two-sided Wilcoxon signed-rank and paired t-test of per-user values ``a`` against ``b`` (same users, same order).

    Returns ``{"n", "mean_difference", "wilcoxon_p", "t_test_p"}``; where every difference is zero
    both p-values are 1 (nothing to tell apart); the t-test needs two users (NaN for one), and gives 0
    where every difference is the same nonzero number (its limit: no variance around a nonzero mean).
    """
    a, b = _finite_vector("a", a), _finite_vector("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a has {a.size} users and b {b.size}; expected the same users in both")
    difference = a - b
    if not difference.any():
        return {"n": int(a.size), "mean_difference": 0.0, "wilcoxon_p": 1.0, "t_test_p": 1.0}
    wilcoxon_p = float(stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)
    if a.size < 2:
        t_test_p = math.nan
    else:
        t_test_p = float(stats.ttest_rel(a, b).pvalue) if np.ptp(difference) > 0 else 0.0
    return {"n": int(a.size), "mean_difference": float(difference.mean()), "wilcoxon_p": wilcoxon_p,
            "t_test_p": t_test_p}


def holm(pvalues: dict) -> dict:
    """Holm's step-down adjusted p-values, by key: the i-th smallest times (m - i), kept monotone, capped at 1.

    A NaN p-value (no test possible) stays NaN and is not counted in m."""
    for key, p in pvalues.items():
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not (0 <= p <= 1 or math.isnan(p)):
            raise ValueError(f"p-value {key!r}={p!r}; expected a number in [0, 1]")
    ordered = sorted((key for key in pvalues if not math.isnan(pvalues[key])), key=lambda key: pvalues[key])
    m, running, adjusted = len(ordered), 0.0, {}
    for rank, key in enumerate(ordered):
        running = max(running, min(1.0, (m - rank) * pvalues[key]))
        adjusted[key] = running
    return {key: adjusted.get(key, math.nan) for key in pvalues}


def compare(per_user: dict, reference: str, alpha: float = 0.05) -> dict:
    """Every model's per-user values against ``reference``'s: both tests, Holm-adjusted across the models.

    ``per_user`` maps a model's label to its per-user metric values (the same users, in the same
    order, for every model). Returns ``{label: {... paired_tests ..., "wilcoxon_p_holm", "t_test_p_holm",
    "significant"}}`` for every label but the reference; "significant" is Wilcoxon's Holm-adjusted p < ``alpha``.
    """
    if reference not in per_user:
        raise ValueError(f"reference={reference!r}; expected one of the models {sorted(per_user)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r}; expected a number in (0, 1)")
    results = {label: paired_tests(values, per_user[reference])
               for label, values in per_user.items() if label != reference}
    for test in ("wilcoxon_p", "t_test_p"):
        for label, p in holm({label: r[test] for label, r in results.items()}).items():
            results[label][f"{test}_holm"] = p
    for result in results.values():
        result["significant"] = bool(result["wilcoxon_p_holm"] < alpha)
    return results
