"""The report, checked against statistics computed here from the run files: crafted run folders (tests/runs_crafted.py,
written as train writes them) for the numbers, and real tiny runs (marked slow) for the plumbing."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from runs_crafted import INIT_R, MODULE_SHAPES, by_layer, craft, write_run
from scipy import optimize, stats
from test_report_stats import power_by_integration

from adalora_ablation.analysis.report import ZERO_VARIANCE
from adalora_ablation.cli import main
from adalora_ablation.data.tasks import custom_task
from adalora_ablation.run.folder import discover, run_dir_for, run_headline, write_task_spec

# In the report's signal order (baseline first, then the built-in signals' order).
SEEDS = {"baseline_adalora": (1, 2, 3), "importance_only": (1, 2), "combo": (1, 2, 3)}
# Per-seed accuracies of the synthetic runs: combo's differences to the baseline vary, so its paired test is defined.
SYNTHETIC = {"baseline_adalora": (0.70, 0.74, 0.69), "importance_only": (0.72, 0.71), "combo": (0.75, 0.76, 0.78)}


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    """Three seeds of baseline_adalora and combo, two of importance_only (too few for a paired test): finished
    synthetic runs of the default tiny schedule, their allocations drawn so that triplets are masked and revived."""
    base = tmp_path_factory.mktemp("report_runs") / "runs"
    for signal, values in SYNTHETIC.items():
        for seed, accuracy in zip(SEEDS[signal], values):
            write_run(base, "synthetic", signal, seed, {"eval_accuracy": accuracy})
    return base


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


def test_accuracy_mean_std_ci_match_the_summaries(root, capsys):
    result = report(capsys, root)
    assert [r["signal"] for r in result["signals"]] == list(SEEDS)
    for signal, seeds in SEEDS.items():
        runs = summaries(root, signal)
        assert sorted(runs) == list(seeds)
        n, mean, std, low, high = expected_stats([runs[s]["eval_accuracy"] for s in seeds])
        row = row_of(result, signal)
        entry = row["eval_accuracy"]
        assert entry["n"] == n
        assert entry["mean"] == pytest.approx(mean)
        assert entry["std"] == pytest.approx(std)
        assert (entry["ci95_low"], entry["ci95_high"]) == pytest.approx((low, high))
        assert row["total_rank"] == sorted({r["total_rank"] for r in runs.values()})
        assert row["target_budget"] == sorted({r["target_budget"] for r in runs.values()})
        assert row["budget_check_passed"] == n


def test_paired_t_test_against_the_baseline(root, capsys):
    base = summaries(root, "baseline_adalora")
    combo = summaries(root, "combo")
    seeds = sorted(set(base) & set(combo))
    diffs = [combo[s]["eval_accuracy"] - base[s]["eval_accuracy"] for s in seeds]
    assert np.ptp(diffs) > 0, "the runs must differ in accuracy for the t-test to be defined"
    expected = stats.ttest_rel([combo[s]["eval_accuracy"] for s in seeds], [base[s]["eval_accuracy"] for s in seeds])

    result = row_of(report(capsys, root), "combo")["eval_accuracy"]["vs_baseline"]
    assert result["shared_seeds"] == seeds
    assert result["mean_diff"] == pytest.approx(np.mean(diffs))
    assert result["p_value"] == pytest.approx(expected.pvalue)
    assert "ttest_rel" in result["test"]


def test_fewer_than_three_shared_seeds_give_no_p_value(root, capsys):
    result = row_of(report(capsys, root), "importance_only")["eval_accuracy"]["vs_baseline"]
    assert result["p_value"] is None and result["shared_seeds"] == [1, 2]
    assert result["note"].startswith("no test possible: 2 shared seed(s)")


def final_kept(root, signal, seed):
    last = json.loads((root / "synthetic" / signal / str(seed) / "rank_pattern.jsonl").read_text().splitlines()[-1])
    return {(m, i) for m, row in last["kept"].items() for i, k in enumerate(row) if k == 1}


def test_allocation_similarity_matches_an_independent_computation(root, capsys):
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
        jaccards = [len(final_kept(root, a, s) & final_kept(root, b, s)) / len(final_kept(root, a, s)
                                                                               | final_kept(root, b, s))
                    for s in seeds]
        assert 0 < np.mean(jaccards) < 1, "the signals' patterns must overlap in part for the check to mean anything"
        assert pair["shared_seeds"] == seeds
        assert pair["spearman"] == pytest.approx(np.nanmean(rhos))
        assert pair["jaccard"] == pytest.approx(np.mean(jaccards))


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
        assert entry["triplets"] == sum(len(row) for row in records[0]["kept"].values())
        assert entry["revived_triplets"] == len(revived) > 0  # the drawn scores move: some triplets come back
        assert entry["revival_events"] == events


def test_missing_and_unfinished_runs_are_reported(copy, capsys):
    (copy / "synthetic" / "combo" / "2" / "final_summary.json").unlink()
    (copy / "synthetic" / "baseline_adalora" / "3" / "final_summary.json").write_text("{ torn")
    args = ("--seeds", "1", "2", "3", "4")

    result = report(capsys, copy, *args)
    problems = {(p["signal"], p["seed"]): p["problem"].split(" (")[0] for p in result["missing_or_partial"]}
    assert problems == {("combo", 2): "no valid final_summary.json",
                        ("baseline_adalora", 3): "no valid final_summary.json",
                        **{(signal, 4): "no run folder" for signal in SEEDS},
                        ("importance_only", 3): "no run folder"}
    combo = row_of(result, "combo")
    assert combo["n"] == 2 and combo["seeds"] == [1, 3]
    runs = summaries(copy, "combo")
    assert combo["eval_accuracy"]["mean"] == pytest.approx(np.mean([runs[s]["eval_accuracy"] for s in (1, 3)]))
    # baseline lost seed 3 and combo seed 2: they now share seed 1 only, too few for a test.
    assert combo["eval_accuracy"]["vs_baseline"]["shared_seeds"] == [1]
    # the unfinished run's allocation log still counts for churn
    assert ("combo", 2) in {(c["signal"], c["seed"]) for c in result["churn"] if not c["finished"]}

    table = {r["signal"]: r for r in csv.DictReader(io.StringIO(report(capsys, copy, *args, fmt="csv")))}
    assert "seed 2: no valid final_summary.json" in table["combo"]["missing_or_unfinished"]
    assert "seed 4: no run folder" in table["importance_only"]["missing_or_unfinished"]


def test_requested_signal_without_runs_is_a_row_with_zero_seeds(root, capsys):
    result = report(capsys, root, "--signals", "baseline_adalora", "plasticity_only")
    assert [r["signal"] for r in result["signals"]] == ["baseline_adalora", "plasticity_only"]
    empty = row_of(result, "plasticity_only")
    assert empty["n"] == 0 and empty["eval_accuracy"]["n"] == 0 and empty["eval_accuracy"]["mean"] is None
    assert {"signal": "plasticity_only", "seed": 1} in [{k: p[k] for k in ("signal", "seed")}
                                                         for p in result["missing_or_partial"]]


def test_mnli_matched_and_mismatched_are_reported_separately(root, tmp_path, capsys):
    """The synthetic runs, copied as MNLI runs with a mismatched accuracy added to each summary."""
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


# -- one golden Markdown rendering: the tests above and below assert on the JSON report's data -------------------
GOLDEN = Path(__file__).parent / "golden" / "report_mnli.md"
GOLDEN_ACCURACIES = {"baseline_adalora": (0.70, 0.72, 0.71), "importance_only": (0.72, 0.75, None),
                     "plasticity_only": (0.69, 0.73, 0.70), "combo": (0.80, 0.79, 0.83), "random": (0.66, 0.70, 0.69)}


def craft_golden(root):
    """MNLI runs (matched and mismatched) of five signals and a requested one without runs: a missing seed, an
    unfinished run, adapter effects, the random control, a size-following signal, allocations that churn."""
    for signal, values in GOLDEN_ACCURACIES.items():
        for seed, accuracy in enumerate(values, start=1):
            if accuracy is None:
                continue
            follows_size = signal == "plasticity_only"  # FFN matrices favoured: a size-biased allocation
            write_run(root, "mnli", signal, seed, {"eval_accuracy": accuracy,
                                                   "eval_accuracy_mm": round(accuracy - 0.01 * seed, 4)},
                      summary={"adapter_effect": 0.05 + 0.005 * seed,
                               "eval_accuracy_without_adapters": accuracy - 0.05 - 0.005 * seed},
                      score_offset=(lambda m: 3.0 if "dense" in m and "attention" not in m else 0.0)
                      if follows_size else None)
    (root / "mnli" / "importance_only" / "3").mkdir()  # started, never finished
    write_run(root, "mnli", "combo", 4, {"eval_accuracy": 0.8}, finished=False)  # stopped after its allocations
    return root


def golden_markdown(tmp_path, capsys):
    root = craft_golden(tmp_path / "runs")
    text = report(capsys, root, "--seeds", "1", "2", "3", "4", "--signals", *GOLDEN_ACCURACIES, "uniform",
                  fmt="markdown", task="mnli")
    return text.replace(str(root), "<output-root>")


def test_the_markdown_report_is_the_committed_rendering(tmp_path, capsys):
    """The one test of the Markdown's wording and layout. After a deliberate change to the report's text, rewrite
    the snapshot with UPDATE_GOLDEN=1 and review its diff."""
    text = golden_markdown(tmp_path, capsys)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


# -- the plumbing: real tiny runs (tests/conftest.py's real_runs), read by the report --------------------------------
@pytest.mark.slow
def test_the_report_reads_really_trained_runs(real_runs, capsys):
    """What train writes is what the report reads: every number of the JSON report from the run files."""
    result = report(capsys, real_runs)
    assert [r["signal"] for r in result["signals"]] == ["baseline_adalora", "combo"]
    assert not result["missing_or_partial"]
    for signal in ("baseline_adalora", "combo"):
        (summary,) = summaries(real_runs, signal).values()
        row = row_of(result, signal)
        assert row["seeds"] == [42] and row["eval_accuracy"]["mean"] == pytest.approx(summary["eval_accuracy"])
        assert row["total_rank"] == [summary["total_rank"]] == [summary["target_budget"]]
        assert row["budget_check_passed"] == 1
        records = (real_runs / "synthetic" / signal / "42" / "rank_pattern.jsonl").read_text().splitlines()
        churn = next(c for c in result["churn"] if c["signal"] == signal)
        assert churn["allocations"] == len(records) == summary["allocations"]
    (pair,) = result["similarity"]
    assert pair["shared_seeds"] == [42]
    a, b = (final_kept(real_runs, s, 42) for s in ("baseline_adalora", "combo"))
    assert pair["jaccard"] == pytest.approx(len(a & b) / len(a | b))


# -- crafted run folders with chosen patterns: multiple comparisons, detectable difference, controls, size -------
TYPE_OF = {"attention.self.query": "Q", "attention.self.key": "K", "attention.self.value": "V",
           "attention.output.dense": "O", "intermediate.dense": "FFN-in", "output.dense": "FFN-out"}
# Three signals against the baseline, three seeds each: per-seed differences that vary, so every test is defined.
ACCURACIES = {"baseline_adalora": (0.70, 0.72, 0.71), "importance_only": (0.72, 0.75, 0.73),
              "plasticity_only": (0.69, 0.73, 0.70), "combo": (0.80, 0.79, 0.83)}


def by_size(name):  # the planted size-driven allocation: the FFN matrices get everything
    return INIT_R if sum(MODULE_SHAPES[name]) > 1000 else 0


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
    rows = {r["signal"]: r for r in csv.DictReader(io.StringIO(report(capsys, root, task="rte", fmt="csv")))}
    for signal, p_raw in zip(others, raw):
        diff = row_of(result, signal)["eval_accuracy"]["vs_baseline"]
        assert diff["p_value"] == pytest.approx(p_raw)
        assert diff["p_value_holm"] == pytest.approx(expected[signal])
        assert float(rows[signal]["eval_accuracy_p_value_holm"]) == pytest.approx(expected[signal])


def test_one_comparison_is_not_corrected(tmp_path, capsys):
    root = craft(tmp_path, {s: ACCURACIES[s] for s in ("baseline_adalora", "combo")})
    result = report(capsys, root, task="rte")
    assert result["multiple_comparisons"]["eval_accuracy"] == {"method": "holm", "comparisons": 1, "applied": False,
                                                               "family": ["eval_accuracy"]}
    diff = row_of(result, "combo")["eval_accuracy"]["vs_baseline"]
    assert diff["p_value"] == pytest.approx(stats.ttest_rel(ACCURACIES["combo"], ACCURACIES["baseline_adalora"]).pvalue)
    assert diff.get("p_value_holm") in (None, diff["p_value"])  # nothing to correct
    # this branch of the Markdown is not in the golden rendering
    assert "no multiple-comparison correction needed" in report(capsys, root, task="rte", fmt="markdown")


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
        assert row_of(report(capsys, root, task="rte"), "combo")["flags"] == [
            "not tested against random (zero variance)"]
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
    _, mean, std, _, _ = expected_stats(random)
    band = result["reference_band"]["random"]["eval_accuracy"]
    assert (band["n"], band["mean"], band["std"]) == (3, pytest.approx(mean), pytest.approx(std))


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


def test_adapter_effect_column_and_flag(tmp_path, capsys):
    near_zero = {s: (0.001, -0.002, 0.0005) for s in ACCURACIES}
    flat = craft(tmp_path / "flat", ACCURACIES, effects=near_zero)
    result = report(capsys, flat, task="rte")
    assert result["adapter_effect"]["carry_little"] is True and result["adapter_effect"]["n"] == 12
    _, mean, std, _, _ = expected_stats(near_zero["combo"])
    entry = row_of(result, "combo")["adapter_effect"]["eval_accuracy"]
    assert (entry["n"], entry["mean"], entry["std"]) == (3, pytest.approx(mean), pytest.approx(std))

    clear = {s: (0.05, 0.06, 0.055) for s in ACCURACIES if s != "combo"}  # combo: runs without the field
    carrying = craft(tmp_path / "clear", ACCURACIES, effects=clear)
    result = report(capsys, carrying, task="rte")
    assert result["adapter_effect"]["carry_little"] is False and result["adapter_effect"]["n"] == 9
    assert row_of(result, "combo")["adapter_effect"]["eval_accuracy"]["n"] == 0

    older = craft(tmp_path / "older", ACCURACIES)
    result = report(capsys, older, task="rte")
    assert result["adapter_effect"]["n"] == 0 and result["adapter_effect"]["mean"] is None
    assert not result["adapter_effect"]["carry_little"]
    # the branches of the Markdown that the golden rendering (adapters that carry, in every run) does not show
    assert "**the adapters carry little here" in report(capsys, flat, task="rte", fmt="markdown")
    assert "Adapter effect: not measured" in report(capsys, older, task="rte", fmt="markdown")


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
    result = report(capsys, no_shapes, task="rte")["size_bias"]
    assert all(b["runs_with_shapes"] == 0 and not b["size_biased"] for b in result)
    assert "no module shapes in the summaries" in report(capsys, no_shapes, task="rte", fmt="markdown")


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
