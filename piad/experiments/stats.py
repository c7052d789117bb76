"""Intervals and paired tests for ROC AUCs (book: Experiments > Results, How to read the numbers).

- `roc_auc`: Mann-Whitney form (ties count half), equal to scikit-learn's.
- `bootstrap_auc`: stratified bootstrap over test images (normals and anomalies resampled separately).
- `hanley_mcneil_se`: the standard error of an AUC from its value and the two counts (Hanley & McNeil 1982), for
  runs whose per-image scores were not kept.
- `mean_interval`: a benchmark mean's interval over classes *and* test images: classes resampled with replacement,
  each drawn class contributing one of its own within-class replicates.
- `sign_flip_test`: paired test over classes (exact up to 2^16 sign patterns, else a seeded Monte Carlo).
- `paired_bootstrap`: two scorings of the same test images (e.g. a run and its control), images resampled together.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

LEVEL = 0.95
N_BOOT = 1000


def roc_auc(labels, scores) -> float:
    """P(score of an anomaly > score of a normal) + half the ties; labels 1 = anomalous."""
    labels = np.asarray(labels).astype(bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("ROC AUC needs both normal and anomalous test images")
    r = rankdata(np.asarray(scores, dtype=np.float64))
    return float((r[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def percentile_interval(reps: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    a = (1 - level) / 2
    return float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a))


def _weighted_aucs(pos: np.ndarray, neg: np.ndarray, w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """AUC of each resample given multiplicities w [B, n1] of the anomalies and v [B, n0] of the normals."""
    order = np.argsort(neg, kind="stable")
    sorted_neg = neg[order]
    lo = np.searchsorted(sorted_neg, pos, "left")  # normals strictly below each anomaly
    hi = np.searchsorted(sorted_neg, pos, "right")  # ... or tied with it
    c = np.zeros((v.shape[0], len(neg) + 1))
    np.cumsum(v[:, order], axis=1, out=c[:, 1:])
    less, tied = c[:, lo], c[:, hi] - c[:, lo]
    return (w * (less + 0.5 * tied)).sum(1) / (len(pos) * len(neg))


def resample_weights(n_anomalous: int, n_normal: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiplicities of a stratified bootstrap: each row draws n_anomalous anomalies and n_normal normals with
    replacement."""
    rng = np.random.default_rng(seed)

    def counts(n):  # how often each of n items is drawn in each of n_boot resamples of size n
        draws = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
        return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n)

    w, v = counts(n_anomalous), counts(n_normal)
    return w, v


def bootstrap_replicates(labels, scores, n_boot: int = N_BOOT, seed: int = 0, chunk: int = 250) -> np.ndarray:
    """`n_boot` ROC AUCs of stratified resamples of the test images (`resample_weights`)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels], scores[~labels]
    w, v = resample_weights(len(pos), len(neg), n_boot, seed)
    return np.concatenate(
        [_weighted_aucs(pos, neg, w[i : i + chunk], v[i : i + chunk]) for i in range(0, n_boot, chunk)]
    )


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    method: str

    def text(self, digits: int = 3) -> str:
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_auc(labels, scores, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Interval:
    reps = bootstrap_replicates(labels, scores, n_boot, seed)
    return Interval(roc_auc(labels, scores), *percentile_interval(reps, level), "bootstrap over test images")


def hanley_mcneil_se(auc: float, n_anomalous: int, n_normal: int) -> float:
    """SE of an AUC under the exponential approximation of Hanley & McNeil (1982)."""
    a = float(auc)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_anomalous - 1) * (q1 - a * a) + (n_normal - 1) * (q2 - a * a)) / (n_anomalous * n_normal)
    return float(np.sqrt(max(var, 0.0)))


def hanley_mcneil_interval(auc: float, n_anomalous: int, n_normal: int, level: float = LEVEL) -> Interval:
    z = norm.ppf(0.5 + level / 2)
    se = hanley_mcneil_se(auc, n_anomalous, n_normal)
    return Interval(float(auc), max(0.0, auc - z * se), min(1.0, auc + z * se), "Hanley-McNeil")


def hanley_mcneil_replicates(auc: float, n_anomalous: int, n_normal: int, n_boot: int = N_BOOT, seed: int = 0):
    """Normal draws around an AUC with its Hanley-McNeil SE (within-class replicates for a run without scores)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(auc, hanley_mcneil_se(auc, n_anomalous, n_normal), n_boot), 0.0, 1.0)


def mean_interval(
    replicates: Sequence[np.ndarray], estimates: Sequence[float], seed: int = 0, level: float = LEVEL
) -> Interval:
    """Interval of the mean over classes: each replicate resamples the classes with replacement and takes, for each
    drawn class, one of its within-class replicates (its uncertainty over test images)."""
    reps = [np.asarray(r, dtype=np.float64) for r in replicates]
    if not reps:
        raise ValueError("no classes to average")
    n_boot = min(len(r) for r in reps)
    rng = np.random.default_rng(seed)
    k = len(reps)
    draws = rng.integers(0, k, size=(n_boot, k))
    which = rng.integers(0, n_boot, size=(n_boot, k))
    table = np.stack([r[:n_boot] for r in reps])  # [k, n_boot]
    means = table[draws, which].mean(1)
    return Interval(
        float(np.mean(estimates)), *percentile_interval(means, level), "bootstrap over classes and test images"
    )


@dataclass(frozen=True)
class PairedTest:
    mean_difference: float
    low: float
    high: float
    p_value: float
    n: int
    wins: int  # classes where the first is higher
    method: str
    ties: int = 0  # classes where both are equal

    def text(self, digits: int = 3) -> str:
        return (
            f"{self.mean_difference:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}], "
            f"p = {self.p_value:.2g}, {self.counts()}"
        )

    def counts(self) -> str:
        """How often the first is higher (and equal, where any are) out of the n pairs."""
        return f"higher in {self.wins}" + (f", equal in {self.ties}" if self.ties else "") + f" of {self.n}"

    def resolved(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def smallest_sign_flip_p(n: int) -> float:
    """The smallest p the exact two-sided sign-flip test can give over n paired differences: 2 / 2^n (all n
    differences of one sign), so with n <= 5 no test at the 5% level can reject."""
    if n < 1:
        raise ValueError("no paired differences")
    return 2.0 / 2**n


def sign_flip_test(differences, n_random: int = 100_000, seed: int = 0, level: float = LEVEL) -> PairedTest:
    """Two-sided paired sign-flip (randomisation) test of mean(differences) = 0, with a bootstrap interval of the
    mean difference. Exact over all 2^n sign patterns for n <= 16."""
    d = np.asarray(differences, dtype=np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("no paired differences")
    obs = abs(d.mean())
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_random, n))
    null = np.abs((signs * d).mean(1))
    p = float(np.mean(null >= obs - 1e-12))
    boots = np.random.default_rng(seed).choice(d, size=(N_BOOT, n)).mean(1)
    return PairedTest(
        float(d.mean()),
        *percentile_interval(boots, level),
        p,
        n,
        int((d > 0).sum()),
        "sign-flip over classes",
        int((d == 0).sum()),
    )


def paired_bootstrap(
    labels, scores_a, scores_b, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL, chunk: int = 250
) -> PairedTest:
    """AUC(a) - AUC(b) on the same test images, resampled together (one `resample_weights` draw for both);
    p = twice the smaller tail of the replicates around 0."""
    labels = np.asarray(labels).astype(bool)
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    w, v = resample_weights(int(labels.sum()), int((~labels).sum()), n_boot, seed)
    diffs = np.concatenate(
        [
            _weighted_aucs(a[labels], a[~labels], w[i : i + chunk], v[i : i + chunk])
            - _weighted_aucs(b[labels], b[~labels], w[i : i + chunk], v[i : i + chunk])
            for i in range(0, n_boot, chunk)
        ]
    )
    obs = roc_auc(labels, a) - roc_auc(labels, b)
    p = float(min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0))))
    return PairedTest(
        obs, *percentile_interval(diffs, level), p, 1, int(obs > 0), "paired bootstrap over test images", int(obs == 0)
    )
