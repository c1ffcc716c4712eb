"""Report statistics against independent computations."""

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, stats

from adalora_ablation.analysis.stats import (
    adapters_carry_little, budget_shares, holm, minimal_detectable_difference, paired_t_power, pooled_sd,
    same_on_every_seed, size_alignment, size_rank_attainable, size_rank_spearman,
)


def test_holm_matches_the_step_down_definition():
    p = [0.01, None, 0.04, 0.03, 0.2]
    # sorted: 0.01 (x4), 0.03 (x3), 0.04 (x2), 0.2 (x1); running maximum keeps them monotone
    assert holm(p) == pytest.approx([0.04, None, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1 and monotone
    assert holm([None]) == [None]


def power_by_integration(difference, sd, n, alpha):
    """Power of the two-sided paired t-test, integrated over the chi-square distribution of the sample variance
    (no noncentral t): P(|mean / (S / sqrt(n))| > c) with mean ~ N(difference, sd^2 / n), S^2 ~ sd^2 chi2_df / df."""
    df, critical, shift = n - 1, stats.t.ppf(1 - alpha / 2, n - 1), difference / (sd / math.sqrt(n))
    def at(v):
        scale = critical * math.sqrt(v / df)
        return stats.chi2.pdf(v, df) * (stats.norm.sf(scale - shift) + stats.norm.cdf(-scale - shift))
    return integrate.quad(at, 0, np.inf, epsabs=1e-12, epsrel=1e-10, limit=200)[0]


@pytest.mark.parametrize("n, comparisons", [(2, 1), (3, 1), (3, 5), (4, 2), (5, 3), (10, 20)])
def test_minimal_detectable_difference_has_exactly_the_stated_power(n, comparisons):
    sd = 0.0133
    mdd = minimal_detectable_difference(sd, n, comparisons)
    assert power_by_integration(mdd, sd, n, 0.05 / comparisons) == pytest.approx(0.8, abs=1e-6)
    assert paired_t_power(mdd / sd, n, 0.05 / comparisons) == pytest.approx(0.8, abs=1e-9)
    # The normal-style shortcut (t_{1-a/2} + t_{0.8}) sd / sqrt(n) is too small at few seeds: less power than stated.
    shortcut = (stats.t.ppf(1 - 0.05 / comparisons / 2, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert mdd > shortcut and power_by_integration(shortcut, sd, n, 0.05 / comparisons) < 0.8 - 1e-3


def test_minimal_detectable_difference_of_the_filed_case():
    # n = 3 seeds, 5 comparisons: the shortcut gave 0.0843, whose power is 0.70; power 0.8 needs 0.0973.
    shortcut_factor = (stats.t.ppf(1 - 0.005, 2) + stats.t.ppf(0.8, 2)) / math.sqrt(3)
    sd = 0.0843 / shortcut_factor
    assert minimal_detectable_difference(sd, 3, 5) == pytest.approx(0.0973, abs=5e-5)
    assert power_by_integration(0.0843, sd, 3, 0.01) == pytest.approx(0.70, abs=0.01)


@pytest.mark.parametrize("sd, n", [(0.0, 3), (None, 3), (math.nan, 3), (math.inf, 3), (0.01, 1)])
def test_minimal_detectable_difference_is_absent_without_a_usable_sd(sd, n):
    assert minimal_detectable_difference(sd, n) is None


def test_pooled_sd_is_weighted_by_degrees_of_freedom():
    rng = np.random.default_rng(1)
    groups = [rng.normal(0, 0.02, size) for size in (3, 5, 8)]
    # Pooled variance = every group's squared deviations from its own mean over the total degrees of freedom.
    squares = sum(float(np.sum((g - g.mean()) ** 2)) for g in groups)
    expected = math.sqrt(squares / sum(len(g) - 1 for g in groups))
    sds = [float(np.std(g, ddof=1)) for g in groups]
    assert pooled_sd(sds, [len(g) - 1 for g in groups]) == pytest.approx(expected)
    assert pooled_sd(sds, [len(g) - 1 for g in groups]) != pytest.approx(math.sqrt(np.mean(np.square(sds))))
    assert pooled_sd([None, 0.01], [2, 0]) is None and pooled_sd([], []) is None


def test_a_constant_shift_is_the_same_difference_on_every_seed_whatever_the_rounding():
    rows = 277
    for start in range(0, 270, 7):  # baselines k/277, each seed +3/277
        base = [(start + i) / rows for i in range(3)]
        diffs = [(start + i + 3) / rows - b for i, b in enumerate(base)]
        assert same_on_every_seed(diffs)
    rounded_apart = [[(k + 3) / rows - k / rows for k in ks] for ks in ((0, 1, 2), (100, 150, 200), (50, 60, 70))]
    assert any(np.ptp(d) > 0 for d in rounded_apart), "float rounding must make some of them differ by an ulp"
    assert not same_on_every_seed([3 / rows, 3 / rows, 4 / rows])  # one row apart is a real difference
    assert not same_on_every_seed([0.0, 0.0, 1 / 10_000_000])


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


def test_size_alignment_is_rho_over_the_attainable_rho():
    sizes = [769] * 4 + [1921] * 2  # one layer of MiniLM: four attention matrices, two FFN
    ranks = [1, 2, 3, 4, 5, 6]
    # Independent: the largest and smallest Spearman over every arrangement of the same ranks.
    rhos = [stats.spearmanr(sizes, perm).statistic for perm in itertools.permutations(ranks)]
    low, high = size_rank_attainable(sizes, ranks)
    assert (low, high) == pytest.approx((min(rhos), max(rhos)))
    assert high < 0.9  # two sizes: a perfectly size-ordered allocation still has rho < 1
    assert size_alignment(size_rank_spearman(sizes, [1, 2, 3, 4, 5, 6]), (low, high)) == pytest.approx(1.0)
    assert size_alignment(size_rank_spearman(sizes, [6, 5, 4, 3, 2, 1]), (low, high)) == pytest.approx(-1.0)
    mixed = [1, 5, 3, 4, 2, 6]
    assert size_alignment(size_rank_spearman(sizes, mixed), (low, high)) == pytest.approx(
        stats.spearmanr(sizes, mixed).statistic / max(rhos))
    assert size_rank_attainable(sizes, [2] * 6) is None and size_alignment(None, None) is None
