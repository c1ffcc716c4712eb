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
from scipy import stats

from adalora_ablation.cli import main
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


def test_fewer_than_three_shared_seeds_give_no_p_value(root, capsys):
    result = row_of(report(capsys, root), "importance_only")["eval_accuracy"]["vs_baseline"]
    assert result["p_value"] is None and result["shared_seeds"] == [1, 2]
    row = markdown_row(report(capsys, root, fmt="markdown"), "importance_only")
    assert "no test possible: 2 shared seed(s)" in row and "p=" not in row


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


def test_requested_signal_without_runs_is_a_row_with_zero_seeds(root, capsys):
    markdown = report(capsys, root, "--signals", "baseline_adalora", "plasticity_only", fmt="markdown")
    assert markdown_row(markdown, "plasticity_only").startswith("| plasticity_only | 0 | — |")
    assert "plasticity_only / seed 1: no run folder" in markdown


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
