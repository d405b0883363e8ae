import numpy as np
import pytest

from tfopt._stats import accuracy_interval, correct, mcnemar_p, paired_delta


def _pair(n, only_a, only_b, both):
    a = np.zeros(n, bool)
    b = np.zeros(n, bool)
    a[:only_a] = True
    b[only_a : only_a + only_b] = True
    a[only_a + only_b : only_a + only_b + both] = True
    b[only_a + only_b : only_a + only_b + both] = True
    return a, b


def test_paired_delta_counts_the_discordant_samples_and_mcnemar_is_exact():
    a, b = _pair(100, 3, 7, 80)
    d = paired_delta(a, b)
    assert (d.n, d.only_a, d.only_b) == (100, 3, 7)
    assert d.delta == pytest.approx(0.04)
    # 2 * P(X <= 3), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45 + 120) / 1024
    assert d.p_value == pytest.approx(2 * 176 / 1024)
    assert d.low < d.delta < d.high
    assert d.resolution == pytest.approx(0.01)
    assert str(d).startswith("+4.00 pt [")


def test_identical_models_have_a_zero_width_interval_and_p_one():
    a, _ = _pair(50, 0, 0, 40)
    d = paired_delta(a, a.copy())
    assert (d.delta, d.low, d.high, d.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert d.within(0.0)


def test_pairing_is_tighter_than_two_independent_intervals():
    # Two models that agree on all but 10 of 2000 samples: the paired interval is a fraction of
    # the width of either accuracy's own interval.
    a, b = _pair(2000, 4, 6, 1700)
    d = paired_delta(a, b)
    single = accuracy_interval(b)
    assert (d.high - d.low) < 0.25 * (single.high - single.low)
    assert d.within(0.005) and not d.within(0.0)


def test_paired_delta_is_deterministic_and_interval_covers_the_bootstrap_quantiles():
    a, b = _pair(400, 12, 5, 300)
    assert paired_delta(a, b) == paired_delta(a, b)
    d = paired_delta(a, b, resamples=200000)
    # The bootstrap of a mean of {-1, 0, +1} differences approaches the normal interval.
    p_plus, p_minus = 5 / 400, 12 / 400
    sd = np.sqrt((p_plus + p_minus - (p_plus - p_minus) ** 2) / 400)
    assert d.low == pytest.approx(d.delta - 1.96 * sd, abs=0.0035)
    assert d.high == pytest.approx(d.delta + 1.96 * sd, abs=0.0035)


def test_wilson_interval_matches_the_textbook_value():
    c = np.array([True] * 90 + [False] * 10)
    i = accuracy_interval(c)
    assert i.value == pytest.approx(0.9)
    assert i.low == pytest.approx(0.8256, abs=1e-4)
    assert i.high == pytest.approx(0.9448, abs=1e-4)
    assert accuracy_interval(np.ones(20, bool)).high == 1.0


def test_correct_accepts_scores_or_labels():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert correct(scores, [1, 1, 1]).tolist() == [True, False, True]
    assert correct(np.array([1, 0, 1]), np.array([1, 1, 1])).tolist() == [True, False, True]


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.ones(3, bool), np.ones(4, bool), "same samples"),
        (np.ones(0, bool), np.ones(0, bool), "non-empty"),
        (np.array([0, 2, 1]), np.ones(3, bool), "True/False"),
        (np.ones((2, 2), bool), np.ones((2, 2), bool), "1-D"),
    ],
)
def test_bad_inputs_are_refused(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_delta(a, b)


def test_mcnemar_with_no_disagreement():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 10) == pytest.approx(2 / 1024)
