"""The seed planner: how many seeds each comparison against the baseline needs to detect a given difference.

From the spread of the paired per-seed differences a report has (signal - baseline, paired by seed), the number of
seeds at which the report's two-sided paired t-test, at the strictest Holm level (alpha / m over the report's m
comparisons against the baseline), detects a true difference ``d`` in the main metric with probability POWER:
exact power from the noncentral t (stats.paired_t_power), the smallest n >= 2 reaching it, and at least the seeds
the report needs to run a test at all. The plan is only as good as the observed sd, itself an estimate from the
seeds there are.
"""

from __future__ import annotations

import argparse
import math

from .markdown import table
from .stats import ALPHA, POWER, paired_t_power

DETECT_DEFAULTS = (0.005, 0.01)  # with the largest observed difference: the default is the smallest of the three
MAX_PLANNED_SEEDS = 100_000  # beyond this a plan says "more than" instead of searching on
MIN_SD_SEEDS = 2  # the sd of the per-seed differences needs two shared seeds
SEED_COUNT_PREFIX = "n="  # ablate --seeds n=N: seeds 1..N (grid/ablate.py SEED_COUNT; grid imports analysis)


def seeds_needed(difference: float, sd: float, alpha: float, power: float = POWER) -> int | None:
    """The smallest n >= 2 at which a two-sided paired t-test at level ``alpha`` over n pairs has at least ``power``
    against a true mean difference ``difference`` when the per-pair differences have sd ``sd``; None when even
    MAX_PLANNED_SEEDS are not enough. Power rises with n, so: double until it is reached, then bisect."""
    effect = abs(difference) / sd

    def enough(n: int) -> bool:
        return paired_t_power(effect, n, alpha) >= power

    if enough(2):
        return 2
    short, long = 2, 4  # invariant: not enough(short), and enough(long) once the doubling stops
    while not enough(long):
        if long >= MAX_PLANNED_SEEDS:
            return None
        short, long = long, min(2 * long, MAX_PLANNED_SEEDS)
    while long - short > 1:
        middle = (short + long) // 2
        short, long = (short, middle) if enough(middle) else (middle, long)
    return long


def default_detect(observed: list[float | None]) -> float:
    """The smallest of DETECT_DEFAULTS and the largest observed |mean difference| (a difference of 0 or None does
    not count: there is nothing to detect)."""
    largest = max((abs(d) for d in observed if d is not None and d != 0), default=None)
    return min(DETECT_DEFAULTS + ((largest,) if largest is not None else ()))


def plan_comparison(signal: str, diff: dict, baseline: str, detect: list[float], level: float,
                    min_test_seeds: int) -> dict:
    """One comparison's plan: per difference to detect, the seeds needed; without a usable sd, the reason."""
    shared = len(diff.get("shared_seeds", []))
    sd = diff.get("sd_of_differences")
    out = {"signal": signal, "shared_seeds": shared, "sd_of_differences": sd, "mean_diff": diff.get("mean_diff"),
           "plans": [], "note": None}
    if "shared_seeds" not in diff:
        out["note"] = f"no plan possible: {diff.get('note') or f'no finished {baseline} run'}"
    elif shared < MIN_SD_SEEDS:
        out["note"] = (f"no plan possible: {shared} shared seed(s) with {baseline}; the sd of the per-seed "
                       f"differences needs >= {MIN_SD_SEEDS}")
    elif sd is None or not math.isfinite(sd) or sd <= 0:
        out["note"] = ("no plan possible: the same difference on every shared seed (sd 0), no spread to plan "
                       "from; more seeds may show one")
    else:
        for d in detect:
            n = seeds_needed(d, sd, level)
            out["plans"].append({"detect": d, "power_alone": n,
                                 "seeds_needed": None if n is None else max(n, min_test_seeds),
                                 "note": None if n is not None else f"more than {MAX_PLANNED_SEEDS:,} seeds"})
    return out


def planned_seeds(existing: list[int], count: int) -> list[int]:
    """``count`` seeds: the ones already used first (their runs are kept and paired), topped up with the smallest
    positive integers not in use."""
    seeds = sorted(set(existing))[:count]
    candidate = 1
    while len(seeds) < count:
        if candidate not in seeds and candidate not in existing:
            seeds.append(candidate)
        candidate += 1
    return sorted(seeds)


def seeds_flag(seeds: list[int]) -> str:
    """``--seeds n=N`` when the seeds are 1..N, else the list."""
    if seeds == list(range(1, len(seeds) + 1)):
        return f"--seeds {SEED_COUNT_PREFIX}{len(seeds)}"
    return "--seeds " + " ".join(map(str, seeds))


def ablate_command(task: str, signals: list[str], seeds: list[int]) -> str:
    """The grid that gives every signal the planned seeds (a custom task's runs live in custom-<name>/: ablate
    takes --task custom and its files)."""
    task_flag = "custom" if task.startswith("custom-") else task
    return f"adalora-ablation ablate --task {task_flag} --signals {' '.join(signals)} {seeds_flag(seeds)}"


def seed_plan(report_rows: list[dict], metrics: dict[str, str], baseline: str, task: str,
              detect: list[float] | None, min_test_seeds: int) -> dict:
    """The plan of one report: per main metric, every comparison against ``baseline``; and the ablate command
    that runs the most seeds any comparison needs. ``detect``: absolute differences in the metric (default per
    metric: default_detect of the observed differences)."""
    compared = [row for row in report_rows if row["signal"] != baseline]
    m = max(len(compared) * len(metrics), 1)
    out = {"alpha": ALPHA, "comparisons": m, "level": ALPHA / m, "power": POWER, "min_test_seeds": min_test_seeds,
           "by_metric": {}, "seeds_needed": None, "seeds": None, "command": None}
    for key in metrics:
        diffs = [row[key].get("vs_baseline") or {} for row in compared]
        values = list(detect) if detect else [default_detect([d.get("mean_diff") for d in diffs])]
        out["by_metric"][key] = {
            "detect": values, "detect_given": bool(detect),
            "comparisons": [plan_comparison(row["signal"], diff, baseline, values, out["level"], min_test_seeds)
                            for row, diff in zip(compared, diffs)]}
    needed = [p["seeds_needed"] for entry in out["by_metric"].values() for c in entry["comparisons"]
              for p in c["plans"] if p["seeds_needed"] is not None]
    if needed:
        existing = sorted({s for row in report_rows for s in row["seeds"]}
                          | {p["seed"] for row in report_rows for p in row["problems"]})
        out["seeds_needed"] = max(needed)
        out["seeds"] = planned_seeds(existing, out["seeds_needed"])
        out["command"] = ablate_command(task, [row["signal"] for row in report_rows], out["seeds"])
    return out


# -- output --------------------------------------------------------------------------------------------------------
def _detect_source(entry: dict, label: str) -> str:
    if entry["detect_given"]:
        return "--detect"
    return f"default: the smallest of {', '.join(map(str, DETECT_DEFAULTS))} and the largest observed |Δ {label}|"


def seed_plan_markdown(report: dict) -> list[str]:
    plan, baseline = report["seed_plan"], report["baseline"]
    lines = [f"### Seeds needed (paired t-test at power {plan['power']}, Holm level α/m)", ""]
    if not any(entry["comparisons"] for entry in plan["by_metric"].values()):
        return lines + [f"Only {baseline}: no comparison to plan.", ""]
    several = len(report["metrics"]) > 1
    header = (["metric"] if several else []) + [
        "signal vs baseline", "shared seeds", "sd of differences", "detect Δ",
        f"seeds needed (power {plan['power']})", "Holm level"]
    rows = []
    for key, entry in plan["by_metric"].items():
        label = report["metrics"][key]
        for c in entry["comparisons"]:
            head = ([label] if several else []) + [f"{c['signal']} vs {baseline}", c["shared_seeds"],
                                                   "—" if c["sd_of_differences"] is None
                                                   else f"{c['sd_of_differences']:.4f}"]
            level = f"{plan['alpha']}/{plan['comparisons']} = {plan['level']:.4g}"
            if c["note"]:
                rows.append(head + [", ".join(f"{d:g}" for d in entry["detect"]), c["note"], level])
            for p in c["plans"]:
                seeds = p["note"] or str(p["seeds_needed"]) + (
                    f" (power alone: {p['power_alone']})" if p["power_alone"] != p["seeds_needed"] else "")
                rows.append(head + [f"{p['detect']:g}", seeds, level])
    lines += [table(header, rows), ""]
    sources = "; ".join(f"{report['metrics'][k]}: {', '.join(f'{d:g}' for d in e['detect'])} "
                        f"({_detect_source(e, report['metrics'][k])})" for k, e in plan["by_metric"].items())
    lines += [f"Seeds needed: the smallest number of shared seeds n at which the two-sided paired t-test on the "
              f"per-seed differences (signal - {baseline}) detects a true difference Δ with probability "
              f"{plan['power']}: exact power from the noncentral t (df n-1, noncentrality Δ√n/sd), at the strictest "
              f"Holm level α/m over the m = {plan['comparisons']} comparison(s) against {baseline} (conservative: "
              f"Holm tests the others at larger levels), taking the sd as observed (an estimate from the shared "
              f"seeds there are), and at least the {plan['min_test_seeds']} shared seeds a test needs. Δ: {sources}.",
              ""]
    if plan["command"]:
        lines += [f"To give every signal {plan['seeds_needed']} seeds (finished runs are skipped; add the train "
                  f"flags and any --sweep these runs were made with): `{plan['command']}`", ""]
    return lines


def seed_plan_csv_columns(key: str) -> list[str]:
    return [f"{key}_sd_of_differences", f"{key}_detect", f"{key}_seeds_needed", f"{key}_seeds_plan_level",
            f"{key}_seeds_plan_note"]


def seed_plan_csv_values(report: dict, signal: str, key: str) -> dict:
    """A signal's plan as CSV cells (several detect values: space-separated, in the same order)."""
    entry = report["seed_plan"]["by_metric"][key]
    c = next((c for c in entry["comparisons"] if c["signal"] == signal), None)
    if c is None:  # the baseline
        return {}
    return {f"{key}_sd_of_differences": c["sd_of_differences"],
            f"{key}_detect": " ".join(f"{d:g}" for d in entry["detect"]),
            f"{key}_seeds_needed": " ".join("" if p["seeds_needed"] is None else str(p["seeds_needed"])
                                            for p in c["plans"]),
            f"{key}_seeds_plan_level": report["seed_plan"]["level"],
            f"{key}_seeds_plan_note": c["note"] or "; ".join(p["note"] for p in c["plans"] if p["note"])}


def detect_difference(text: str) -> float:
    """report --detect: a positive, finite absolute difference in the main metric (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive difference in the main metric (e.g. 0.005)")
    return value
