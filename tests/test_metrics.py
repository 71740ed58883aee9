"""metrics.paired_stats (paired difference of two accuracies: bootstrap CI and McNemar's exact test) against
hand-computed values."""

from __future__ import annotations

import math

import pytest

from transformer_squared.evaluation.metrics import paired_stats


def test_mcnemar_and_ci_by_hand():
    # 9 questions only the other system gets right, none only the base: p = 2 · (1/2)^9
    base, other = [False] * 9 + [True] * 11, [True] * 20
    r = paired_stats(base, other)
    assert r["diff"] == pytest.approx(9 / 20) and (r["base_only_right"], r["other_only_right"]) == (0, 9)
    assert (r["acc_base"], r["acc_other"]) == (pytest.approx(11 / 20), 1.0)
    assert r["mcnemar_p"] == pytest.approx(2 / 2**9) and r["significant"]
    # each resample's difference is (gains drawn) / 20 ~ binomial(20, 9/20) / 20: 2.5 % / 97.5 % points 0.25 / 0.65
    lo, hi = r["ci95"]
    assert 0.2 <= lo <= 0.3 and 0.6 <= hi <= 0.7


def test_no_difference_and_symmetry():
    same = [True, False] * 10
    r = paired_stats(same, same)
    assert r["ci95"] == [0.0, 0.0] and r["mcnemar_p"] == 1.0 and not r["significant"]
    a, b = [True] * 6 + [False] * 14, [False] * 6 + [True] * 4 + [False] * 10
    ab, ba = paired_stats(a, b), paired_stats(b, a)
    assert ab["mcnemar_p"] == ba["mcnemar_p"] == pytest.approx(2 * sum(math.comb(10, i) for i in range(5)) / 2**10)
    assert ab["diff"] == -ba["diff"] == pytest.approx(-0.1)


def test_routing_accuracy_leaves_out_mixtures():
    from transformer_squared.evaluation.metrics import routing_metrics

    rows = [{"category": c, "routing": {"decision": d}} for c, d in
            [("math", "math"), ("code", "math"), ("math", "mixture"), ("code", "code"), ("other", "base")]]
    r = routing_metrics(rows, ["math", "code"])
    assert r["accuracy"]["n"] == 3 and r["accuracy"]["accuracy"] == 2 / 3  # the mixture row is left out
    assert r["confusion"]["math"] == {"math": 1, "mixture": 1} and r["decisions"]["mixture"] == 1
    uniform = [{"category": "math", "routing": {"decision": "mixture"}}] * 4
    assert routing_metrics(uniform, ["math", "code"])["accuracy"] is None  # uniform / fewshot route nowhere


def test_bootstrap_ci_alone_does_not_make_a_difference_significant():
    """0 vs 4 discordant answers in 40: the bootstrap CI excludes 0 but McNemar's exact p = 2 / 2⁴ = 0.125;
    the one rule (both must agree) does not call it significant."""
    base, other = [False] * 4 + [True] * 20 + [False] * 16, [True] * 24 + [False] * 16
    r = paired_stats(base, other)
    assert (r["base_only_right"], r["other_only_right"]) == (0, 4)
    assert r["mcnemar_p"] == pytest.approx(0.125)
    assert r["ci95"][0] > 0  # the bootstrap alone would call it significant
    assert not r["significant"]


def test_category_mean_ci_keeps_the_width_of_a_perfect_category():
    """Four categories of 10 questions at 100 %: the mean is 100 % but its interval is not a point; MOVER over
    the Wilson limits by hand: lower = 1 − √(4·((1 − l)/4)²) = 1 − (1 − l)/2, l = Wilson's lower limit of 10/10."""
    from transformer_squared.evaluation.metrics import accuracy_metrics

    rows = [{"category": c, "subject": c, "correct": {"letter": True}, "prediction": {"letter": "A"}}
            for c in "WXYZ" for _ in range(10)]
    m = accuracy_metrics(rows, "letter")
    n, z = 10, 1.959963984540054
    l10 = (1 + z * z / (2 * n) - z * math.sqrt(z * z / (4 * n * n))) / (1 + z * z / n)  # Wilson lower limit, p = 1
    assert m["category_mean"] == 1.0
    assert m["category_mean_ci95"] == pytest.approx([1 - (1 - l10) / 2, 1.0])
    assert m["category_mean_ci95"][0] < 0.9  # the old normal approximation gave [1.0, 1.0]


def test_category_mean_ci_of_one_category_is_its_wilson_interval():
    from transformer_squared.evaluation.metrics import accuracy_metrics, wilson

    rows = [{"category": "c", "subject": "s", "correct": {"letter": i < 3}, "prediction": {"letter": "A"}}
            for i in range(7)]
    m = accuracy_metrics(rows, "letter")
    assert m["category_mean_ci95"] == pytest.approx(list(wilson(3, 7)))
