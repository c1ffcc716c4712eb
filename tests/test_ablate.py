"""The grid: finished runs are skipped, a failing run does not stop the others, the exit code tells."""

import subprocess
import sys

import pytest

from adalora_ablation.run.folder import read_summary

TRAIN = ["--max-steps", "40", "--tinit", "5", "--tfinal", "10", "--deltaT", "5", "--save-strategy", "no",
         "--eval-strategy", "no", "--max-train-samples", "256", "--max-eval-samples", "128",
         "--adapter-effect", "False"]


def ablate(*args, env=None, command="ablate"):
    return subprocess.run([sys.executable, "-m", "adalora_ablation", command, *args], capture_output=True,
                          text=True, timeout=900, env=env)


@pytest.mark.slow
def test_grid_runs_skips_and_reports_failures(tmp_path, capsys):
    from adalora_ablation.grid.ablate import ablate_main

    root = str(tmp_path)
    # A run folder that is a file cannot be written: that one run fails, the others must still run.
    (tmp_path / "synthetic" / "random").mkdir(parents=True)
    (tmp_path / "synthetic" / "random" / "1").write_text("not a folder")

    assert ablate_main(["--task", "synthetic", "--signals", "importance_only", "--with-controls", "--seeds", "1",
                        "--output-root", root, "--dry-run", *TRAIN]) == 0
    assert capsys.readouterr().out.count("would run") == 3
    assert not (tmp_path / "synthetic" / "importance_only").exists()

    first = ablate("--task", "synthetic", "--signals", "importance_only", "--with-controls", "--seeds", "1",
                   "--output-root", root, *TRAIN)
    assert first.returncode == 1
    assert "| synthetic | importance_only | 1 | finished |" in first.stdout
    assert "| synthetic | uniform | 1 | finished |" in first.stdout
    assert "| synthetic | random | 1 | failed |" in first.stdout
    assert "2 finished, 0 skipped, 1 failed" in first.stdout
    for signal in ("importance_only", "uniform"):
        summary = read_summary(tmp_path / "synthetic" / signal / "1")
        assert summary["budget_check_passed"] and summary["total_rank"] == summary["target_budget"]

    (tmp_path / "synthetic" / "random" / "1").unlink()
    second = ablate("--task", "synthetic", "--signals", "importance_only", "--with-controls", "--seeds", "1",
                    "--output-root", root, *TRAIN)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "1 finished, 2 skipped, 0 failed" in second.stdout
    assert "## Report: synthetic" in second.stdout


@pytest.mark.slow
def test_uniform_control_keeps_equal_ranks(tmp_path):
    result = ablate("--task", "synthetic", "--signals", "uniform", "--seeds", "2", "--output-root", str(tmp_path),
                    "--max-steps", "60", "--tinit", "5", "--tfinal", "10", "--deltaT", "5", "--target-r", "3",
                    "--init-r", "7", "--save-strategy", "no", "--eval-strategy", "no")
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    for line in (tmp_path / "synthetic" / "uniform" / "2" / "rank_pattern.jsonl").read_text().splitlines():
        ranks = json.loads(line)["ranks"].values()
        assert max(ranks) - min(ranks) <= 1


SWEEP_TRAIN = ["--max-steps", "30", "--tinit", "5", "--tfinal", "10", "--deltaT", "5", "--save-strategy", "no",
               "--eval-strategy", "no", "--max-train-samples", "256", "--max-eval-samples", "128",
               "--adapter-effect", "False"]


@pytest.mark.slow
def test_a_budget_sweep_gives_one_folder_per_variant_and_a_report_per_variant(tmp_path):
    import json
    import shutil

    from adalora_ablation.analysis.variants import build_reports
    from adalora_ablation.errors import UsageError

    grid = ["--task", "synthetic", "--signals", "baseline_adalora", "combo", "--seeds", "1", "--output-root",
            str(tmp_path), "--sweep", "target_r=2,4", *SWEEP_TRAIN]
    result = ablate(*grid)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 finished, 0 skipped, 0 failed" in result.stdout
    summaries = {}
    for signal in ("baseline_adalora", "combo"):
        for target_r in (2, 4):
            summary = read_summary(tmp_path / "synthetic" / signal / f"target_r={target_r}" / "1")
            assert summary["settings"]["target_r"] == target_r and summary["variant"] == f"target_r={target_r}"
            assert summary["target_budget"] == target_r * len(summary["target_modules"])
            assert summary["total_rank"] == summary["target_budget"]
            summaries[signal, target_r] = summary
    assert summaries["combo", 2]["fingerprint"] != summaries["combo", 4]["fingerprint"]
    assert not (tmp_path / "synthetic" / "combo" / "1").exists()  # a swept run never lands in today's folder
    assert (tmp_path / "synthetic" / "compare" / "budget_curve.png").stat().st_size > 0
    assert "### Gap to baseline_adalora per budget (target_r sweep)" in result.stdout

    # The report: one per variant, its paired difference against the baseline of the same variant only.
    reports = build_reports(tmp_path, "synthetic")
    assert [r["variant"] for r in reports] == ["target_r=2", "target_r=4"]
    for report, target_r in zip(reports, (2, 4)):
        rows = {row["signal"]: row for row in report["signals"]}
        assert set(rows) == {"baseline_adalora", "combo"} and rows["combo"]["target_budget"] == [
            summaries["combo", target_r]["target_budget"]]
        gap = summaries["combo", target_r]["eval_accuracy"] - summaries["baseline_adalora", target_r]["eval_accuracy"]
        assert rows["combo"]["eval_accuracy"]["vs_baseline"]["mean_diff"] == pytest.approx(gap)

    # The case: today's folder holds the budget-2 run; a grid at the default budget (4) must not take it.
    plain = tmp_path / "synthetic" / "combo" / "1"
    shutil.copytree(tmp_path / "synthetic" / "combo" / "target_r=2" / "1", plain)
    dry = ablate("--task", "synthetic", "--signals", "combo", "--seeds", "1", "--output-root", str(tmp_path),
                 "--dry-run", *SWEEP_TRAIN)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "| synthetic | combo | 1 | other settings | target_r: 2 in the folder, 4 asked |" in dry.stdout
    assert "0 finished, 0 skipped, 0 failed, 1 other settings" in dry.stdout
    assert json.loads((plain / "final_summary.json").read_text())["settings"]["target_r"] == 2  # untouched

    # Runs with different settings in one report are an error naming them, never pooled.
    shutil.copytree(tmp_path / "synthetic" / "baseline_adalora" / "target_r=4" / "1",
                    tmp_path / "synthetic" / "baseline_adalora" / "1")
    with pytest.raises(UsageError, match="target_r: 4 in synthetic/baseline_adalora/1, 2 in synthetic/combo/1"):
        build_reports(tmp_path, "synthetic")


@pytest.mark.slow
def test_signals_of_your_own_reach_every_run_and_the_shared_warmup_of_a_grid(tmp_path):
    """A signal in a module outside the package (--include) and one of an installed entry point: ablate checks
    their names, and every process it starts (the shared warm-up, each run) imports them again. (The name checks of
    report and ablate in one process: tests/test_signals.py.)"""
    import os

    from test_signals import write_entry_point, write_signal_module

    from adalora_ablation.run.folder import read_shared_warmup

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_signal_module(plugins, "my_signals", "weight_magnitude")
    write_signal_module(plugins, "entry_signals", "entry_magnitude", cls="EntryMagnitude", decorate=False)
    write_entry_point(plugins, "entry_magnitude", "entry_signals:EntryMagnitude")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))}
    root = tmp_path / "out"
    grid = ["--task", "synthetic", "--signals", "weight_magnitude", "entry_magnitude", "--seeds", "1",
            "--output-root", str(root), "--include", "my_signals", *TRAIN, "--max-steps", "20",
            "--max-train-samples", "128", "--max-eval-samples", "64"]

    result = ablate(*grid, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[grid warm-up] " in result.stdout and "2 finished, 0 skipped, 0 failed" in result.stdout
    for signal in ("weight_magnitude", "entry_magnitude"):
        run_dir = root / "synthetic" / signal / "1"
        summary = read_summary(run_dir)
        assert summary["signal"] == signal and summary["budget_check_passed"]
        assert read_shared_warmup(run_dir) is not None  # continued from the warm-up, which tracked its signal
        assert f"| {signal} | 1 |" in result.stdout  # the grid's report
