"""The report of one variant: one table over seeds per signal, read from the run folders' final files (the
``report`` command, analysis/variants.py, makes one per sweep variant).

Per signal: accuracy mean, sample std and a 95% t confidence interval; the difference to baseline_adalora with a
paired t-test over shared seeds (Holm-adjusted over every signal and accuracy as one family); final total rank and
budget check; the adapter effect; flags (not shown above the ``random`` control by a one-sided paired test,
allocation following or opposing matrix size). Per task: the
smallest difference the seeds could detect, the controls' reference band, whether the adapters carry anything, and
the size-bias diagnostic. Between signals: how similar their final allocations are. Per run: rank churn (triplets
pruned and later revived). Runs that are missing or unfinished are listed in every output format, never dropped
silently.
"""

from __future__ import annotations

import csv
import io
import math
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats

from .. import signals as registry
from ..errors import UsageError
from .markdown import table
from .power import seed_plan, seed_plan_csv_columns, seed_plan_csv_values, seed_plan_markdown
from ..module_names import module_type, ordered_types, ranks_by_layer_and_type
from .stats import (
    ALPHA,
    POWER,
    SIZE_BIAS_SHARE,
    adapters_carry_little,
    budget_shares,
    holm,
    minimal_detectable_difference,
    pooled_sd,
    same_on_every_seed,
    size_alignment,
    size_rank_attainable,
    size_rank_spearman,
)
from ..run.folder import Run, accuracies, discover, secondary_metrics
from ..run.identity import differing, show, summary_settings

MIN_TEST_SEEDS = 3  # a paired t-test on fewer shared seeds has too few degrees of freedom to mean anything
TEST_NAME = "paired t-test (scipy.stats.ttest_rel, two-sided)"
RANDOM_TEST_NAME = "paired t-test (scipy.stats.ttest_rel, one-sided: signal > random)"
# The one label for differences that are equal on every shared seed (up to float rounding), in every output.
ZERO_VARIANCE = "no test possible: the same difference on every shared seed (zero variance)"
RANDOM_CONTROL = "random"  # the reference a signal has to beat
NOT_ABOVE_RANDOM = "not above random"
UNTESTED_AGAINST_RANDOM = "not tested against random"
SIZE_FOLLOWED = "allocation follows matrix size"
SIZE_OPPOSED = "allocation goes against matrix size"
ADAPTERS_CARRY_LITTLE = "the adapters carry little here; differences between signals cannot show"
MODULE_SHAPES = "module_shapes"  # final_summary.json: {module name: [in_features, out_features]}
# final_summary.json of a planted run -> the markdown column's name (the csv and json use the field names)
RECOVERY_FIELDS = {"planted_recall": "planted recall", "planted_data_recovery": "data recovery",
                   "planted_subspace": "subspace recovery", "planted_share": "planted share"}
ORACLE = "oracle"  # the planted task's upper reference


def adapter_effect_field(metric_field: str) -> str:
    """The summary field with (main metric with adapters - without) for a main-metric field: eval_accuracy ->
    adapter_effect, eval_accuracy_mm -> adapter_effect_mm, eval_matthews -> adapter_effect (metric names hold no
    underscore)."""
    _, _, suffix = metric_field.removeprefix("eval_").partition("_")
    return f"adapter_effect_{suffix}" if suffix else "adapter_effect"


def accuracy_labels(task: str, task_dir: str | Path | None = None) -> dict[str, str]:
    """Summary field -> column label of the task's main metric, one per eval set (MNLI: matched and mismatched
    accuracy; CoLA: Matthews correlation). Every statistic of the report is computed on these."""
    return {a.field: (f"{a.eval_set} acc" if a.eval_set else "accuracy") if a.name == "accuracy" else a.label
            for a in accuracies(task, task_dir)}


def secondary_columns(task: str, runs_by_signal: dict[str, list[Run]],
                      task_dir: str | Path | None = None) -> dict[str, dict[str, dict]]:
    """The task's other metrics (MRPC/QQP: F1, STS-B: Spearman, CoLA: accuracy) as mean ± std per signal, extra
    columns beside the main metric; runs whose summary lacks one are left out of that column."""
    out = {}
    for m in secondary_metrics(task, task_dir):
        out[m.field] = {"label": m.label, "signals": {
            signal: describe([float(r.summary[m.field]) for r in runs
                              if r.problem is None and r.summary.get(m.field) is not None])
            for signal, runs in runs_by_signal.items()}}
    return out


# -- finding runs ------------------------------------------------------------------------------------------------
def collect_runs(output_root: str | Path, task: str, signals: list[str] | None = None,
                 seeds: list[int] | None = None, variant: str = "") -> list[Run]:
    """Every requested (signal, seed) run of one variant (a sweep's point; "" outside a sweep), found or not.
    Defaults: every signal and every seed found on disk, so a seed that one signal has and another lacks shows up
    as missing for the latter."""
    found = discover(output_root, task)
    if not found:
        raise UsageError(
            f"no runs for task {task!r} under {Path(output_root) / task}/<signal>/<seed>/; produce some with "
            f"'adalora-ablation train --task {task} --signal SIGNAL --seed N --output-root {output_root}' "
            f"(or 'adalora-ablation demo' for task synthetic), or point --output-root at your runs"
        )
    found = [r for r in found if r.variant == variant] or found  # (no run of the variant: all show as missing)
    signals = signals or registry.ordered_signals({r.signal for r in found})
    seeds = seeds or sorted({r.seed for r in found})
    return [Run.at(output_root, task, signal, seed, variant) for signal in signals for seed in seeds]


def settings_clash(runs: list[Run], ignore: tuple[str, ...], place) -> str | None:
    """The settings in which the first finished run that records settings and the first later one differ, other
    than in ``ignore``, as "name: value in <place(first)>, value in <place(other)>; ..."; None if they all agree.
    Runs whose summary records no settings are taken as they are."""
    first = None
    for run in runs:
        settings = summary_settings(run.summary) if run.problem is None else None
        if settings is None:
            continue
        if first is None:
            first = (run, settings)
            continue
        names = differing(first[1], settings, ignore=ignore)
        if names:
            return "; ".join(f"{n}: {show(first[1][n])} in {place(first[0])}, {show(settings[n])} in {place(run)}"
                             for n in names)
    return None


def refuse_mixed_settings(runs: list[Run]) -> None:
    """Every finished run of one report must have the same settings apart from its signal and seed (a paired test
    of two signals is only a comparison of signals if nothing else differs); otherwise one line naming the runs and
    the settings."""
    what = settings_clash(runs, ignore=("signal", "seed"), place=lambda run: run.name)
    if what:
        raise UsageError(f"runs with different settings would be pooled in one report ({what}); give each "
                         f"setting its own --output-root, or sweep it (ablate --sweep NAME=V1,V2) so that each "
                         f"value gets its own folder and its own report")


# -- statistics ------------------------------------------------------------------------------------------------
def describe(values: list[float]) -> dict:
    """Mean, sample std (ddof=1) and the 95% t-interval of the mean; std and CI need at least two values."""
    n = len(values)
    out = {"n": n, "mean": float(np.mean(values)) if n else None, "std": None, "ci95_low": None, "ci95_high": None}
    if n >= 2:
        std = float(np.std(values, ddof=1))
        half = float(stats.t.ppf(0.975, n - 1)) * std / np.sqrt(n)
        out.update(std=std, ci95_low=out["mean"] - half, ci95_high=out["mean"] + half)
    return out


def paired_difference(values: dict[int, float], baseline: dict[int, float], baseline_name: str,
                      one_sided: bool = False) -> dict:
    """Mean and sd of (signal - baseline) over shared seeds, and a paired t-test when there are enough of them
    and the differences vary (two-sided; ``one_sided``: the alternative is signal > baseline)."""
    shared = sorted(set(values) & set(baseline))
    diffs = [values[s] - baseline[s] for s in shared]
    out = {"shared_seeds": shared, "mean_diff": float(np.mean(diffs)) if diffs else None,
           "sd_of_differences": float(np.std(diffs, ddof=1)) if len(diffs) >= 2 else None,
           "test": None, "t": None, "p_value": None, "note": None}
    if len(shared) < MIN_TEST_SEEDS:
        out["note"] = (f"no test possible: {len(shared)} shared seed(s) with {baseline_name}, "
                       f"a paired test needs >= {MIN_TEST_SEEDS}")
    elif same_on_every_seed(diffs):  # the t statistic is undefined (or a float-rounding artefact)
        out.update(note=ZERO_VARIANCE, sd_of_differences=0.0)
    else:
        result = stats.ttest_rel([values[s] for s in shared], [baseline[s] for s in shared],
                                 alternative="greater" if one_sided else "two-sided")
        out.update(test=RANDOM_TEST_NAME if one_sided else TEST_NAME, t=float(result.statistic),
                   p_value=float(result.pvalue))
    return out


def signal_row(signal: str, runs: list[Run], baseline: str, baseline_runs: list[Run],
               metrics: dict[str, str]) -> dict:
    valid = [r for r in runs if r.problem is None]
    row = {"signal": signal, "n": len(valid), "seeds": [r.seed for r in valid],
           "problems": [{"seed": r.seed, "problem": r.problem, "path": str(r.run_dir)} for r in runs if r.problem]}
    for key in metrics:
        values = {r.seed: float(r.summary[key]) for r in valid}
        entry = describe(list(values.values()))
        if signal != baseline:
            base = {r.seed: float(r.summary[key]) for r in baseline_runs if r.problem is None}
            entry["vs_baseline"] = paired_difference(values, base, baseline) if base else {
                "note": f"no finished {baseline} run among the requested signals and seeds"}
        row[key] = entry
    # Older runs, and runs with the measurement switched off, have no adapter effect: left out, not zero.
    row["adapter_effect"] = {key: describe([float(r.summary[adapter_effect_field(key)]) for r in valid
                                            if r.summary.get(adapter_effect_field(key)) is not None])
                             for key in metrics}
    # The planted task: how much of the known answer the final allocation holds (absent on other tasks).
    for field in RECOVERY_FIELDS:
        if any(r.summary.get(field) is not None for r in valid):
            row[field] = describe([float(r.summary[field]) for r in valid if r.summary.get(field) is not None])
    row["flags"] = []
    row["total_rank"] = sorted({r.summary["total_rank"] for r in valid})
    row["target_budget"] = sorted({r.summary["target_budget"] for r in valid})
    row["budget_check_passed"] = sum(bool(r.summary["budget_check_passed"]) for r in valid)
    return row


# -- allocations -----------------------------------------------------------------------------------------------
def kept_triplets(record: dict) -> set[tuple[str, int]]:
    return {(m, i) for m, row in record["kept"].items() for i, k in enumerate(row) if k}


def rank_spearman(a: dict[str, int], b: dict[str, int]) -> float | None:
    """Spearman correlation of two runs' final per-module ranks; None when either is constant (undefined)."""
    modules = sorted(set(a) & set(b))
    x, y = [a[m] for m in modules], [b[m] for m in modules]
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(stats.spearmanr(x, y).statistic)


def jaccard(a: set, b: set) -> float | None:
    return len(a & b) / len(a | b) if a | b else None


def _mean_or_none(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def allocation_similarity(runs_by_signal: dict[str, list[Run]]) -> list[dict]:
    """Per pair of signals, over the seeds both finished: Spearman of final per-module ranks and Jaccard overlap
    of the finally kept triplets (last rank_pattern.jsonl record), each averaged over those seeds."""
    out = []
    for a, b in combinations(runs_by_signal, 2):
        runs_a = {r.seed: r for r in runs_by_signal[a] if r.problem is None and r.allocations}
        runs_b = {r.seed: r for r in runs_by_signal[b] if r.problem is None and r.allocations}
        shared = sorted(set(runs_a) & set(runs_b))
        rhos = [rank_spearman(runs_a[s].summary["final_ranks"], runs_b[s].summary["final_ranks"]) for s in shared]
        jaccards = [jaccard(kept_triplets(runs_a[s].allocations[-1]), kept_triplets(runs_b[s].allocations[-1]))
                    for s in shared]
        out.append({"signals": [a, b], "shared_seeds": shared, "spearman": _mean_or_none(rhos),
                    "spearman_seeds": sum(r is not None for r in rhos), "jaccard": _mean_or_none(jaccards)})
    return out


def rank_churn(allocations: list[dict]) -> dict:
    """Triplets masked at one allocation and active again at a later one (distinct triplets, and 0->1 events
    between consecutive allocations). Warm-up is not counted: nothing is masked before the first allocation."""
    modules = list(allocations[0]["kept"])
    kept = np.array([[k for m in modules for k in record["kept"][m]] for record in allocations], dtype=bool)
    masked_so_far = np.logical_or.accumulate(~kept, axis=0)
    revived = kept[1:] & masked_so_far[:-1]
    return {"allocations": len(allocations), "triplets": kept.shape[1],
            "revived_triplets": int(revived.any(axis=0).sum()),
            "revival_events": int((kept[1:] & ~kept[:-1]).sum())}


# -- task-level statistics -------------------------------------------------------------------------------------
def _seed_values(runs: list[Run], key: str) -> dict[int, float]:
    return {r.seed: float(r.summary[key]) for r in runs if r.problem is None}


def adjust_for_multiple_comparisons(rows: list[dict], metrics: dict[str, str], test: str = "vs_baseline") -> int:
    """Holm-adjust the paired tests ``test`` of every signal and every accuracy as one family (adds
    ``p_value_holm`` to every comparison that has a p-value): a claim about a task with several eval sets (MNLI
    matched and mismatched) rests on all of its tests at once. Returns the family's size."""
    tests = [row[key][test] for row in rows for key in metrics if row[key].get(test, {}).get("p_value") is not None]
    for entry, adjusted in zip(tests, holm([t["p_value"] for t in tests])):
        entry["p_value_holm"] = adjusted
    return len(tests)


def detectable_difference(rows: list[dict], key: str, comparisons: int) -> dict:
    """The smallest true difference to the baseline that the paired tests actually run would detect with
    probability POWER (exact noncentral-t power, level ALPHA / ``comparisons``, the Holm family's size): the sd of
    the per-seed differences pooled over those tests by degrees of freedom, each test at its own number of seeds
    (``by_seeds``; ``n_seeds``/``mde`` are the fewest seeds' values, the largest difference). Absent, with the
    reason, when no test ran or the pooled sd is not positive."""
    tested = [(row["signal"], row[key]["vs_baseline"]) for row in rows
              if row[key].get("vs_baseline", {}).get("p_value") is not None]
    sd = pooled_sd([t["sd_of_differences"] for _, t in tested], [len(t["shared_seeds"]) - 1 for _, t in tested])
    out = {"n_seeds": None, "tested": len(tested), "comparisons": comparisons, "sd_of_differences": sd,
           "alpha": ALPHA, "power": POWER, "mde": None, "by_seeds": [], "reason": None}
    if not tested:
        out["reason"] = (f"no paired test ran (each needs >= {MIN_TEST_SEEDS} shared seeds with the baseline and "
                         "differences that vary between seeds)")
    elif sd is None or not math.isfinite(sd) or sd <= 0:
        out["reason"] = "the pooled sd of the per-seed differences is 0 or undefined"
    else:
        for n in sorted({len(t["shared_seeds"]) for _, t in tested}):
            out["by_seeds"].append({"n_seeds": n, "signals": [s for s, t in tested if len(t["shared_seeds"]) == n],
                                    "mde": minimal_detectable_difference(sd, n, comparisons)})
        out.update(n_seeds=out["by_seeds"][0]["n_seeds"], mde=out["by_seeds"][0]["mde"])
    return out


def reference_band(runs_by_signal: dict[str, list[Run]], rows: list[dict], metrics: dict[str, str],
                   controls: list[str]) -> dict[str, dict]:
    """The controls' accuracies; tests every non-control signal against ``random`` (one-sided paired t-test over
    their shared seeds, ``vs_random``; Holm-adjusted over all these tests, every accuracy, as one family) and
    flags (in place) those not shown above it: adjusted p >= ALPHA, or no test possible."""
    band = {c: {key: describe(list(_seed_values(runs_by_signal[c], key).values())) for key in metrics}
            for c in controls if c in runs_by_signal and _seed_values(runs_by_signal[c], next(iter(metrics)))}
    if RANDOM_CONTROL not in band:
        return band
    tested = [row for row in rows if row["signal"] not in controls]
    for row in tested:
        for key in metrics:
            random = _seed_values(runs_by_signal[RANDOM_CONTROL], key)
            values = _seed_values(runs_by_signal[row["signal"]], key)
            row[key]["vs_random"] = paired_difference(values, random, RANDOM_CONTROL, one_sided=True)
    adjust_for_multiple_comparisons(tested, metrics, test="vs_random")
    for row in tested:
        for key, label in metrics.items():
            vs_random = row[key]["vs_random"]
            if not vs_random["shared_seeds"]:
                continue
            where = "" if len(metrics) == 1 else f"{label}: "
            if vs_random["p_value"] is None:
                reason = "zero variance" if vs_random["note"] == ZERO_VARIANCE else (
                    f"{len(vs_random['shared_seeds'])} shared seed(s)")
                row["flags"].append(f"{UNTESTED_AGAINST_RANDOM} ({where}{reason})")
            elif vs_random["p_value_holm"] >= ALPHA:
                row["flags"].append(NOT_ABOVE_RANDOM if len(metrics) == 1 else f"{NOT_ABOVE_RANDOM} ({label})")
    return band


def adapter_check(runs: list[Run], rows: list[dict], key: str) -> dict:
    """Whether the adapters carry enough for signal differences to show: every finished run's adapter effect
    against the seed-to-seed spread of accuracy (sample std over seeds, pooled over signals)."""
    field = adapter_effect_field(key)
    values = [float(r.summary[field]) for r in runs if r.problem is None and r.summary.get(field) is not None]
    spread = pooled_sd([row[key]["std"] for row in rows], [row[key]["n"] - 1 for row in rows])
    summary = describe(values)
    return {"field": field, "n": len(values), "mean": summary["mean"], "std": summary["std"],
            "seed_spread": spread, "carry_little": adapters_carry_little(values, spread)}


def size_bias(signal: str, runs: list[Run]) -> dict | None:
    """Spearman between each module's triplet size (in + out + 1) and its final rank, pooled over modules and
    finished seeds with module shapes; each matrix type's share of the final budget (summed over seeds) next to
    its share under the uniform control (its number of modules / all modules). None without finished runs."""
    valid = [r for r in runs if r.problem is None]
    if not valid:
        return None
    sizes, ranks, per_type = [], [], {}
    for run in valid:
        final = run.summary["final_ranks"]
        for kind, rank in ranks_by_layer_and_type(final)[1].items():
            per_type[kind] = per_type.get(kind, 0) + rank
        shapes = run.summary.get(MODULE_SHAPES) or {}
        for name in final:
            if name in shapes:
                sizes.append(int(shapes[name][0]) + int(shapes[name][1]) + 1)
                ranks.append(int(final[name]))
    modules = list(valid[0].summary["final_ranks"])
    types = ordered_types(modules)
    rho = size_rank_spearman(sizes, ranks) if sizes else None
    attainable = size_rank_attainable(sizes, ranks) if sizes else None
    alignment = size_alignment(rho, attainable)
    biased = alignment is not None and abs(alignment) >= SIZE_BIAS_SHARE
    return {"signal": signal, "runs": len(valid), "runs_with_shapes": sum(bool(r.summary.get(MODULE_SHAPES))
                                                                        for r in valid),
            "spearman_size_rank": rho, "spearman_attainable": list(attainable) if attainable else None,
            "size_alignment": alignment, "size_biased": biased,
            "direction": None if not biased else SIZE_FOLLOWED if alignment > 0 else SIZE_OPPOSED,
            "largest_types": _largest_types(valid),
            "budget_share": budget_shares({t: per_type.get(t, 0) for t in types}),
            "uniform_share": {t: sum(module_type(m) == t for m in modules) / len(modules) for t in types}}


def _largest_types(runs: list[Run]) -> list[str]:
    """The matrix types whose modules have the largest triplet size (in + out + 1), for the flag's wording."""
    sizes = {}
    for run in runs:
        for name, (din, dout) in (run.summary.get(MODULE_SHAPES) or {}).items():
            kind = module_type(name)
            sizes[kind] = max(sizes.get(kind, 0), int(din) + int(dout) + 1)
    return [t for t, size in sizes.items() if size == max(sizes.values())] if sizes else []


# -- the report ------------------------------------------------------------------------------------------------
def build_report(output_root: str | Path, task: str, signals: list[str] | None = None,
                 seeds: list[int] | None = None, variant: str = "", detect: list[float] | None = None) -> dict:
    """The report of one variant (analysis/variants.py builds one per variant): its rows, paired tests and Holm
    correction never see another variant's runs, and runs with other settings in it are an error. ``detect``: the
    differences in the main metric the seed plan is for (default: analysis/power.py's)."""
    runs = collect_runs(output_root, task, signals, seeds, variant)
    refuse_mixed_settings(runs)
    runs_by_signal: dict[str, list[Run]] = {}
    for run in runs:
        runs_by_signal.setdefault(run.signal, []).append(run)
    metrics = accuracy_labels(task, Path(output_root) / task)  # a custom task's metrics: its folder's task.json
    baseline = registry.signal_names("baseline")[0]
    baseline_runs = runs_by_signal.get(baseline, [])
    valid = [r for r in runs if r.problem is None]
    rows = [signal_row(s, rs, baseline, baseline_runs, metrics) for s, rs in runs_by_signal.items()]
    comparisons = adjust_for_multiple_comparisons(rows, metrics)  # one Holm family over every accuracy
    controls = registry.signal_names("control")
    band = reference_band(runs_by_signal, rows, metrics, controls)
    sizes = [b for b in (size_bias(s, rs) for s, rs in runs_by_signal.items()) if b is not None]
    for bias in sizes:
        if bias["size_biased"]:
            next(r for r in rows if r["signal"] == bias["signal"])["flags"].append(bias["direction"])
    return {
        "task": task,
        "variant": variant,
        "output_root": str(output_root),
        "synthetic": any(r.summary.get("synthetic") for r in valid),
        "metrics": metrics,
        "secondary_metrics": secondary_columns(task, runs_by_signal, Path(output_root) / task),
        "test": TEST_NAME,
        "baseline": baseline,
        "signals": rows,
        "multiple_comparisons": {key: {"method": "holm", "comparisons": comparisons, "applied": comparisons > 1,
                                       "family": list(metrics)} for key in metrics},
        "detectable_difference": {key: detectable_difference(rows, key, comparisons) for key in metrics},
        "seed_plan": seed_plan(rows, metrics, baseline, task, detect, MIN_TEST_SEEDS),
        "controls": controls,
        "reference_band": band,
        "adapter_effect": adapter_check(runs, rows, next(iter(metrics))),
        "size_bias": sizes,
        "similarity": allocation_similarity(runs_by_signal),
        "churn": [{"signal": r.signal, "seed": r.seed, "finished": r.problem is None, **rank_churn(r.allocations)}
                  for r in runs if r.allocations],
        "missing_or_partial": [{"signal": r.signal, "seed": r.seed, "problem": r.problem, "path": str(r.run_dir)}
                               for r in runs if r.problem],
    }


def _f(value, fmt: str = ".4f", none: str = "—") -> str:
    return none if value is None else format(value, fmt)


def _accuracy_cell(entry: dict) -> str:
    if entry["n"] == 0:
        return "—"
    if entry["std"] is None:
        return f"{entry['mean']:.4f} (1 seed: no std/CI)"
    return f"{entry['mean']:.4f} ± {entry['std']:.4f} [{entry['ci95_low']:.4f}, {entry['ci95_high']:.4f}]"


def _difference_cell(entry: dict, baseline: str, holm_applied: bool) -> str:
    diff = entry.get("vs_baseline")
    if diff is None:
        return "(baseline)"
    if diff.get("mean_diff") is None:
        return diff["note"] if diff.get("note") else f"no seeds shared with {baseline}"
    head = f"{diff['mean_diff']:+.4f} over {len(diff['shared_seeds'])} seed(s)"
    if diff["p_value"] is None:
        return f"{head}; {diff['note']}"
    cell = f"{head}; paired t-test p={diff['p_value']:.3g}"
    return f"{cell} (Holm-adjusted p={diff['p_value_holm']:.3g})" if holm_applied else cell


def _mean_std_cell(entry: dict, sign: str = "+") -> str:
    if entry["n"] == 0:
        return "—"
    mean = format(entry["mean"], f"{sign}.4f")
    return f"{mean} (1 seed)" if entry["std"] is None else f"{mean} ± {entry['std']:.4f}"


def _range(values: list) -> str:
    if not values:
        return "—"
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]} (varies)"


def to_markdown(report: dict) -> str:
    metrics, baseline = report["metrics"], report["baseline"]
    problems = report["missing_or_partial"]
    lines = [f"## {report['task']}: AdaLoRA scoring signals ({report['output_root']})", ""]
    if report["synthetic"]:
        lines += ["SYNTHETIC task (offline demo): these numbers say nothing about GLUE.", ""]
    if problems:
        lines += [f"**{len(problems)} requested run(s) missing or unfinished: listed at the end and left out of "
                  "every statistic.**", ""]
    header = ["signal", "seeds"] + [f"{label} mean ± std [95% CI]" for label in metrics.values()]
    header += [f"Δ {label} vs {baseline}" for label in metrics.values()]
    secondary = report.get("secondary_metrics", {})
    header += [f"{column['label']} mean ± std" for column in secondary.values()]
    header += ["adapter effect mean ± std"]
    recovery = [f for f in RECOVERY_FIELDS if any(f in row for row in report["signals"])]
    header += [f"{RECOVERY_FIELDS[field]} mean ± std" for field in recovery]
    header += ["final total rank (budget)", "budget check", "flags"]
    first = next(iter(metrics))
    holm_applied = {key: report["multiple_comparisons"][key]["applied"] for key in metrics}
    rows = []
    for row in report["signals"]:
        n = row["n"]
        cells = [row["signal"], n] + [_accuracy_cell(row[k]) for k in metrics]
        cells += [_difference_cell(row[k], baseline, holm_applied[k]) for k in metrics]
        cells += [_mean_std_cell(column["signals"][row["signal"]], sign="") for column in secondary.values()]
        cells += [_mean_std_cell(row["adapter_effect"][first])]
        cells += [_mean_std_cell(row[f], sign="") if f in row else "—" for f in recovery]
        cells += [f"{_range(row['total_rank'])} ({_range(row['target_budget'])})",
                  "—" if n == 0 else f"{'pass' if row['budget_check_passed'] == n else 'FAIL'} "
                                     f"{row['budget_check_passed']}/{n}",
                  "; ".join(row["flags"]) or "—"]
        rows.append(cells)
    lines += [table(header, rows)]
    lines += ["", "std: sample std (ddof=1) over seeds; 95% CI: mean ± t(0.975, n-1)·std/√n. Δ: mean of "
              f"(signal - {baseline}) over seeds both finished; test: {TEST_NAME}, only with >= {MIN_TEST_SEEDS} "
              "shared seeds whose differences vary.", multiple_comparisons_note(report), ""]
    if recovery:
        lines += [f"Planted task: planted recall = Σ min(final rank, planted rank) / Σ planted rank over the planted "
                  f"modules (1.0: every planted module holds its planted rank); data recovery = 1 - "
                  f"||(ΔW_l - ΔW_p)·Xᵀ||² / ||ΔW_p·Xᵀ||² (clipped at 0) per planted module, X its inputs in the "
                  f"teacher on the validation rows, ΔW_l the learned update: how much of the planted update's effect "
                  f"on the data the student reproduces, averaged over the planted modules with weights r (1.0: all "
                  f"of it, 0: no better than no update); subspace recovery = the share of "
                  f"each planted update ΔW_p (energy, ||·||_F²) that lies in the learned update's r strongest "
                  f"directions (its top-r left and right singular vectors, r the planted rank), averaged over the "
                  f"planted modules with weights r (1.0: the planted directions were learned, 0: none of them); "
                  f"planted share = the final rank held by planted modules / total final rank. {ORACLE} keeps the "
                  f"planted ranks by construction: the upper reference.", ""]
    lines += detectable_difference_lines(report) + seed_plan_markdown(report)
    lines += reference_band_lines(report) + adapter_effect_lines(report)
    lines += size_bias_markdown(report)
    lines += similarity_markdown(report["similarity"]) + churn_markdown(report["churn"])
    lines += ["### Missing or unfinished runs", ""]
    lines += [f"- {p['signal']} / seed {p['seed']}: {p['problem']} ({p['path']})" for p in problems] or [
        "None: every requested run has a valid final_summary.json."]
    return "\n".join(lines)


def multiple_comparisons_note(report: dict) -> str:
    labels = list(report["metrics"].values())
    m = report["multiple_comparisons"][next(iter(report["metrics"]))]["comparisons"]
    where = labels[0] if len(labels) == 1 else f"{' and '.join(labels)} as one family"
    if m > 1:
        return (f"Multiple comparisons: {where}: Holm correction applied over {m} comparisons against "
                f"{report['baseline']} (the signals with a p-value).")
    return f"Multiple comparisons: {where}: {m} comparison with a p-value, no multiple-comparison correction needed."


def detectable_difference_lines(report: dict) -> list[str]:
    parts = []
    for key, label in report["metrics"].items():
        d = report["detectable_difference"][key]
        if d["mde"] is None:
            parts.append(f"{label}: not computable ({d['reason']})")
            continue
        head, *others = d["by_seeds"]
        text = (f"With {head['n_seeds']} seeds, a difference smaller than {head['mde']:.4f} ({label}) would likely "
                f"go undetected (paired t-test, α={d['alpha']}/{d['comparisons']}, exact power {d['power']} from the "
                f"noncentral t; sd of per-seed differences {d['sd_of_differences']:.4f}, pooled over the "
                f"{d['tested']} test(s) run by degrees of freedom)")
        parts.append(text + "".join(f"; with {o['n_seeds']} seeds ({', '.join(o['signals'])}): {o['mde']:.4f}"
                                    for o in others))
    return ["**Smallest detectable difference:** " + "; ".join(parts)
            + ". 'No difference' does not mean 'no effect'.", ""]


def reference_band_lines(report: dict) -> list[str]:
    band = report["reference_band"]
    if not band:
        return [f"Reference band: no finished control runs ({', '.join(report['controls'])}).", ""]
    parts = [f"{control} {label} {_mean_std_cell(entry[key], sign='')} ({entry[key]['n']} seed(s))"
             for control, entry in band.items() for key, label in report["metrics"].items()]
    note = (f" Every other signal is tested against {RANDOM_CONTROL} on their shared seeds ({RANDOM_TEST_NAME}, "
            f"Holm-adjusted over these tests); adjusted p >= {ALPHA} is flagged '{NOT_ABOVE_RANDOM}', and fewer than "
            f"{MIN_TEST_SEEDS} shared seeds or zero variance '{UNTESTED_AGAINST_RANDOM}'."
            if RANDOM_CONTROL in band else f" No {RANDOM_CONTROL} runs: nothing flagged.")
    return ["Reference band (controls): " + "; ".join(parts) + "." + note, ""]


def adapter_effect_lines(report: dict) -> list[str]:
    a = report["adapter_effect"]
    if not a["n"]:
        return [f"Adapter effect: not measured (no {a['field']} in the summaries).", ""]
    label = next(iter(report["metrics"].values()))
    numbers = (f"mean {_mean_std_cell(a)} over {a['n']} run(s) ({label} with adapters minus without); "
               f"seed-to-seed spread of {label} {_f(a['seed_spread'])} (sample std, pooled over signals)")
    if a["carry_little"]:
        return [f"**{ADAPTERS_CARRY_LITTLE}**: {numbers}.", ""]
    return [f"Adapter effect: {numbers}; clearly above zero and above the spread.", ""]


def size_bias_markdown(report: dict) -> list[str]:
    lines = ["### Size bias (triplet size = in + out + 1 vs final rank; final budget share per matrix type)", ""]
    biases = report["size_bias"]
    if not biases:
        return lines + ["No finished runs.", ""]
    types = list(dict.fromkeys(t for b in biases for t in b["budget_share"]))
    header = ["signal", "seeds", "Spearman ρ(size, final rank)", "ρ / attainable"]
    header += [f"{t} share (uniform)" for t in types]
    rows = []
    for b in biases:
        rho = ("no module shapes in the summaries" if not b["runs_with_shapes"]
               else _f(b["spearman_size_rank"], ".3f", "n/a (constant sizes or ranks)"))
        rows.append([b["signal"], b["runs"], rho, _f(b["size_alignment"], "+.2f")] + [
            f"{b['budget_share'][t]:.3f} ({b['uniform_share'][t]:.3f})" if t in b["budget_share"] else "—"
            for t in types])
    lines += [table(header, rows), ""]
    for direction in (SIZE_FOLLOWED, SIZE_OPPOSED):
        flagged = [_size_flag_reading(b) for b in biases if b["direction"] == direction]
        if flagged:
            lines += [f"**{direction}** (|ρ| >= {SIZE_BIAS_SHARE} of the attainable ρ): {'; '.join(flagged)}.", ""]
    if any(b["spearman_attainable"] for b in biases):
        lines += ["ρ / attainable: ρ over the largest |ρ| that the same sizes and ranks allow in its direction "
                  "(+1: ranks ordered exactly by size, -1: exactly against it); with two triplet sizes ρ itself "
                  "cannot reach ±1.", ""]
    if not any(b["runs_with_shapes"] for b in biases):
        lines += ["Size-rank correlation: no module shapes in the summaries (runs older than module_shapes).", ""]
    return lines


def _size_flag_reading(bias: dict) -> str:
    """The flag read per matrix type: the share of the final budget the largest matrices got against uniform."""
    text = f"{bias['signal']} (ρ={bias['spearman_size_rank']:.3f}, {bias['size_alignment']:+.2f} of the attainable"
    largest = [t for t in bias["largest_types"] if t in bias["budget_share"]]
    if not largest:
        return text + ")"
    share = sum(bias["budget_share"][t] for t in largest)
    uniform = sum(bias["uniform_share"][t] for t in largest)
    return (text + f"; the largest matrices, {', '.join(largest)}, hold {share:.3f} of the final budget, "
            f"{uniform:.3f} under uniform)")


def similarity_markdown(similarity: list[dict]) -> list[str]:
    lines = ["### Allocation similarity (final allocations, averaged over shared finished seeds)", ""]
    if not similarity:
        return lines + ["Only one signal: nothing to compare.", ""]
    rows = [[f"{s['signals'][0]} vs {s['signals'][1]}", len(s["shared_seeds"]),
             _f(s["spearman"], ".3f", "n/a (no seeds, or constant ranks)"),
             _f(s["jaccard"], ".3f", "n/a (no shared seeds)")] for s in similarity]
    header = ["signals", "shared seeds", "Spearman ρ of final per-module ranks", "Jaccard of kept triplets"]
    return lines + [table(header, rows), ""]


def churn_markdown(churn: list[dict]) -> list[str]:
    lines = ["### Rank churn per run (triplets masked at one allocation and active again at a later one)", ""]
    if not churn:
        return lines + ["No allocation records found.", ""]
    rows = [[c["signal"], f"{c['seed']}{'' if c['finished'] else ' (unfinished run)'}", c["allocations"],
             f"{c['revived_triplets']} / {c['triplets']}", c["revival_events"]] for c in churn]
    header = ["signal", "seed", "allocations", "revived triplets / all", "revival events"]
    return lines + [table(header, rows), ""]


def to_csv(report: dict) -> str:
    """One row per signal (the main table) with numeric columns; missing/unfinished runs in the last column."""
    columns = ["signal", "n_seeds", "seeds"]
    for key in report["metrics"]:
        columns += [f"{key}_{part}" for part in ("mean", "std", "ci95_low", "ci95_high")]
        columns += [f"{key}_diff_vs_baseline", f"{key}_shared_seeds", f"{key}_p_value", f"{key}_p_value_holm",
                    f"{key}_test", f"{adapter_effect_field(key)}_mean", f"{adapter_effect_field(key)}_std"]
        columns += seed_plan_csv_columns(key)
    secondary = report.get("secondary_metrics", {})
    columns += [f"{key}_{part}" for key in secondary for part in ("mean", "std")]
    columns += [f"{field}_{part}" for field in RECOVERY_FIELDS for part in ("mean", "std")]
    columns += ["final_total_rank", "target_budget", "budget_check_passed_runs", "size_rank_spearman", "flags",
                "missing_or_unfinished"]
    size_rho = {b["signal"]: b["spearman_size_rank"] for b in report["size_bias"]}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in report["signals"]:
        out = {"signal": row["signal"], "n_seeds": row["n"], "seeds": " ".join(map(str, row["seeds"])),
               "final_total_rank": " ".join(map(str, row["total_rank"])),
               "target_budget": " ".join(map(str, row["target_budget"])),
               "budget_check_passed_runs": row["budget_check_passed"],
               "size_rank_spearman": size_rho.get(row["signal"]), "flags": "; ".join(row["flags"]),
               "missing_or_unfinished": "; ".join(f"seed {p['seed']}: {p['problem']}" for p in row["problems"])}
        for key, column in secondary.items():
            out.update({f"{key}_{part}": column["signals"][row["signal"]][part] for part in ("mean", "std")})
        out.update({f"{field}_{part}": row[field][part] for field in RECOVERY_FIELDS if field in row
                    for part in ("mean", "std")})
        for key in report["metrics"]:
            entry = row[key]
            out.update({f"{key}_{part}": entry[part] for part in ("mean", "std", "ci95_low", "ci95_high")})
            diff = entry.get("vs_baseline") or {}
            out.update({f"{key}_diff_vs_baseline": diff.get("mean_diff"),
                        f"{key}_shared_seeds": " ".join(map(str, diff.get("shared_seeds", []))),
                        f"{key}_p_value": diff.get("p_value"), f"{key}_p_value_holm": diff.get("p_value_holm"),
                        f"{adapter_effect_field(key)}_mean": row["adapter_effect"][key]["mean"],
                        f"{adapter_effect_field(key)}_std": row["adapter_effect"][key]["std"],
                        f"{key}_test": diff.get("test") or diff.get("note") or ""})
            out.update(seed_plan_csv_values(report, row["signal"], key))
        writer.writerow(out)
    return buffer.getvalue()
