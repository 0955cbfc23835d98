"""Statistics: checked against textbook values and independent computations."""
import math
import statistics

import numpy as np
import pytest
from scipy import optimize, stats as sps

from fgrft.scoring.stats import (
    Z_95,
    binomial_two_sided_half,
    clustered_bootstrap_interval,
    majority_vote,
    mcnemar_exact,
    mean_sd,
    paired_bootstrap,
    wilson_interval,
)


def wilson_by_root_finding(k, n, z=1.959963984540054):
    """The Wilson bounds are the p where the score statistic equals +/- z."""
    phat = k / n
    score = lambda p: (phat - p) ** 2 - z * z * p * (1 - p) / n  # noqa: E731
    eps = 1e-9  # the score is 0 at phat itself: bracket each root away from it
    low = 0.0 if k == 0 else optimize.brentq(score, 1e-15, phat - eps)
    high = 1.0 if k == n else optimize.brentq(score, phat + eps, 1 - 1e-15)
    return low, high


@pytest.mark.parametrize("k,n,textbook", [
    (0, 10, (0.0, 0.2775)),
    (5, 10, (0.2366, 0.7634)),
    (10, 10, (0.7225, 1.0)),
    (650, 1000, (0.6199, 0.6789)),
])
def test_wilson_matches_textbook_and_root_finding(k, n, textbook):
    got = wilson_interval(k, n)
    assert got == pytest.approx(textbook, abs=1e-4)
    assert got == pytest.approx(wilson_by_root_finding(k, n), abs=1e-9)


def test_wilson_edges():
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert Z_95 == pytest.approx(sps.norm.ppf(0.975), abs=1e-12)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_thesis_sized_interval_is_about_two_and_a_half_points():
    # THESIS.md: 1,273 items near 65% -> about +/- 2.6 pp.
    low, high = wilson_interval(827, 1273)
    assert (high - low) / 2 == pytest.approx(0.026, abs=0.001)


@pytest.mark.parametrize("a_only,b_only",
                         [(0, 0), (3, 0), (0, 7), (5, 5), (10, 3), (60, 41), (400, 350)])
def test_mcnemar_matches_scipy_binomtest(a_only, b_only):
    a, b, i = {}, {}, 0
    kinds = ((True, False, a_only), (False, True, b_only), (True, True, 9), (False, False, 4))
    for x, y, count in kinds:
        for _ in range(count):
            a[f"q{i}"], b[f"q{i}"] = x, y
            i += 1
    r = mcnemar_exact(a, b)
    assert (r.a_only, r.b_only, r.n_items) == (a_only, b_only, i)
    n = a_only + b_only
    expected = 1.0 if n == 0 else sps.binomtest(a_only, n, 0.5).pvalue
    assert r.p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_exact_binomial_tail_keeps_precision():
    assert binomial_two_sided_half(0, 2000) == pytest.approx(2 * 0.5 ** 2000, rel=1e-12)


def test_paired_tests_join_on_id_and_ignore_unshared_items():
    a = {"x": True, "y": False, "z": True, "only_a": True}
    b = {"z": False, "y": True, "x": True, "only_b": False}
    r = mcnemar_exact(a, b)
    assert (r.a_only, r.b_only, r.n_items) == (1, 1, 3)
    d = paired_bootstrap(a, b, n_resamples=200)
    assert d.n_items == 3 and d.difference == 0.0
    with pytest.raises(ValueError):
        mcnemar_exact({"p": True}, {"q": True})


def _runs(n, p_a, p_b, seed):
    rng = np.random.default_rng(seed)
    a = rng.random(n) < p_a
    b = np.where(rng.random(n) < 0.7, a, rng.random(n) < p_b)  # correlated, as paired runs are
    return {f"i{k}": bool(v) for k, v in enumerate(a)}, {f"i{k}": bool(v) for k, v in enumerate(b)}


def test_paired_bootstrap_is_seeded_and_matches_index_resampling():
    a, b = _runs(1273, 0.68, 0.64, seed=1)
    first = paired_bootstrap(a, b, seed=7)
    assert first == paired_bootstrap(a, b, seed=7)
    assert first.n_resamples == 10_000

    # Independent reference: the textbook bootstrap that resamples item indices.
    x = np.array([a[k] for k in a], dtype=float)
    y = np.array([b[k] for k in a], dtype=float)
    rng = np.random.default_rng(123)
    idx = rng.integers(0, len(x), size=(4000, len(x)))
    ref = np.quantile((x[idx] - y[idx]).mean(axis=1), [0.025, 0.975])
    assert first.difference == pytest.approx(x.mean() - y.mean())
    assert first.ci_low == pytest.approx(ref[0], abs=0.004)
    assert first.ci_high == pytest.approx(ref[1], abs=0.004)
    # And the normal approximation of a paired difference.
    se = (x - y).std(ddof=1) / math.sqrt(len(x))
    assert first.ci_high - first.ci_low == pytest.approx(2 * 1.96 * se, rel=0.05)


def test_paired_bootstrap_of_identical_runs_is_a_point():
    a, _ = _runs(200, 0.6, 0.6, seed=2)
    d = paired_bootstrap(a, dict(a), n_resamples=500)
    assert (d.difference, d.ci_low, d.ci_high) == (0.0, 0.0, 0.0)


def test_mean_sd_matches_statistics_module():
    values = [0.61, 0.64, 0.66, 0.63]
    mean, sd = mean_sd(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert sd == pytest.approx(statistics.stdev(values))
    assert math.isnan(mean_sd([0.5])[1])


@pytest.mark.parametrize("answers,expected", [
    (["B", "B", "C"], "B"),
    (["C", "B", "B"], "B"),
    (["B", None, None], "B"),          # unparsed samples do not vote
    ([None, None], None),
    (["C", "B"], "C"),                 # tie: the lowest-numbered sample's answer
    (["B", "C", "C", "B"], "B"),
    ([None, "D", "A", "A", "D"], "D"),
])
def test_majority_vote(answers, expected):
    assert majority_vote(answers) == expected


def test_clustered_bootstrap_resamples_items_not_samples():
    # 200 items, 5 identical samples each: the information is that of 200 trials.
    per_item = np.random.default_rng(3).random(200) < 0.6
    correct = [5 * int(v) for v in per_item]
    trials = [5] * 200
    low, high = clustered_bootstrap_interval(correct, trials, n_resamples=4000, seed=1)
    w_items = wilson_interval(int(per_item.sum()), 200)
    w_pairs = wilson_interval(sum(correct), 1000)
    assert high - low == pytest.approx(w_items[1] - w_items[0], rel=0.1)
    assert high - low > 1.8 * (w_pairs[1] - w_pairs[0])
    assert (low, high) == clustered_bootstrap_interval(correct, trials, n_resamples=4000, seed=1)
    assert clustered_bootstrap_interval([3, 3], [3, 3], n_resamples=100) == (1.0, 1.0)
