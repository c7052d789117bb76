"""piad.experiments.stats against independent computations (scikit-learn, brute-force enumeration, formulas)."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from piad.experiments import stats


def _data(n0=300, n1=200, shift=0.7, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    s = np.concatenate([rng.normal(0, 1, n0), rng.normal(shift, 1, n1)])
    if ties:
        s = np.round(s, 1)
    return np.r_[np.zeros(n0, int), np.ones(n1, int)], s


@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_equals_scikit_learn(ties):
    y, s = _data(ties=ties)
    assert stats.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_replicates_are_aucs_of_stratified_resamples(ties):
    """Each replicate is scikit-learn's ROC AUC of the test images weighted by that resample's multiplicities."""
    y, s = _data(n0=50, n1=30, ties=ties)
    reps = stats.bootstrap_replicates(y, s, n_boot=7, seed=3)
    w, v = stats.resample_weights(30, 50, 7, 3)
    for r, wi, vi in zip(reps, w, v, strict=True):
        assert (wi.sum(), vi.sum()) == (30, 50)
        weights = np.empty(len(y))
        weights[y == 1], weights[y == 0] = wi, vi
        keep = weights > 0
        assert r == pytest.approx(roc_auc_score(y[keep], s[keep], sample_weight=weights[keep]), abs=1e-12)


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_more_images():
    small = stats.bootstrap_auc(*_data(60, 40), n_boot=500)
    large = stats.bootstrap_auc(*_data(3000, 2000), n_boot=500)
    for iv in (small, large):
        assert iv.low <= iv.estimate <= iv.high
    assert (large.high - large.low) < (small.high - small.low) / 3


def test_hanley_mcneil_matches_its_formula_and_the_bootstrap():
    auc, n1, n0 = 0.8, 200, 300
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    want = np.sqrt((auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n1 * n0))
    assert stats.hanley_mcneil_se(auc, n1, n0) == pytest.approx(want, rel=1e-12)
    y, s = _data(n0, n1, shift=1.2, seed=4)
    boot_sd = stats.bootstrap_replicates(y, s, n_boot=1000).std()
    assert stats.hanley_mcneil_se(stats.roc_auc(y, s), n1, n0) == pytest.approx(boot_sd, rel=0.25)


def test_sign_flip_p_value_equals_brute_force_enumeration():
    d = np.array([0.05, -0.02, 0.11, 0.03, -0.01, 0.07])
    t = stats.sign_flip_test(d)
    obs = abs(d.mean())
    count = sum(abs(np.mean(np.array(sg) * d)) >= obs - 1e-12 for sg in itertools.product((1, -1), repeat=len(d)))
    assert t.p_value == pytest.approx(count / 2 ** len(d), abs=1e-12)
    assert t.n == 6 and t.wins == 4 and t.mean_difference == pytest.approx(d.mean())
    assert t.low <= t.mean_difference <= t.high


def test_sign_flip_cannot_resolve_three_classes():
    """With n = 3 the smallest possible two-sided p is 2/8: three wins out of three are not significant."""
    assert stats.sign_flip_test([0.1, 0.2, 0.3]).p_value == pytest.approx(0.25)
    assert not stats.sign_flip_test([0.1, 0.2, 0.3]).resolved()


@pytest.mark.parametrize("n", [1, 2, 4, 5, 6, 9])
def test_smallest_sign_flip_p_is_what_the_test_gives_when_every_difference_has_one_sign(n):
    d = np.arange(1, n + 1) / 100.0  # all positive: only the all-plus and all-minus patterns reach the observed mean
    assert stats.smallest_sign_flip_p(n) == pytest.approx(stats.sign_flip_test(d).p_value, abs=1e-12)
    mixed = d * np.where(np.arange(n) % 2, -1, 1)  # any other sign pattern gives a larger p
    assert n == 1 or stats.sign_flip_test(mixed).p_value > stats.smallest_sign_flip_p(n)


def test_mean_interval_contains_the_mean_and_widens_with_class_spread():
    tight = [np.random.default_rng(i).normal(0.7, 0.01, 1000) for i in range(10)]
    spread = [np.random.default_rng(i).normal(0.5 + 0.04 * i, 0.01, 1000) for i in range(10)]
    a = stats.mean_interval(tight, [0.7] * 10)
    b = stats.mean_interval(spread, [0.5 + 0.04 * i for i in range(10)])
    assert a.low <= 0.7 <= a.high and b.low <= b.estimate <= b.high
    assert (b.high - b.low) > 5 * (a.high - a.low)


def test_paired_bootstrap_sees_a_real_difference_and_not_an_absent_one():
    y, s = _data(400, 400, shift=1.0, seed=5)
    noisy = s + np.random.default_rng(6).normal(0, 1.5, len(s))
    better = stats.paired_bootstrap(y, s, noisy, n_boot=500)
    assert better.mean_difference == pytest.approx(roc_auc_score(y, s) - roc_auc_score(y, noisy), abs=1e-12)
    assert better.resolved() and better.low > 0
    same = stats.paired_bootstrap(y, s, s + 1e-9 * np.arange(len(s)), n_boot=500)
    assert not same.resolved()
