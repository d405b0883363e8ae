"""The one statistics helper: how sure is an accuracy, and a difference of two on the same samples.

Every benchmark and the automatic optimizer compare models through `paired_delta`: both models are
evaluated on the same samples, so the difference is judged on the samples where they disagree
(paired), which is far tighter than two independent intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_Z95 = 1.959963984540054


def correct(outputs, labels) -> np.ndarray:
    """Per-sample correctness (bool) of class scores or predicted labels against integer labels.

    Args:
        outputs: ``(n, classes)`` scores (logits or probabilities) or ``(n,)`` predicted labels.
        labels: ``(n,)`` integer labels.

    Returns:
        A ``(n,)`` boolean array.

    Raises:
        ValueError: when the lengths differ.
    """
    outputs, labels = np.asarray(outputs), np.asarray(labels).reshape(-1)
    predicted = outputs.reshape(len(outputs), -1).argmax(axis=1) if outputs.ndim > 1 else outputs
    if len(predicted) != len(labels):
        raise ValueError(
            f"outputs and labels must have the same length. Received: {len(predicted)} outputs "
            f"and {len(labels)} labels"
        )
    return predicted.astype("int64") == labels.astype("int64")


def _as_bool(name: str, values) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D array of per-sample correctness. Received shape "
            f"{a.shape}"
        )
    if a.dtype != bool and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must hold only True/False (or 0/1) values")
    return a.astype(bool)


@dataclass(frozen=True)
class Interval:
    """An accuracy (a fraction) with its 95% interval."""

    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


def accuracy_interval(correct_, *, confidence: float = 0.95) -> Interval:
    """Accuracy with its Wilson score interval (good near 0 and 1, unlike the normal one).

    Args:
        correct_: per-sample correctness, ``(n,)`` bools.
        confidence: the interval's coverage. Defaults to 0.95.
    """
    c = _as_bool("correct", correct_)
    n, p = len(c), float(c.mean())
    z = _z(confidence)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


@dataclass(frozen=True)
class PairedDelta:
    """accuracy(b) - accuracy(a) on the same samples, in fractions (0.01 is 1 point).

    ``low``/``high`` is the paired bootstrap interval; ``only_a``/``only_b`` count the samples only
    one of the two got right (all the information the difference has); ``p_value`` is McNemar's
    exact test of "the two are equally accurate".
    """

    delta: float
    low: float
    high: float
    n: int
    only_a: int
    only_b: int
    p_value: float
    confidence: float = 0.95

    @property
    def resolution(self) -> float:
        """One sample, as a fraction of the split: no difference smaller than this is visible."""
        return 1.0 / self.n

    def within(self, max_drop: float) -> bool:
        """True when the whole interval is above ``-max_drop``: b is at most max_drop worse."""
        return self.low >= -max_drop

    def as_points(self) -> str:
        """``+0.10 pt [-0.32, +0.52]``: the delta and its interval in accuracy points."""
        return f"{100 * self.delta:+.2f} pt [{100 * self.low:+.2f}, {100 * self.high:+.2f}]"

    def to_dict(self) -> dict:
        return {
            "delta": self.delta,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "p_value": self.p_value,
            "confidence": self.confidence,
        }

    def __str__(self) -> str:
        return self.as_points()


def paired_delta(
    correct_a, correct_b, *, confidence: float = 0.95, resamples: int = 20000, seed: int = 0
) -> PairedDelta:
    """The difference accuracy(b) - accuracy(a) of two models on the same samples, with its interval.

    The interval is a paired bootstrap over samples. Each sample is one of "only a right", "only b
    right" or "both/neither", so a resample is a multinomial draw of those three counts: exact, and
    fast for any n. McNemar's exact test gives the p-value of "no difference".

    Args:
        correct_a: per-sample correctness of the reference model (e.g. the float baseline).
        correct_b: per-sample correctness of the other model, on the same samples in the same order.
        confidence: the interval's coverage. Defaults to 0.95.
        resamples: bootstrap resamples. Defaults to 20000.
        seed: the bootstrap's seed (the result is deterministic). Defaults to 0.

    Returns:
        A `PairedDelta`.

    Raises:
        ValueError: for empty, non-boolean or unequal-length inputs.

    Example:
        >>> d = paired_delta(baseline_correct, int8_correct)
        >>> print(d)   # +0.10 pt [-0.32, +0.52]
    """
    a, b = _as_bool("correct_a", correct_a), _as_bool("correct_b", correct_b)
    if len(a) != len(b):
        raise ValueError(
            "correct_a and correct_b must be measured on the same samples. Received lengths "
            f"{len(a)} and {len(b)}"
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1). Received: confidence={confidence}")
    n = len(a)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    delta = (only_b - only_a) / n
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [only_b / n, only_a / n, 1.0 - (only_a + only_b) / n], resamples)
    draws = (counts[:, 0] - counts[:, 1]) / n
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return PairedDelta(
        delta, float(low), float(high), n, only_a, only_b, mcnemar_p(only_a, only_b), confidence
    )


def mcnemar_p(only_a: int, only_b: int) -> float:
    """McNemar's exact two-sided p-value from the two discordant counts."""
    k, m = min(only_a, only_b), only_a + only_b
    if m == 0:
        return 1.0
    from scipy.stats import binom

    return float(min(1.0, 2.0 * binom.cdf(k, m, 0.5)))


def _z(confidence: float) -> float:
    if confidence == 0.95:
        return _Z95
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2.0))
