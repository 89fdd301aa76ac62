"""Benchmark statistics: t intervals over seeds, paired tests on per-user values, Holm's correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from aerec.benchmark.stats import compare, holm, mean_ci, paired_tests


def test_mean_ci_is_the_student_t_interval_of_the_mean():
    values = [0.4674, 0.4522, 0.4692, 0.4875, 0.4620]
    result = mean_ci(values)
    low, high = stats.t.interval(0.95, df=4, loc=np.mean(values), scale=stats.sem(values))
    assert result["n"] == 5 and result["sd"] == pytest.approx(np.std(values, ddof=1))
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high))
    assert math.isnan(mean_ci([0.5])["ci_low"])  # one seed: no interval, not a zero-width one


def test_holm_on_a_worked_example():
    # p sorted 0.01, 0.02, 0.03, 0.04 -> x4, x3, x2, x1 = 0.04, 0.06, 0.06 (kept monotone), 0.06 (max of 0.04 and 0.06)
    adjusted = holm({"a": 0.03, "b": 0.01, "c": 0.04, "d": 0.02})
    assert adjusted == pytest.approx({"a": 0.06, "b": 0.04, "c": 0.06, "d": 0.06})
    assert holm({"x": 0.6, "y": 0.5}) == pytest.approx({"x": 1.0, "y": 1.0})  # capped at 1


def test_paired_tests_are_scipys_and_identical_models_are_not_told_apart():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    better = base + 0.05 + rng.normal(0, 0.05, 200)
    result = paired_tests(better, base)
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(better, base).pvalue)
    assert result["t_test_p"] == pytest.approx(stats.ttest_rel(better, base).pvalue)
    assert result["wilcoxon_p"] < 1e-6 and result["mean_difference"] == pytest.approx(np.mean(better - base))
    same = paired_tests(base, base.copy())
    assert same["wilcoxon_p"] == same["t_test_p"] == 1.0


def test_compare_adjusts_across_models_and_marks_significance():
    rng = np.random.default_rng(1)
    best = rng.random(300)
    per_user = {"best": best, "close": best - rng.normal(0, 0.01, 300),
                "worse": best - 0.1 + rng.normal(0, 0.02, 300)}
    result = compare(per_user, reference="best")
    assert set(result) == {"close", "worse"}
    assert result["worse"]["significant"] and not result["close"]["significant"]
    raw = {label: r["wilcoxon_p"] for label, r in result.items()}
    assert {label: r["wilcoxon_p_holm"] for label, r in result.items()} == pytest.approx(holm(raw))


@pytest.mark.parametrize("call, message", [
    (lambda: paired_tests([0.1, 0.2], [0.1]), "a has 2 users and b 1"),
    (lambda: paired_tests([0.1, float("nan")], [0.1, 0.2]), "a holds 1 non-finite"),
    (lambda: mean_ci([]), "expected a non-empty 1-D"),
    (lambda: mean_ci([0.1, 0.2], confidence=1.5), "confidence=1.5"),
    (lambda: holm({"a": 1.2}), "p-value 'a'=1.2"),
    (lambda: compare({"a": [0.1]}, reference="b"), "reference='b'"),
])
def test_bad_input_is_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()
