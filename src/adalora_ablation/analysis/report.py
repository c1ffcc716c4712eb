"""``adalora-ablation report``: one table over seeds per signal, read from the run folders' final files.

Per signal: accuracy mean, sample std and a 95% t confidence interval; the difference to baseline_adalora with a
paired t-test over shared seeds (Holm-adjusted when several signals are tested); final total rank and budget check;
the adapter effect; flags (not above the ``random`` control, allocation explained by matrix size). Per task: the
smallest difference the seeds could detect, the controls' reference band, whether the adapters carry anything, and
the size-bias diagnostic. Between signals: how similar their final allocations are. Per run: rank churn (triplets
pruned and later revived). Runs that are missing or unfinished are listed in every output format, never dropped
silently.
"""

from __future__ import annotations

import csv
import io
import json
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats

from .. import signals as registry
from ..errors import OneLineArgumentParser, UsageError
from .markdown import table
from ..module_names import module_type, ordered_types, ranks_by_layer_and_type
from .stats import (
    ALPHA,
    POWER,
    SIZE_BIAS_RHO,
    adapters_carry_little,
    budget_shares,
    holm,
    minimal_detectable_difference,
    pooled_sd,
    size_rank_spearman,
)
from ..run.folder import Run, accuracies, discover

MIN_TEST_SEEDS = 3  # a paired t-test on fewer shared seeds has too few degrees of freedom to mean anything
TEST_NAME = "paired t-test (scipy.stats.ttest_rel, two-sided)"
RANDOM_CONTROL = "random"  # the reference a signal has to beat
NOT_ABOVE_RANDOM = "not above random"
SIZE_BIASED = "allocation mostly explained by matrix size"
ADAPTERS_CARRY_LITTLE = "the adapters carry little here; differences between signals cannot show"
MODULE_SHAPES = "module_shapes"  # final_summary.json: {module name: [in_features, out_features]}
RECOVERY_FIELDS = ("planted_recall", "planted_share")  # final_summary.json of a planted run
ORACLE = "oracle"  # the planted task's upper reference


def adapter_effect_field(accuracy_field: str) -> str:
    """The summary field with (accuracy with adapters - accuracy without) for an accuracy field."""
    return accuracy_field.replace("eval_accuracy", "adapter_effect")


def accuracy_labels(task: str) -> dict[str, str]:
    """Summary field -> column label, one per eval set of the task (MNLI: matched and mismatched)."""
    return {a.field: f"{a.eval_set} acc" if a.eval_set else "accuracy" for a in accuracies(task)}


# -- finding runs ------------------------------------------------------------------------------------------------
def collect_runs(output_root: str | Path, task: str, signals: list[str] | None = None,
                 seeds: list[int] | None = None) -> list[Run]:
    """Every requested (signal, seed) run, found or not. Defaults: every signal and every seed found on disk, so a
    seed that one signal has and another lacks shows up as missing for the latter."""
    found = discover(output_root, task)
    if not found:
        raise UsageError(
            f"no runs for task {task!r} under {Path(output_root) / task}/<signal>/<seed>/; produce some with "
            f"'adalora-ablation train --task {task} --signal SIGNAL --seed N --output-root {output_root}' "
            f"(or 'adalora-ablation demo' for task synthetic), or point --output-root at your runs"
        )
    signals = signals or registry.ordered_signals({r.signal for r in found})
    seeds = seeds or sorted({r.seed for r in found})
    return [Run.at(output_root, task, signal, seed) for signal in signals for seed in seeds]


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


def paired_difference(values: dict[int, float], baseline: dict[int, float], baseline_name: str) -> dict:
    """Mean of (signal - baseline) over shared seeds, and a paired t-test when there are enough of them."""
    shared = sorted(set(values) & set(baseline))
    diffs = [values[s] - baseline[s] for s in shared]
    out = {"shared_seeds": shared, "mean_diff": float(np.mean(diffs)) if diffs else None,
           "test": None, "t": None, "p_value": None, "note": None}
    if len(shared) < MIN_TEST_SEEDS:
        out["note"] = (f"no test possible: {len(shared)} shared seed(s) with {baseline_name}, "
                       f"a paired test needs >= {MIN_TEST_SEEDS}")
    elif np.ptp(diffs) == 0:  # zero variance of the differences: the t statistic is undefined
        out["note"] = "no test possible: the difference is identical on every shared seed"
    else:
        result = stats.ttest_rel([values[s] for s in shared], [baseline[s] for s in shared])
        out.update(test=TEST_NAME, t=float(result.statistic), p_value=float(result.pvalue))
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


def adjust_for_multiple_comparisons(rows: list[dict], metrics: dict[str, str]) -> dict[str, int]:
    """Holm-adjust, per accuracy, the paired tests against the baseline across signals (adds ``p_value_holm`` to
    every comparison that has a p-value). Returns the number of tested comparisons per accuracy."""
    comparisons = {}
    for key in metrics:
        diffs = [row[key]["vs_baseline"] for row in rows if "p_value" in row[key].get("vs_baseline", {})]
        for diff, adjusted in zip(diffs, holm([d["p_value"] for d in diffs])):
            diff["p_value_holm"] = adjusted
        comparisons[key] = sum(d["p_value"] is not None for d in diffs)
    return comparisons


def detectable_difference(runs_by_signal: dict[str, list[Run]], baseline: str, key: str) -> dict:
    """The smallest true difference to the baseline a paired test would likely detect with the seeds at hand: sd of
    the per-seed differences pooled over signals (those with >= 2 shared seeds), n = their fewest shared seeds,
    alpha / (number of those comparisons)."""
    base = _seed_values(runs_by_signal.get(baseline, []), key)
    sds, shared_counts = [], []
    for signal, runs in runs_by_signal.items():
        if signal == baseline:
            continue
        values = _seed_values(runs, key)
        shared = sorted(set(values) & set(base))
        if len(shared) >= 2:
            sds.append(float(np.std([values[s] - base[s] for s in shared], ddof=1)))
            shared_counts.append(len(shared))
    n = min(shared_counts) if shared_counts else 0
    sd = pooled_sd(sds)
    return {"n_seeds": n, "comparisons": len(sds), "sd_of_differences": sd, "alpha": ALPHA, "power": POWER,
            "mde": minimal_detectable_difference(sd, n, len(sds)) if sd is not None else None}


def reference_band(runs_by_signal: dict[str, list[Run]], rows: list[dict], metrics: dict[str, str],
                   controls: list[str]) -> dict[str, dict]:
    """The controls' accuracies; flags (in place) every non-control signal whose mean accuracy over the seeds it
    shares with ``random`` is not above random's mean on those seeds."""
    band = {c: {key: describe(list(_seed_values(runs_by_signal[c], key).values())) for key in metrics}
            for c in controls if c in runs_by_signal and _seed_values(runs_by_signal[c], next(iter(metrics)))}
    if RANDOM_CONTROL not in band:
        return band
    for row in rows:
        if row["signal"] in controls:
            continue
        for key, label in metrics.items():
            random = _seed_values(runs_by_signal[RANDOM_CONTROL], key)
            values = _seed_values(runs_by_signal[row["signal"]], key)
            shared = sorted(set(random) & set(values))
            if shared and np.mean([values[s] for s in shared]) <= np.mean([random[s] for s in shared]):
                row["flags"].append(NOT_ABOVE_RANDOM if len(metrics) == 1 else f"{NOT_ABOVE_RANDOM} ({label})")
    return band


def adapter_check(runs: list[Run], rows: list[dict], key: str) -> dict:
    """Whether the adapters carry enough for signal differences to show: every finished run's adapter effect
    against the seed-to-seed spread of accuracy (sample std over seeds, pooled over signals)."""
    field = adapter_effect_field(key)
    values = [float(r.summary[field]) for r in runs if r.problem is None and r.summary.get(field) is not None]
    spread = pooled_sd([row[key]["std"] for row in rows])
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
    return {"signal": signal, "runs": len(valid), "runs_with_shapes": sum(bool(r.summary.get(MODULE_SHAPES))
                                                                        for r in valid),
            "spearman_size_rank": rho, "size_biased": rho is not None and rho >= SIZE_BIAS_RHO,
            "budget_share": budget_shares({t: per_type.get(t, 0) for t in types}),
            "uniform_share": {t: sum(module_type(m) == t for m in modules) / len(modules) for t in types}}


# -- the report ------------------------------------------------------------------------------------------------
def build_report(output_root: str | Path, task: str, signals: list[str] | None = None,
                 seeds: list[int] | None = None) -> dict:
    runs = collect_runs(output_root, task, signals, seeds)
    runs_by_signal: dict[str, list[Run]] = {}
    for run in runs:
        runs_by_signal.setdefault(run.signal, []).append(run)
    metrics = accuracy_labels(task)
    baseline = registry.signal_names("baseline")[0]
    baseline_runs = runs_by_signal.get(baseline, [])
    valid = [r for r in runs if r.problem is None]
    rows = [signal_row(s, rs, baseline, baseline_runs, metrics) for s, rs in runs_by_signal.items()]
    comparisons = adjust_for_multiple_comparisons(rows, metrics)
    controls = registry.signal_names("control")
    band = reference_band(runs_by_signal, rows, metrics, controls)
    sizes = [b for b in (size_bias(s, rs) for s, rs in runs_by_signal.items()) if b is not None]
    for bias in sizes:
        if bias["size_biased"]:
            next(r for r in rows if r["signal"] == bias["signal"])["flags"].append(SIZE_BIASED)
    return {
        "task": task,
        "output_root": str(output_root),
        "synthetic": any(r.summary.get("synthetic") for r in valid),
        "metrics": metrics,
        "test": TEST_NAME,
        "baseline": baseline,
        "signals": rows,
        "multiple_comparisons": {key: {"method": "holm", "comparisons": m, "applied": m > 1}
                                 for key, m in comparisons.items()},
        "detectable_difference": {key: detectable_difference(runs_by_signal, baseline, key) for key in metrics},
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
    header += ["adapter effect mean ± std"]
    recovery = [f for f in RECOVERY_FIELDS if any(f in row for row in report["signals"])]
    header += [f"{field.replace('_', ' ')} mean ± std" for field in recovery]
    header += ["final total rank (budget)", "budget check", "flags"]
    first = next(iter(metrics))
    holm_applied = {key: report["multiple_comparisons"][key]["applied"] for key in metrics}
    rows = []
    for row in report["signals"]:
        n = row["n"]
        cells = [row["signal"], n] + [_accuracy_cell(row[k]) for k in metrics]
        cells += [_difference_cell(row[k], baseline, holm_applied[k]) for k in metrics]
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
              "shared seeds.", multiple_comparisons_note(report), ""]
    if recovery:
        lines += [f"Planted task: planted recall = Σ min(final rank, planted rank) / Σ planted rank over the planted "
                  f"modules (1.0: every planted module holds its planted rank); planted share = the final rank held "
                  f"by planted modules / total final rank. {ORACLE} keeps the planted ranks by construction: the "
                  f"upper reference.", ""]
    lines += detectable_difference_lines(report) + reference_band_lines(report) + adapter_effect_lines(report)
    lines += size_bias_markdown(report)
    lines += similarity_markdown(report["similarity"]) + churn_markdown(report["churn"])
    lines += ["### Missing or unfinished runs", ""]
    lines += [f"- {p['signal']} / seed {p['seed']}: {p['problem']} ({p['path']})" for p in problems] or [
        "None: every requested run has a valid final_summary.json."]
    return "\n".join(lines)


def multiple_comparisons_note(report: dict) -> str:
    notes = []
    for key, label in report["metrics"].items():
        m = report["multiple_comparisons"][key]["comparisons"]
        if m > 1:
            notes.append(f"{label}: Holm correction applied over {m} comparisons against {report['baseline']} "
                         "(the signals with a p-value)")
        else:
            notes.append(f"{label}: {m} comparison with a p-value, no multiple-comparison correction needed")
    return "Multiple comparisons: " + "; ".join(notes) + "."


def detectable_difference_lines(report: dict) -> list[str]:
    parts = []
    for key, label in report["metrics"].items():
        d = report["detectable_difference"][key]
        if d["mde"] is None:
            parts.append(f"{label}: not computable (needs >= 2 shared seeds)")
        else:
            parts.append(f"With {d['n_seeds']} seeds, a difference smaller than {d['mde']:.4f} ({label}) would likely "
                         f"go undetected (paired t-test, α={d['alpha']}/{d['comparisons']}, power {d['power']}; sd of "
                         f"per-seed differences {d['sd_of_differences']:.4f}, pooled over signals)")
    return ["**Smallest detectable difference:** " + "; ".join(parts)
            + ". 'No difference' does not mean 'no effect'.", ""]


def reference_band_lines(report: dict) -> list[str]:
    band = report["reference_band"]
    if not band:
        return [f"Reference band: no finished control runs ({', '.join(report['controls'])}).", ""]
    parts = [f"{control} {label} {_mean_std_cell(entry[key], sign='')} ({entry[key]['n']} seed(s))"
             for control, entry in band.items() for key, label in report["metrics"].items()]
    note = (f" Signals whose mean accuracy on the seeds shared with {RANDOM_CONTROL} is not above it are flagged "
            f"'{NOT_ABOVE_RANDOM}'." if RANDOM_CONTROL in band else f" No {RANDOM_CONTROL} runs: nothing flagged.")
    return ["Reference band (controls): " + "; ".join(parts) + "." + note, ""]


def adapter_effect_lines(report: dict) -> list[str]:
    a = report["adapter_effect"]
    if not a["n"]:
        return [f"Adapter effect: not measured (no {a['field']} in the summaries).", ""]
    numbers = (f"mean {_mean_std_cell(a)} over {a['n']} run(s) (accuracy with adapters minus without); "
               f"seed-to-seed spread of accuracy {_f(a['seed_spread'])} (sample std, pooled over signals)")
    if a["carry_little"]:
        return [f"**{ADAPTERS_CARRY_LITTLE}**: {numbers}.", ""]
    return [f"Adapter effect: {numbers}; clearly above zero and above the spread.", ""]


def size_bias_markdown(report: dict) -> list[str]:
    lines = ["### Size bias (triplet size = in + out + 1 vs final rank; final budget share per matrix type)", ""]
    biases = report["size_bias"]
    if not biases:
        return lines + ["No finished runs.", ""]
    types = list(dict.fromkeys(t for b in biases for t in b["budget_share"]))
    header = ["signal", "seeds", "Spearman ρ(size, final rank)"] + [f"{t} share (uniform)" for t in types]
    rows = []
    for b in biases:
        rho = ("no module shapes in the summaries" if not b["runs_with_shapes"]
               else _f(b["spearman_size_rank"], ".3f", "n/a (constant sizes or ranks)"))
        rows.append([b["signal"], b["runs"], rho] + [
            f"{b['budget_share'][t]:.3f} ({b['uniform_share'][t]:.3f})" if t in b["budget_share"] else "—"
            for t in types])
    lines += [table(header, rows), ""]
    flagged = [f"{b['signal']} (ρ={b['spearman_size_rank']:.3f})" for b in biases if b["size_biased"]]
    if flagged:
        lines += [f"**{SIZE_BIASED}** (ρ >= {SIZE_BIAS_RHO}): {', '.join(flagged)}.", ""]
    if not any(b["runs_with_shapes"] for b in biases):
        lines += ["Size-rank correlation: no module shapes in the summaries (runs older than module_shapes).", ""]
    return lines


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
        writer.writerow(out)
    return buffer.getvalue()


FORMATTERS = {"markdown": to_markdown, "csv": to_csv, "json": lambda report: json.dumps(report, indent=2)}


def report_main(argv: list[str]) -> int:
    parser = OneLineArgumentParser(prog="adalora-ablation report",
                                   description="Accuracy, rank and allocation statistics over seeds, per signal.")
    parser.add_argument("--task", required=True, help="task folder under the output root (mnli, rte, synthetic)")
    names = registry.signal_names()
    parser.add_argument("--signals", nargs="+", choices=names, metavar="SIGNAL",
                        help=f"some of {', '.join(names)} (default: every signal folder found)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="seeds to report (default: every seed folder found)")
    parser.add_argument("--format", choices=list(FORMATTERS), default="markdown",
                        help="markdown (default): all tables; csv: the per-signal table; json: everything")
    parser.add_argument("--output-root", "--output_root", default="outputs",
                        help="runs are read from <output-root>/<task>/<signal>/<seed>/ (default outputs)")
    args = parser.parse_args(argv)
    report = build_report(args.output_root, args.task, args.signals, args.seeds)
    print(FORMATTERS[args.format](report))
    return 0
