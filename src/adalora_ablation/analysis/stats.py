"""Statistics the report adds to its tables: multiple-comparison correction, the smallest difference the seeds could
detect, whether the adapters matter at all, and how much of an allocation the matrix shapes explain.

Pure numpy/scipy on plain numbers, so that each piece is tested on its own and the report stays a reader of runs.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05  # two-sided
POWER = 0.8
# |rho| as a share of the largest |rho| the same sizes and ranks allow: with two triplet sizes (attention and FFN) rho
# is a point-biserial correlation that even a perfectly size-ordered allocation cannot push past ~0.82.
SIZE_BIAS_SHARE = 0.7
# Accuracies on N evaluation rows are multiples of 1/N, so two different per-seed differences are at least 1/N
# apart (>= 1e-7 for any eval set below ten million rows), while float rounding moves them by ~1e-16: differences
# closer than this are the same difference.
SAME_DIFFERENCE_TOLERANCE = 1e-9


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, made monotone, capped at 1); None stays None and is not
    counted as a comparison."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_t_power(effect: float, n: int, alpha: float) -> float:
    """Exact power of a two-sided paired t-test over ``n`` pairs at level ``alpha`` for a true mean difference of
    ``effect`` standard deviations of the differences: T follows a noncentral t with n - 1 degrees of freedom and
    noncentrality effect * sqrt(n); the test rejects when |T| > t_{1-alpha/2}."""
    df, nc = n - 1, effect * math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    # P(T < -c) is written as P(-T > c) with -T ~ nct(df, -nc): scipy's cdf far in the lower tail returns NaN.
    upper, lower = stats.nct.sf(critical, df, nc), stats.nct.sf(critical, df, -nc)
    return float(np.nan_to_num(upper) + np.nan_to_num(lower))


def minimal_detectable_difference(sd_of_differences: float | None, n: int, comparisons: int = 1) -> float | None:
    """The smallest true mean difference a two-sided paired t-test over ``n`` seeds detects with probability exactly
    POWER at level ALPHA / comparisons (Bonferroni, Holm's most stringent step), given the standard deviation of the
    per-seed differences: the root of the noncentral-t power in the effect size, times that sd. None below 2 seeds
    or without a positive, finite sd (nothing to scale)."""
    if n < 2 or sd_of_differences is None or not math.isfinite(sd_of_differences) or sd_of_differences <= 0:
        return None
    alpha = ALPHA / max(comparisons, 1)
    high = 1.0
    while paired_t_power(high, n, alpha) < POWER:  # power rises with the effect: bracket the root, then solve
        high *= 2
    effect = optimize.brentq(lambda d: paired_t_power(d, n, alpha) - POWER, 0.0, high, xtol=1e-12, rtol=1e-12)
    return float(effect * sd_of_differences)


def pooled_sd(sds: list[float | None], dfs: list[int]) -> float | None:
    """Standard deviations pooled by their degrees of freedom: sqrt(sum df_i sd_i^2 / sum df_i). None when no sd
    has a degree of freedom."""
    pairs = [(s, d) for s, d in zip(sds, dfs) if s is not None and d > 0]
    total = sum(d for _, d in pairs)
    return float(math.sqrt(sum(d * s * s for s, d in pairs) / total)) if total else None


def adapters_carry_little(effects: list[float], seed_spread: float | None) -> bool:
    """True when the adapter effects (accuracy with adapters minus without, one per run) are not clearly above zero
    (mean <= 0, or with several runs a 95% t-interval that reaches zero) or are smaller than the seed-to-seed
    spread of accuracy: then differences between signals cannot show."""
    if not effects:
        return False
    mean = float(np.mean(effects))
    if mean <= 0:
        return True
    if len(effects) >= 2:
        sd = float(np.std(effects, ddof=1))
        half = float(stats.t.ppf(0.975, len(effects) - 1)) * sd / math.sqrt(len(effects))
        if mean - half <= 0:
            return True
    return seed_spread is not None and mean < seed_spread


def same_on_every_seed(differences: list[float]) -> bool:
    """True when the per-seed differences are one value up to float rounding: their sd is then zero and a t-test
    is undefined (an exact 0 would depend on how the accuracies happened to round)."""
    return max(differences) - min(differences) <= SAME_DIFFERENCE_TOLERANCE


def size_rank_spearman(sizes: list[int], ranks: list[int]) -> float | None:
    """Spearman correlation between module triplet sizes (in + out + 1) and final ranks, pooled over modules and
    seeds; None when either side is constant (undefined)."""
    if len(set(sizes)) < 2 or len(set(ranks)) < 2:
        return None
    return float(stats.spearmanr(sizes, ranks).statistic)


def budget_shares(ranks_by_type: dict[str, int]) -> dict[str, float]:
    """Each matrix type's share of the total final rank."""
    total = sum(ranks_by_type.values())
    return {t: (r / total if total else 0.0) for t, r in ranks_by_type.items()}


def size_rank_attainable(sizes: list[int], ranks: list[int]) -> tuple[float, float] | None:
    """The lowest and highest Spearman correlation the same sizes and the same multiset of ranks can reach: the
    ranks arranged against, and along, the size order (any order within a tied size gives the same rho). None when
    either side is constant."""
    if len(set(sizes)) < 2 or len(set(ranks)) < 2:
        return None
    order = np.argsort(sizes, kind="stable")
    along, against = np.empty(len(ranks)), np.empty(len(ranks))
    along[order], against[order] = np.sort(ranks), np.sort(ranks)[::-1]
    return float(stats.spearmanr(sizes, against).statistic), float(stats.spearmanr(sizes, along).statistic)


def size_alignment(rho: float | None, attainable: tuple[float, float] | None) -> float | None:
    """rho as a share of the most extreme rho attainable in its direction: +1 = ranks ordered exactly by size, -1 =
    exactly against it, whatever the number of distinct sizes."""
    if rho is None or attainable is None:
        return None
    low, high = attainable
    bound = high if rho >= 0 else -low
    return float(rho / bound) if bound > 0 else None
