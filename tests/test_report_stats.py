"""Report statistics against independent computations."""

import math

import numpy as np
import pytest
from scipy import stats

from adalora_ablation.analysis.stats import (
    adapters_carry_little, budget_shares, holm, minimal_detectable_difference, pooled_sd, size_rank_spearman,
)


def test_holm_matches_the_step_down_definition():
    p = [0.01, None, 0.04, 0.03, 0.2]
    # sorted: 0.01 (x4), 0.03 (x3), 0.04 (x2), 0.2 (x1); running maximum keeps them monotone
    assert holm(p) == pytest.approx([0.04, None, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1 and monotone
    assert holm([None]) == [None]


def test_minimal_detectable_difference_reaches_the_stated_power():
    sd, n = 0.01, 5
    mdd = minimal_detectable_difference(sd, n)
    # Power of the paired t-test at that true difference, from the noncentral t distribution: about 0.8 (the
    # formula is the usual normal-style approximation, accurate to a few points of power at small n).
    df, t_crit = n - 1, stats.t.ppf(0.975, n - 1)
    power = 1 - stats.nct.cdf(t_crit, df, mdd / (sd / math.sqrt(n))) + stats.nct.cdf(-t_crit, df,
                                                                                       mdd / (sd / math.sqrt(n)))
    assert 0.75 < power < 0.85
    assert minimal_detectable_difference(sd, n, comparisons=3) > mdd  # stricter level, larger difference
    assert minimal_detectable_difference(sd, 1) is None
    assert pooled_sd([0.03, 0.04]) == pytest.approx(math.sqrt((0.03 ** 2 + 0.04 ** 2) / 2))


def test_adapters_carry_little():
    assert adapters_carry_little([0.0, 0.0, 0.0], seed_spread=0.02)
    assert adapters_carry_little([0.001, -0.002, 0.0005], seed_spread=None)  # interval reaches zero
    assert adapters_carry_little([0.01, 0.012, 0.011], seed_spread=0.05)  # clearly > 0, but below the spread
    assert not adapters_carry_little([0.05, 0.048, 0.052], seed_spread=0.01)
    assert not adapters_carry_little([], seed_spread=0.01)


def test_size_bias_recovers_a_planted_size_driven_allocation():
    rng = np.random.default_rng(0)
    sizes = [64 + 64 + 1] * 8 + [64 + 256 + 1] * 4  # attention and FFN modules of a small model
    by_size = [1 if s < 200 else 6 for s in sizes]  # rank given by size alone
    assert size_rank_spearman(sizes, by_size) == pytest.approx(math.sqrt(1.0), abs=0.15)
    assert size_rank_spearman(sizes, by_size) > 0.7
    unrelated = list(rng.permutation([3, 4] * 6))
    assert abs(size_rank_spearman(sizes, unrelated)) < 0.7
    assert size_rank_spearman(sizes, [4] * 12) is None
    assert budget_shares({"Q": 10, "FFN-in": 30}) == {"Q": 0.25, "FFN-in": 0.75}
