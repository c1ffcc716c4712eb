"""Statistics the report adds to its tables: multiple-comparison correction, the smallest difference the seeds could
detect, whether the adapters matter at all, and how much of an allocation the matrix shapes explain.

Pure numpy/scipy on plain numbers, so that each piece is tested on its own and the report stays a reader of runs.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 0.05  # two-sided
POWER = 0.8
SIZE_BIAS_RHO = 0.7  # rho^2 ~ 0.5: half of the rank ordering is explained by size alone


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


def minimal_detectable_difference(sd_of_differences: float, n: int, comparisons: int = 1) -> float | None:
    """The smallest true mean difference a two-sided paired t-test over ``n`` seeds detects with probability POWER
    at level ALPHA / comparisons (Bonferroni, Holm's most stringent step), given the observed standard deviation of
    the per-seed differences: (t_{1-a/2, n-1} + t_{power, n-1}) * sd / sqrt(n). None below 2 seeds."""
    if n < 2 or sd_of_differences is None or not math.isfinite(sd_of_differences):
        return None
    alpha = ALPHA / max(comparisons, 1)
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(POWER, df)) * sd_of_differences / math.sqrt(n))


def pooled_sd(sds: list[float]) -> float | None:
    """Root mean square of several standard deviations (equal weights), None if there are none."""
    sds = [s for s in sds if s is not None]
    return float(math.sqrt(np.mean(np.square(sds)))) if sds else None


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
