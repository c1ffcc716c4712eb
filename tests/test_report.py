"""The report on really trained tiny runs, checked against statistics computed here from the raw files."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from test_report_stats import power_by_integration

from adalora_ablation.analysis.report import ZERO_VARIANCE
from adalora_ablation.cli import main
from adalora_ablation.data.tasks import custom_task
from adalora_ablation.run.folder import (
    append_jsonl, discover, run_dir_for, run_headline, write_summary, write_task_spec,
)
from adalora_ablation.train import train

# In the report's signal order (baseline first, then the built-in signals' order).
SEEDS = {"baseline_adalora": (1, 2, 3), "importance_only": (1, 2), "combo": (1, 2, 3)}
TINY_RUN = ["--task", "synthetic", "--max_steps", "80", "--tinit", "10", "--tfinal", "20", "--deltaT", "5",
            "--eval_steps", "40", "--logging_steps", "20", "--max_train_samples", "640", "--max_eval_samples", "128",
            "--learning_rate", "2e-3", "--warmup_steps", "0"]


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    """Three seeds of baseline_adalora and combo, two of importance_only (too few for a paired test)."""
    base = tmp_path_factory.mktemp("report_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and does not fight other processes for cores
    try:
        for signal, seeds in SEEDS.items():
            for seed in seeds:
                train([*TINY_RUN, "--signal", signal, "--seed", str(seed), "--output_root", str(base / "runs"),
                       "--cache_dir", str(base / "cache")])
    finally:
        torch.set_num_threads(threads)
    return base / "runs"


@pytest.fixture
def copy(root, tmp_path):
    """A private copy of the runs, for tests that damage them."""
    shutil.copytree(root, tmp_path / "runs")
    return tmp_path / "runs"


def report(capsys, output_root, *args, fmt="json", task="synthetic"):
    assert main(["report", "--task", task, "--output-root", str(output_root), "--format", fmt, *args]) == 0
    out = capsys.readouterr().out
    return json.loads(out) if fmt == "json" else out


def summaries(output_root, signal, task="synthetic"):
    found = {}
    for path in sorted((output_root / task / signal).glob("*/final_summary.json")):
        try:
            found[int(path.parent.name)] = json.loads(path.read_text())
        except ValueError:
            continue
    return found


def expected_stats(values):
    values = np.asarray(values, dtype=float)
    n, mean, std = len(values), values.mean(), values.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)
    return n, mean, std, mean - half, mean + half


def row_of(result, signal):
    return next(r for r in result["signals"] if r["signal"] == signal)


def markdown_row(text, signal):
    return next(line for line in text.splitlines() if line.startswith(f"| {signal} |"))


@pytest.mark.slow
def test_accuracy_mean_std_ci_match_the_summaries(root, capsys):
    result = report(capsys, root)
    markdown = report(capsys, root, fmt="markdown")
    assert [r["signal"] for r in result["signals"]] == list(SEEDS)
    for signal, seeds in SEEDS.items():
        runs = summaries(root, signal)
        assert sorted(runs) == list(seeds)
        n, mean, std, low, high = expected_stats([runs[s]["eval_accuracy"] for s in seeds])
        entry = row_of(result, signal)["eval_accuracy"]
        assert entry["n"] == n
        assert entry["mean"] == pytest.approx(mean)
        assert entry["std"] == pytest.approx(std)
        assert (entry["ci95_low"], entry["ci95_high"]) == pytest.approx((low, high))
        assert f"{mean:.4f} ± {std:.4f} [{low:.4f}, {high:.4f}]" in markdown_row(markdown, signal)
        assert f"| {sorted({r['total_rank'] for r in runs.values()})[0]} (" in markdown_row(markdown, signal)
        assert f"pass {n}/{n}" in markdown_row(markdown, signal)


@pytest.mark.slow
def test_paired_t_test_against_the_baseline(root, capsys):
    base = summaries(root, "baseline_adalora")
    combo = summaries(root, "combo")
    seeds = sorted(set(base) & set(combo))
    diffs = [combo[s]["eval_accuracy"] - base[s]["eval_accuracy"] for s in seeds]
    assert np.ptp(diffs) > 0, "the tiny runs must differ in accuracy for the t-test to be defined"
    expected = stats.ttest_rel([combo[s]["eval_accuracy"] for s in seeds], [base[s]["eval_accuracy"] for s in seeds])

    result = row_of(report(capsys, root), "combo")["eval_accuracy"]["vs_baseline"]
    assert result["shared_seeds"] == seeds
    assert result["mean_diff"] == pytest.approx(np.mean(diffs))
    assert result["p_value"] == pytest.approx(expected.pvalue)
    assert "ttest_rel" in result["test"]
    row = markdown_row(report(capsys, root, fmt="markdown"), "combo")
    assert f"{np.mean(diffs):+.4f} over 3 seed(s); paired t-test p={expected.pvalue:.3g}" in row


@pytest.mark.slow
def test_fewer_than_three_shared_seeds_give_no_p_value(root, capsys):
    result = row_of(report(capsys, root), "importance_only")["eval_accuracy"]["vs_baseline"]
    assert result["p_value"] is None and result["shared_seeds"] == [1, 2]
    row = markdown_row(report(capsys, root, fmt="markdown"), "importance_only")
    assert "no test possible: 2 shared seed(s)" in row and "p=" not in row


@pytest.mark.slow
def test_allocation_similarity_matches_an_independent_computation(root, capsys):
    def final_kept(signal, seed):
        last = json.loads((root / "synthetic" / signal / str(seed) / "rank_pattern.jsonl").read_text().splitlines()[-1])
        return {(m, i) for m, row in last["kept"].items() for i, k in enumerate(row) if k == 1}

    result = report(capsys, root)["similarity"]
    assert [p["signals"] for p in result] == [["baseline_adalora", "importance_only"], ["baseline_adalora", "combo"],
                                              ["importance_only", "combo"]]
    for pair in result:
        a, b = pair["signals"]
        seeds = sorted(set(SEEDS[a]) & set(SEEDS[b]))
        ranks_a, ranks_b = summaries(root, a), summaries(root, b)
        rhos = []
        for s in seeds:
            modules = sorted(ranks_a[s]["final_ranks"])
            rhos.append(stats.spearmanr([ranks_a[s]["final_ranks"][m] for m in modules],
                                        [ranks_b[s]["final_ranks"][m] for m in modules]).statistic)
        jaccards = [len(final_kept(a, s) & final_kept(b, s)) / len(final_kept(a, s) | final_kept(b, s)) for s in seeds]
        assert pair["shared_seeds"] == seeds
        assert pair["spearman"] == pytest.approx(np.nanmean(rhos))
        assert pair["jaccard"] == pytest.approx(np.mean(jaccards))


@pytest.mark.slow
def test_rank_churn_counts_revived_triplets(root, capsys):
    churn = {(c["signal"], c["seed"]): c for c in report(capsys, root)["churn"]}
    assert set(churn) == {(signal, seed) for signal, seeds in SEEDS.items() for seed in seeds}
    for (signal, seed), entry in churn.items():
        lines = (root / "synthetic" / signal / str(seed) / "rank_pattern.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        revived, events = set(), 0
        for module, row in records[0]["kept"].items():
            for i in range(len(row)):
                history = [r["kept"][module][i] for r in records]
                if any(history[t] == 0 and 1 in history[t + 1:] for t in range(len(history))):
                    revived.add((module, i))
                events += sum(before == 0 and after == 1 for before, after in zip(history, history[1:]))
        assert entry["allocations"] == len(records)
        assert entry["revived_triplets"] == len(revived)
        assert entry["revival_events"] == events
    markdown = report(capsys, root, fmt="markdown")
    c = churn[("combo", 1)]
    assert f"| combo | 1 | {c['allocations']} | {c['revived_triplets']} / {c['triplets']} |" in markdown


@pytest.mark.slow
def test_missing_and_unfinished_runs_are_reported(copy, capsys):
    (copy / "synthetic" / "combo" / "2" / "final_summary.json").unlink()
    (copy / "synthetic" / "baseline_adalora" / "3" / "final_summary.json").write_text("{ torn")
    args = ("--seeds", "1", "2", "3", "4")

    markdown = report(capsys, copy, *args, fmt="markdown")
    assert "**6 requested run(s) missing or unfinished" in markdown
    problems = markdown.split("### Missing or unfinished runs")[1]
    assert "combo / seed 2: no valid final_summary.json" in problems
    assert "baseline_adalora / seed 3: no valid final_summary.json" in problems
    for signal in SEEDS:
        assert f"{signal} / seed 4: no run folder" in problems
    assert "importance_only / seed 3: no run folder" in problems
    assert "| combo | 2 (unfinished run) |" in markdown  # its allocation log still counts for churn

    result = report(capsys, copy, *args)
    assert len(result["missing_or_partial"]) == 2 + 3 + 1
    combo = row_of(result, "combo")
    assert combo["n"] == 2 and combo["seeds"] == [1, 3]
    runs = summaries(copy, "combo")
    assert combo["eval_accuracy"]["mean"] == pytest.approx(np.mean([runs[s]["eval_accuracy"] for s in (1, 3)]))
    # baseline lost seed 3 and combo seed 2: they now share seed 1 only, too few for a test.
    assert combo["eval_accuracy"]["vs_baseline"]["shared_seeds"] == [1]

    table = {r["signal"]: r for r in csv.DictReader(io.StringIO(report(capsys, copy, *args, fmt="csv")))}
    assert "seed 2: no valid final_summary.json" in table["combo"]["missing_or_unfinished"]
    assert "seed 4: no run folder" in table["importance_only"]["missing_or_unfinished"]


@pytest.mark.slow
def test_requested_signal_without_runs_is_a_row_with_zero_seeds(root, capsys):
    markdown = report(capsys, root, "--signals", "baseline_adalora", "plasticity_only", fmt="markdown")
    assert markdown_row(markdown, "plasticity_only").startswith("| plasticity_only | 0 | — |")
    assert "plasticity_only / seed 1: no run folder" in markdown


@pytest.mark.slow
def test_mnli_matched_and_mismatched_are_reported_separately(root, tmp_path, capsys):
    """MNLI needs GLUE data, so this reuses the trained runs with a mismatched accuracy added to each summary."""
    mnli = tmp_path / "runs" / "mnli"
    shutil.copytree(root / "synthetic", mnli)
    mismatched = {}
    for path in mnli.glob("*/*/final_summary.json"):
        summary = json.loads(path.read_text())
        summary["eval_accuracy_mm"] = mismatched[path.parent.parent.name, path.parent.name] = (
            summary["eval_accuracy"] - 0.01 * int(path.parent.name))
        path.write_text(json.dumps(summary))
    result = report(capsys, tmp_path / "runs", task="mnli")
    assert result["metrics"] == {"eval_accuracy": "matched acc", "eval_accuracy_mm": "mismatched acc"}
    _, mean, std, low, high = expected_stats([mismatched["combo", str(s)] for s in SEEDS["combo"]])
    entry = row_of(result, "combo")["eval_accuracy_mm"]
    assert (entry["mean"], entry["std"], entry["ci95_low"], entry["ci95_high"]) == pytest.approx((mean, std, low, high))
    header = report(capsys, tmp_path / "runs", task="mnli", fmt="markdown").split("\n| signal |")[1].splitlines()[0]
    assert "matched acc mean ± std [95% CI]" in header and "mismatched acc mean ± std [95% CI]" in header


@pytest.mark.slow
def test_csv_from_the_module_entry_point(root):
    command = [sys.executable, "-m", "adalora_ablation", "report", "--task", "synthetic", "--output-root", str(root),
               "--format", "csv"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["signal"] for r in rows] == list(SEEDS)
    base = summaries(root, "baseline_adalora")
    assert float(rows[0]["eval_accuracy_mean"]) == pytest.approx(np.mean([s["eval_accuracy"] for s in base.values()]))
    assert rows[1]["eval_accuracy_p_value"] == "" and "no test possible" in rows[1]["eval_accuracy_test"]


@pytest.mark.slow
@pytest.mark.parametrize("argv, expected", [
    (["--task", "mnli"], "no runs for task 'mnli' under"),
    (["--task", "synthetic", "--format", "xml"], "invalid choice"),
    (["--task", "synthetic", "--seeds", "one"], "invalid int value"),
    (["--signals", "combo"], "required: --task"),
])
def test_report_errors_are_one_line_exit_2(root, capsys, argv, expected):
    assert main(["report", *argv, "--output-root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err
    if "no runs" in expected:
        assert str(root / "mnli") in err and "adalora-ablation train --task mnli" in err


# -- crafted run folders (no training): multiple comparisons, detectable difference, controls, adapters, size ----
LAYERS = 2
MODULE_SHAPES = {}  # MiniLM's per-layer matrices: attention 384x384, FFN 384x1536 and 1536x384
for _layer in range(LAYERS):
    for _suffix, _shape in (("attention.self.query", (384, 384)), ("attention.self.key", (384, 384)),
                            ("attention.self.value", (384, 384)), ("attention.output.dense", (384, 384)),
                            ("intermediate.dense", (384, 1536)), ("output.dense", (1536, 384))):
        MODULE_SHAPES[f"layer.{_layer}.{_suffix}"] = _shape
TYPE_OF = {"attention.self.query": "Q", "attention.self.key": "K", "attention.self.value": "V",
           "attention.output.dense": "O", "intermediate.dense": "FFN-in", "output.dense": "FFN-out"}
INIT_R = 12
# Three signals against the baseline, three seeds each: per-seed differences that vary, so every test is defined.
ACCURACIES = {"baseline_adalora": (0.70, 0.72, 0.71), "importance_only": (0.72, 0.75, 0.73),
              "plasticity_only": (0.69, 0.73, 0.70), "combo": (0.80, 0.79, 0.83)}


def by_layer(name):  # unrelated to size: every layer holds every matrix type
    return 2 + 4 * int(name.split(".")[1])


def by_size(name):  # the planted size-driven allocation: the FFN matrices get everything
    return INIT_R if sum(MODULE_SHAPES[name]) > 1000 else 0


def craft(root, accuracies, task="rte", effects=None, allocate=None, shapes=True, mismatched=None, variant="",
          metric="eval_accuracy"):
    """Run folders as train writes them: final_summary.json and one rank_pattern.jsonl record per run; seed i + 1
    holds the i-th value, and a None value is a seed without a run. ``effects``: signal -> per-seed adapter effects
    (absent: an older run without the field); ``mismatched``: signal -> per-seed MNLI mismatched accuracies;
    ``variant``: a sweep's variant folder; ``metric``: the summary field of the main metric."""
    effects, allocate, mismatched = effects or {}, allocate or {}, mismatched or {}
    for signal, values in accuracies.items():
        for seed, accuracy in enumerate(values, start=1):
            if accuracy is None:
                continue
            run_dir = run_dir_for(root, task, signal, seed, variant)
            run_dir.mkdir(parents=True)
            ranks = {m: allocate.get(signal, by_layer)(m) for m in MODULE_SHAPES}
            summary = {metric: accuracy, "total_rank": sum(ranks.values()),
                       "target_budget": sum(ranks.values()), "budget_check_passed": True, "final_ranks": ranks}
            if signal in mismatched:
                summary["eval_accuracy_mm"] = mismatched[signal][seed - 1]
            if shapes:
                summary["module_shapes"] = {m: list(s) for m, s in MODULE_SHAPES.items()}
            if signal in effects:
                summary["adapter_effect"] = effects[signal][seed - 1]
                summary["eval_accuracy_without_adapters"] = accuracy - effects[signal][seed - 1]
            write_summary(run_dir, summary)
            append_jsonl(run_dir / "rank_pattern.jsonl", {
                "step": 10, "budget": sum(ranks.values()), "total_rank": sum(ranks.values()), "ranks": ranks,
                "kept": {m: [int(i < r) for i in range(INIT_R)] for m, r in ranks.items()}})
    return root


def independent_holm(p_values):
    order = np.argsort(p_values)
    m, adjusted, running = len(p_values), [0.0] * len(p_values), 0.0
    for step, i in enumerate(order):
        running = max(running, min(1.0, (m - step) * p_values[i]))
        adjusted[i] = running
    return adjusted


def test_holm_adjusts_the_paired_tests_over_the_signals(tmp_path, capsys):
    root = craft(tmp_path, ACCURACIES)
    base = ACCURACIES["baseline_adalora"]
    others = [s for s in ACCURACIES if s != "baseline_adalora"]
    raw = [stats.ttest_rel(ACCURACIES[s], base).pvalue for s in others]
    expected = dict(zip(others, independent_holm(raw)))
    assert sorted(expected.values()) != sorted(raw), "the correction must change something to be tested"

    result = report(capsys, root, task="rte")
    assert result["multiple_comparisons"]["eval_accuracy"] == {"method": "holm", "comparisons": 3, "applied": True,
                                                               "family": ["eval_accuracy"]}
    markdown = report(capsys, root, task="rte", fmt="markdown")
    rows = {r["signal"]: r for r in csv.DictReader(io.StringIO(report(capsys, root, task="rte", fmt="csv")))}
    for signal, p_raw in zip(others, raw):
        diff = row_of(result, signal)["eval_accuracy"]["vs_baseline"]
        assert diff["p_value"] == pytest.approx(p_raw)
        assert diff["p_value_holm"] == pytest.approx(expected[signal])
        assert float(rows[signal]["eval_accuracy_p_value_holm"]) == pytest.approx(expected[signal])
        assert f"p={p_raw:.3g} (Holm-adjusted p={expected[signal]:.3g})" in markdown_row(markdown, signal)
    assert "Holm correction applied over 3 comparisons" in markdown


def test_one_comparison_is_not_corrected(tmp_path, capsys):
    root = craft(tmp_path, {s: ACCURACIES[s] for s in ("baseline_adalora", "combo")})
    markdown = report(capsys, root, task="rte", fmt="markdown")
    assert "Holm-adjusted" not in markdown and "no multiple-comparison correction needed" in markdown


def exact_mde(sd, n, comparisons):
    """The difference at which the paired t-test has power 0.8, solved on the power integrated over the chi-square
    (test_report_stats.power_by_integration), not on the noncentral t the report uses."""
    return optimize.brentq(lambda d: power_by_integration(d, sd, n, 0.05 / comparisons) - 0.8, sd, 20 * sd,
                           xtol=1e-12)


def test_smallest_detectable_difference_over_the_tests_actually_run(tmp_path, capsys):
    # importance_only shares 4 seeds with the baseline, plasticity_only 3 (tested), combo 2 (no test).
    accuracies = {"baseline_adalora": (0.70, 0.72, 0.71, 0.69), "importance_only": (0.72, 0.75, 0.73, 0.70),
                  "plasticity_only": (0.69, 0.73, 0.70, None), "combo": (0.80, 0.79, None, None)}
    root = craft(tmp_path / "runs", accuracies)
    base = np.array(accuracies["baseline_adalora"])
    diffs = {"importance_only": np.array(accuracies["importance_only"]) - base,
             "plasticity_only": np.array(accuracies["plasticity_only"][:3]) - base[:3]}
    squares = sum(float(np.sum((d - d.mean()) ** 2)) for d in diffs.values())  # pooled by degrees of freedom
    sd = np.sqrt(squares / sum(len(d) - 1 for d in diffs.values()))

    result = report(capsys, root, task="rte")
    entry = result["detectable_difference"]["eval_accuracy"]
    assert result["multiple_comparisons"]["eval_accuracy"]["comparisons"] == 2
    assert entry["tested"] == 2 and entry["comparisons"] == 2
    assert entry["sd_of_differences"] == pytest.approx(sd)
    assert [(b["n_seeds"], b["signals"]) for b in entry["by_seeds"]] == [(3, ["plasticity_only"]),
                                                                         (4, ["importance_only"])]
    expected = {n: exact_mde(sd, n, 2) for n in (3, 4)}
    for b in entry["by_seeds"]:
        assert b["mde"] == pytest.approx(expected[b["n_seeds"]], rel=1e-6)
    assert (entry["n_seeds"], entry["mde"]) == (3, entry["by_seeds"][0]["mde"])
    markdown = report(capsys, root, task="rte", fmt="markdown")
    line = next(line for line in markdown.splitlines() if line.startswith("**Smallest detectable difference"))
    assert f"With 3 seeds, a difference smaller than {expected[3]:.4f} (accuracy) would likely" in line
    assert "α=0.05/2" in line and f"with 4 seeds (importance_only): {expected[4]:.4f}" in line
    assert "'No difference' does not mean 'no effect'" in markdown

    # A signal without a test (combo, 2 seeds) changes nothing: neither n nor the number of comparisons.
    without_combo = craft(tmp_path / "without", {s: v for s, v in accuracies.items() if s != "combo"})
    assert report(capsys, without_combo, task="rte")["detectable_difference"] == result["detectable_difference"]


@pytest.mark.parametrize("case", ["two seeds", "constant shifts"])
def test_no_detectable_difference_without_a_test(tmp_path, capsys, case):
    base = (0.70, 0.72, 0.71)
    if case == "two seeds":  # every cell says "no test possible": so does the line
        accuracies = {s: v[:2] for s, v in ACCURACIES.items()}
    else:  # differences with sd 0 on every signal: nothing to scale a detectable difference by
        accuracies = {"baseline_adalora": base, "importance_only": tuple(b + 0.02 for b in base),
                      "combo": tuple(b - 0.01 for b in base)}
    root = craft(tmp_path, accuracies)
    entry = report(capsys, root, task="rte")["detectable_difference"]["eval_accuracy"]
    assert entry["mde"] is None and entry["by_seeds"] == [] and entry["tested"] == 0
    markdown = report(capsys, root, task="rte", fmt="markdown")
    assert "accuracy: not computable (no paired test ran" in markdown
    assert "would likely go undetected" not in markdown


def test_a_constant_shift_has_one_label_whatever_the_rounding(tmp_path, capsys):
    rows = 277  # every seed: exactly 3 more of the 277 evaluation rows right than the baseline
    exact, rounded = (10, 20, 30), (100, 150, 200)
    assert np.ptp([(k + 3) / rows - k / rows for k in exact]) == 0
    assert np.ptp([(k + 3) / rows - k / rows for k in rounded]) > 0, "float rounding must split this one by an ulp"
    for ks in (exact, rounded):
        root = craft(tmp_path / str(ks[0]), {"baseline_adalora": tuple(k / rows for k in ks),
                                             "combo": tuple((k + 3) / rows for k in ks),
                                             "random": tuple((k + 1) / rows for k in ks)})
        diff = row_of(report(capsys, root, task="rte"), "combo")["eval_accuracy"]["vs_baseline"]
        assert diff["note"] == ZERO_VARIANCE and diff["p_value"] is None and diff["mean_diff"] == pytest.approx(3 / 277)
        markdown = report(capsys, root, task="rte", fmt="markdown")
        assert f"+0.0108 over 3 seed(s); {ZERO_VARIANCE}" in markdown_row(markdown, "combo")
        assert "not tested against random (zero variance)" in markdown_row(markdown, "combo")
        table = {r["signal"]: r for r in csv.DictReader(io.StringIO(report(capsys, root, task="rte", fmt="csv")))}
        assert table["combo"]["eval_accuracy_test"] == ZERO_VARIANCE and table["combo"]["eval_accuracy_p_value"] == ""


def strict_json(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def write_literal(run_dir, field, literal):
    """Set a summary field to a literal that another writer's json.dumps leaves for a non-finite float (NaN)."""
    path = run_dir / "final_summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: "<x>"}).replace('"<x>"', literal))


@pytest.mark.parametrize("variant", ["", "target_r=2"])
def test_the_json_report_is_strict_in_and_outside_a_sweep(tmp_path, capsys, variant):
    """Non-finite numbers that reach the report (a finished run's planted recall and share, and in a budget sweep
    its trainable-parameter count, as another writer left them) are null: the output is JSON, on both paths."""
    root = craft(tmp_path, ACCURACIES, variant=variant)
    write_literal(run_dir_for(root, "rte", "combo", 1, variant), "planted_recall", "NaN")
    write_literal(run_dir_for(root, "rte", "combo", 2, variant), "planted_share", "-Infinity")
    write_literal(run_dir_for(root, "rte", "baseline_adalora", 1, variant), "trainable_parameters", "Infinity")

    assert main(["report", "--task", "rte", "--output-root", str(root), "--format", "json"]) == 0
    result = strict_json(capsys.readouterr().out)
    report_ = result["variants"][0] if variant else result
    assert report_["variant"] == variant and not report_["missing_or_partial"]  # the runs are finished
    combo = row_of(report_, "combo")
    assert combo["planted_recall"]["n"] == combo["planted_share"]["n"] == 1
    assert combo["planted_recall"]["mean"] is None and combo["planted_share"]["mean"] is None
    if variant:
        baseline = next(p for p in result["budget"] if p["signal"] == "baseline_adalora")
        assert baseline["value"] == "2" and baseline["trainable_parameters"] is None


@pytest.mark.parametrize("variant", ["", "target_r=2"])
def test_a_custom_task_is_read_by_its_own_metric_in_and_outside_a_sweep(tmp_path, capsys, variant):
    """A custom task scored by F1 (its metrics in task.json in the task folder): its runs are finished and a NaN F1
    is not, whether a run sits in <task>/<signal>/<seed> or in a sweep's <task>/<signal>/<variant>/<seed>."""
    task = custom_task("reviews_train.csv", ("text",), "label", ("negative", "positive"), ("f1", "accuracy"), {})
    (tmp_path / task.name).mkdir()
    write_task_spec(tmp_path, task)
    root = craft(tmp_path, {"baseline_adalora": (0.70, 0.72, 0.71), "combo": (0.80, 0.79, 0.83)}, task=task.name,
                 variant=variant, metric="eval_f1")
    write_literal(run_dir_for(root, task.name, "combo", 3, variant), "eval_f1", "NaN")

    runs = {(r.signal, r.seed): r for r in discover(root, task.name)}
    assert runs["combo", 3].problem == "unfinished: metric is NaN (eval_f1 is nan in final_summary.json)"
    assert [r.problem for key, r in runs.items() if key != ("combo", 3)] == [None] * 5
    assert runs["combo", 1].task_dir == root / task.name
    assert run_headline(runs["combo", 1].run_dir, runs["combo", 1].summary) == "F1 0.8000"
    assert main(["report", "--task", task.name, "--output-root", str(root), "--format", "json"]) == 0
    result = strict_json(capsys.readouterr().out)
    report_ = result["variants"][0] if variant else result
    assert report_["metrics"] == {"eval_f1": "F1"}
    assert row_of(report_, "combo")["eval_f1"]["n"] == 2 and row_of(report_, "baseline_adalora")["eval_f1"]["n"] == 3
    assert [(p["signal"], p["seed"]) for p in report_["missing_or_partial"]] == [("combo", 3)]


def test_a_nan_metric_makes_the_run_unfinished(tmp_path, capsys):
    root = craft(tmp_path, ACCURACIES, effects={s: (0.05, 0.06, 0.055) for s in ACCURACIES})
    for signal, seed, field, value in (("combo", 2, "eval_accuracy", "NaN"),
                                       ("importance_only", 1, "adapter_effect", "Infinity")):
        path = root / "rte" / signal / str(seed) / "final_summary.json"
        path.write_text(path.read_text().replace(f'"{field}": {json.loads(path.read_text())[field]}',
                                                 f'"{field}": {value}'))
        assert value in path.read_text()  # a literal, as another writer's json.dumps leaves it

    assert main(["report", "--task", "rte", "--output-root", str(root), "--format", "json"]) == 0
    result = strict_json(capsys.readouterr().out)
    problems = {(p["signal"], p["seed"]): p["problem"] for p in result["missing_or_partial"]}
    assert problems[("combo", 2)].startswith("unfinished: metric is NaN (eval_accuracy")
    assert problems[("importance_only", 1)].startswith("unfinished: metric is infinite (adapter_effect")
    combo = row_of(result, "combo")["eval_accuracy"]
    assert combo["n"] == 2 and combo["mean"] == pytest.approx(np.mean([0.80, 0.83]))
    # Only finished runs are tested; the Holm-adjusted p-values are those of the tests that could run.
    base = ACCURACIES["baseline_adalora"]
    raw = {"importance_only": None,  # seeds 2, 3 only: too few for a test
           "plasticity_only": stats.ttest_rel(ACCURACIES["plasticity_only"], base).pvalue,
           "combo": None}
    assert row_of(result, "plasticity_only")["eval_accuracy"]["vs_baseline"]["p_value_holm"] == pytest.approx(
        raw["plasticity_only"])
    assert result["multiple_comparisons"]["eval_accuracy"]["comparisons"] == 1
    markdown = report(capsys, root, task="rte", fmt="markdown")
    assert "- combo / seed 2: unfinished: metric is NaN" in markdown and "nan" not in markdown_row(markdown, "combo")


def test_signals_not_above_random_by_a_one_sided_paired_test(tmp_path, capsys):
    random = (0.70, 0.72, 0.74)
    shifted = lambda deltas: tuple(r + d for r, d in zip(random, deltas))  # noqa: E731
    accuracies = {
        "baseline_adalora": shifted((0.05, 0.07, 0.06)),
        "importance_only": shifted((0.03, -0.03, -0.00009)),  # mean 0.71997: below random's 0.72 ...
        "plasticity_only": shifted((0.03, -0.03, 0.00009)),  # ... 0.72003: above it; neither is shown above it
        "combo": shifted((0.08, 0.09, 0.10)),
        "sensitivity_only": shifted((0.05, 0.06, 0.07))[:2],  # two seeds: no test
        "random": random, "uniform": (0.71, 0.71, 0.72)}
    root = craft(tmp_path, accuracies)
    tested = ["baseline_adalora", "importance_only", "plasticity_only", "combo"]
    raw = [stats.ttest_rel(accuracies[s], random, alternative="greater").pvalue for s in tested]
    adjusted = dict(zip(tested, independent_holm(raw)))
    assert np.mean(accuracies["importance_only"]) < np.mean(random) < np.mean(accuracies["plasticity_only"])

    result = report(capsys, root, task="rte")
    for signal in tested:
        vs_random = row_of(result, signal)["eval_accuracy"]["vs_random"]
        assert vs_random["p_value_holm"] == pytest.approx(adjusted[signal])
        assert ("not above random" in row_of(result, signal)["flags"]) == (adjusted[signal] >= 0.05), signal
    assert row_of(result, "importance_only")["flags"] == row_of(result, "plasticity_only")["flags"] == [
        "not above random"]
    assert row_of(result, "combo")["flags"] == [] and row_of(result, "baseline_adalora")["flags"] == []
    assert row_of(result, "sensitivity_only")["flags"] == ["not tested against random (2 shared seed(s))"]
    assert row_of(result, "random")["flags"] == [] and row_of(result, "uniform")["flags"] == []
    markdown = report(capsys, root, task="rte", fmt="markdown")
    assert markdown_row(markdown, "plasticity_only").endswith("| not above random |")
    _, mean, std, _, _ = expected_stats(random)
    assert f"random accuracy {mean:.4f} ± {std:.4f} (3 seed(s))" in markdown
    assert "one-sided: signal > random), Holm-adjusted over these tests" in markdown


def test_mnli_matched_and_mismatched_are_one_holm_family(tmp_path, capsys):
    mismatched = {s: tuple(v - 0.01 * (i + 1) * (k + 1) for i, v in enumerate(values))
                  for k, (s, values) in enumerate(ACCURACIES.items())}
    root = craft(tmp_path, ACCURACIES, task="mnli", mismatched=mismatched)
    others = [s for s in ACCURACIES if s != "baseline_adalora"]
    raw = [stats.ttest_rel(source[s], source["baseline_adalora"]).pvalue
           for source in (ACCURACIES, mismatched) for s in others]
    expected = independent_holm(raw)
    result = report(capsys, root, task="mnli")
    got = [row_of(result, s)[key]["vs_baseline"]["p_value_holm"] for key in ("eval_accuracy", "eval_accuracy_mm")
           for s in others]
    assert got == pytest.approx(expected)
    assert result["multiple_comparisons"]["eval_accuracy_mm"] == {
        "method": "holm", "comparisons": 6, "applied": True, "family": ["eval_accuracy", "eval_accuracy_mm"]}
    assert result["detectable_difference"]["eval_accuracy_mm"]["comparisons"] == 6
    markdown = report(capsys, root, task="mnli", fmt="markdown")
    assert ("Multiple comparisons: matched acc and mismatched acc as one family: Holm correction applied over 6 "
            "comparisons") in markdown and "α=0.05/6" in markdown


def test_adapter_effect_column_and_flag(tmp_path, capsys):
    near_zero = {s: (0.001, -0.002, 0.0005) for s in ACCURACIES}
    flat = craft(tmp_path / "flat", ACCURACIES, effects=near_zero)
    markdown = report(capsys, flat, task="rte", fmt="markdown")
    assert "**the adapters carry little here; differences between signals cannot show**" in markdown
    _, mean, std, _, _ = expected_stats(near_zero["combo"])
    assert f"| {mean:+.4f} ± {std:.4f} |" in markdown_row(markdown, "combo")

    clear = {s: (0.05, 0.06, 0.055) for s in ACCURACIES if s != "combo"}  # combo: runs without the field
    carrying = craft(tmp_path / "clear", ACCURACIES, effects=clear)
    result = report(capsys, carrying, task="rte")
    assert result["adapter_effect"]["carry_little"] is False and result["adapter_effect"]["n"] == 9
    assert row_of(result, "combo")["adapter_effect"]["eval_accuracy"]["n"] == 0
    markdown = report(capsys, carrying, task="rte", fmt="markdown")
    assert "carry little" not in markdown and "clearly above zero" in markdown
    assert "| — | 48 (48) |" in markdown_row(markdown, "combo")

    older = craft(tmp_path / "older", ACCURACIES)
    assert "Adapter effect: not measured (no adapter_effect in the summaries)" in report(
        capsys, older, task="rte", fmt="markdown")


def test_size_bias_recovers_a_planted_size_driven_allocation(tmp_path, capsys):
    root = craft(tmp_path, ACCURACIES, allocate={"plasticity_only": by_size})
    result = {b["signal"]: b for b in report(capsys, root, task="rte")["size_bias"]}
    sizes = [MODULE_SHAPES[m][0] + MODULE_SHAPES[m][1] + 1 for m in MODULE_SHAPES] * 3
    for signal, allocate in (("plasticity_only", by_size), ("combo", by_layer)):
        ranks = [allocate(m) for m in MODULE_SHAPES] * 3
        rho = stats.spearmanr(sizes, ranks).statistic
        assert result[signal]["spearman_size_rank"] == pytest.approx(rho)
        per_type = {t: sum(allocate(m) for m in MODULE_SHAPES if TYPE_OF[m.split(".", 2)[2]] == t)
                    for t in TYPE_OF.values()}
        total = sum(per_type.values())
        assert result[signal]["budget_share"] == pytest.approx({t: r / total for t, r in per_type.items()})
        assert result[signal]["uniform_share"] == pytest.approx(dict.fromkeys(TYPE_OF.values(), 1 / 6))
    assert result["plasticity_only"]["size_biased"] and not result["combo"]["size_biased"]
    assert result["plasticity_only"]["budget_share"]["FFN-in"] == pytest.approx(0.5)

    markdown = report(capsys, root, task="rte", fmt="markdown")
    flag = next(line for line in markdown.splitlines() if line.startswith("**allocation follows matrix size"))
    assert "plasticity_only (ρ=1.000, +1.00 of the attainable; the largest matrices, FFN-in, FFN-out, hold 1.000 " \
           "of the final budget, 0.333 under uniform)" in flag and "combo" not in flag
    assert markdown_row(markdown, "plasticity_only").endswith("| allocation follows matrix size |")
    assert "| plasticity_only | 3 | 1.000 | +1.00 | 0.000 (0.167) |" in markdown

    no_shapes = craft(tmp_path / "old", ACCURACIES, allocate={"plasticity_only": by_size}, shapes=False)
    markdown = report(capsys, no_shapes, task="rte", fmt="markdown")
    assert "no module shapes in the summaries" in markdown and "matrix size**" not in markdown


def against_size(name):  # every attention matrix above every FFN matrix, ranks varying with the layer
    layer = int(name.split(".")[1])
    return 6 + 4 * layer if sum(MODULE_SHAPES[name]) < 1000 else layer


def along_size(name):  # the mirror image: every FFN matrix above every attention matrix
    return INIT_R - against_size(name)


def test_size_bias_is_flagged_in_either_direction_against_the_attainable_rho(tmp_path, capsys):
    root = craft(tmp_path, ACCURACIES, allocate={"plasticity_only": along_size, "combo": against_size})
    result = {b["signal"]: b for b in report(capsys, root, task="rte")["size_bias"]}
    sizes = [MODULE_SHAPES[m][0] + MODULE_SHAPES[m][1] + 1 for m in MODULE_SHAPES] * 3
    for signal, allocate, direction in (("plasticity_only", along_size, "allocation follows matrix size"),
                                        ("combo", against_size, "allocation goes against matrix size")):
        ranks = [allocate(m) for m in MODULE_SHAPES] * 3
        rho = stats.spearmanr(sizes, ranks).statistic
        assert 0.7 < abs(rho) < 0.9, "two sizes: even a fully size-ordered allocation stays well below |rho| = 1"
        # The most extreme rho these ranks allow: sorted along (or against) the sizes.
        order = np.argsort(sizes, kind="stable")
        arranged = np.empty(len(ranks))
        arranged[order] = sorted(ranks, reverse=bool(rho < 0))
        bound = abs(stats.spearmanr(sizes, arranged).statistic)
        entry = result[signal]
        assert entry["spearman_size_rank"] == pytest.approx(rho)
        assert entry["size_alignment"] == pytest.approx(rho / bound) and abs(rho / bound) == pytest.approx(1.0)
        assert entry["size_biased"] and entry["direction"] == direction
    assert not result["importance_only"]["size_biased"] and result["importance_only"]["direction"] is None
    markdown = report(capsys, root, task="rte", fmt="markdown")
    assert markdown_row(markdown, "combo").endswith("| allocation goes against matrix size |")
    opposed = next(line for line in markdown.splitlines() if line.startswith("**allocation goes against"))
    share = result["combo"]["budget_share"]["FFN-in"] + result["combo"]["budget_share"]["FFN-out"]
    assert f"combo (ρ={result['combo']['spearman_size_rank']:.3f}, -1.00 of the attainable; the largest matrices, " \
           f"FFN-in, FFN-out, hold {share:.3f} of the final budget, 0.333 under uniform)" in opposed
