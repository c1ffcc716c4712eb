"""The grid: finished runs are skipped, a failing run does not stop the others, the exit code tells; signals of your
own reach every process a grid starts; a budget sweep gives one folder and one report per variant.

Each run of a local grid is a process of its own (~8 s of imports before any work), so each slow test starts only
the processes its behaviours need; the report's arithmetic per variant is checked on crafted run folders."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from cli_in_process import run_cli
from runs_crafted import Schedule, write_run

from adalora_ablation.grid.ablate import ablate_main
from adalora_ablation.run.folder import read_shared_warmup, read_summary

# Short runs: 12 steps, the budget falls from step 4 to step 8 (a re-mask every 2 steps), no checkpoint or evaluation
# but the final one.
TRAIN = ["--max-steps", "12", "--tinit", "4", "--tfinal", "4", "--deltaT", "2", "--save-strategy", "no",
         "--eval-strategy", "no", "--max-train-samples", "64", "--max-eval-samples", "32", "--adapter-effect", "False"]


def ablate(*args, env=None, command="ablate"):
    return subprocess.run([sys.executable, "-m", "adalora_ablation", command, *args], capture_output=True,
                          text=True, timeout=900, env=env)


def test_with_controls_adds_the_controls_and_a_dry_run_writes_nothing(tmp_path, capsys):
    assert ablate_main(["--task", "synthetic", "--signals", "importance_only", "--with-controls", "--seeds", "1",
                        "--output-root", str(tmp_path), "--dry-run", *TRAIN]) == 0
    out = capsys.readouterr().out
    assert out.count("would run") == 3
    for signal in ("importance_only", "uniform", "random"):
        assert f"| synthetic | {signal} | 1 | would run |" in out
    assert not (tmp_path / "synthetic").exists()


@pytest.mark.slow
def test_a_failed_run_stops_no_other_is_run_again_and_signals_of_your_own_reach_every_process(tmp_path):
    """One grid, two processes' worth of behaviours: a run that fails (its folder is a file) does not stop the
    others and the exit code tells; run again, the finished run is skipped and the failed one runs. Its two signals
    are your own: one in a module outside the package (--include), one of an installed entry point; ablate checks
    their names, and every process it starts (the shared warm-up, each run, the warm-up that seeds the run started
    later) imports them again. (The name checks of report and ablate in one process: tests/test_signals.py.)"""
    from test_signals import write_entry_point, write_signal_module

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_signal_module(plugins, "my_signals", "weight_magnitude")
    write_signal_module(plugins, "entry_signals", "entry_magnitude", cls="EntryMagnitude", decorate=False)
    write_entry_point(plugins, "entry_magnitude", "entry_signals:EntryMagnitude")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))}
    root = tmp_path / "out"
    grid = ["--task", "synthetic", "--signals", "weight_magnitude", "entry_magnitude", "--seeds", "1",
            "--output-root", str(root), "--include", "my_signals", *TRAIN]
    # A run folder that is a file cannot be written: that one run fails, the other must still run.
    (root / "synthetic" / "entry_magnitude").mkdir(parents=True)
    (root / "synthetic" / "entry_magnitude" / "1").write_text("not a folder")

    first = ablate(*grid, env=env)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "[grid warm-up] " in first.stdout
    assert "| synthetic | weight_magnitude | 1 | finished |" in first.stdout
    assert "| synthetic | entry_magnitude | 1 | failed |" in first.stdout
    assert "1 finished, 0 skipped, 1 failed" in first.stdout
    run_dir = root / "synthetic" / "weight_magnitude" / "1"
    summary = read_summary(run_dir)
    assert summary["signal"] == "weight_magnitude"
    assert summary["budget_check_passed"] and summary["total_rank"] == summary["target_budget"]
    assert read_shared_warmup(run_dir) is not None  # continued from the warm-up, which tracked its signal

    (root / "synthetic" / "entry_magnitude" / "1").unlink()
    second = ablate(*grid, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "| synthetic | weight_magnitude | 1 | skipped | already finished |" in second.stdout
    assert "1 finished, 1 skipped, 0 failed" in second.stdout
    assert read_summary(run_dir) == summary  # the finished run was not trained again
    run_dir = root / "synthetic" / "entry_magnitude" / "1"
    summary = read_summary(run_dir)
    assert summary["signal"] == "entry_magnitude"
    assert summary["budget_check_passed"] and summary["total_rank"] == summary["target_budget"]
    assert read_shared_warmup(run_dir) is not None  # seeded by the finished warm-up, which tracked its signal too
    report = second.stdout[second.stdout.index("## Report: synthetic"):]
    for signal in ("weight_magnitude", "entry_magnitude"):
        assert f"| {signal} | 1 |" in report  # the grid's report holds both runs


@pytest.mark.slow
def test_uniform_control_keeps_equal_ranks(tmp_path):
    from adalora_ablation.train import train

    train(["--task", "synthetic", "--signal", "uniform", "--seed", "2", "--output-root", str(tmp_path),
           "--max-steps", "30", "--tinit", "5", "--tfinal", "10", "--deltaT", "5", "--target-r", "3", "--init-r", "7",
           "--save-strategy", "no", "--eval-strategy", "no", "--max-train-samples", "128", "--max-eval-samples", "32",
           "--adapter-effect", "False"])
    records = [json.loads(line) for line in
               (tmp_path / "synthetic" / "uniform" / "2" / "rank_pattern.jsonl").read_text().splitlines()]
    # The budget falls from 7 to 3 per matrix: budgets that 12 matrices do not divide evenly are among them.
    assert records and any(r["budget"] % len(r["ranks"]) for r in records)
    for record in records:
        ranks = record["ranks"].values()
        assert max(ranks) - min(ranks) <= 1


@pytest.mark.slow
def test_a_budget_sweep_on_two_gpus_gives_one_folder_per_variant_and_a_report_per_variant(tmp_path, capsys):
    """A real sweep of one signal over two budgets, the runs on two GPUs (here: CUDA_VISIBLE_DEVICES on a machine
    without one) after their shared warm-up: the folders, settings and fingerprints train writes, the grid's
    report with its gap table and budget_curve.png. The per-variant report arithmetic: the crafted test below."""
    from adalora_ablation.analysis.variants import build_reports
    from adalora_ablation.errors import UsageError

    grid = ["--task", "synthetic", "--signals", "combo", "--seeds", "1", "--output-root", str(tmp_path), *TRAIN]
    result = run_cli(capsys, "ablate", *grid, "--sweep", "target_r=2,4", "--gpus", "0,1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 finished, 0 skipped, 0 failed" in result.stdout
    # --gpus: the warm-up and each run on a GPU of the list, both GPUs used; each process's output on stderr,
    # prefixed with its run's name (the runner itself gives each run its share of the threads).
    on_gpu = {line.rsplit(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("[grid] ")}
    assert on_gpu == {"0", "1"}
    assert re.search(r"^\[synthetic/combo/target_r=4/1\] \[run\] synthetic/combo/.*: accuracy", result.stderr, re.M)
    summaries = {}
    for target_r in (2, 4):
        run_dir = tmp_path / "synthetic" / "combo" / f"target_r={target_r}" / "1"
        summary = read_summary(run_dir)
        assert summary["settings"]["target_r"] == target_r and summary["variant"] == f"target_r={target_r}"
        assert summary["target_budget"] == target_r * len(summary["target_modules"])
        assert summary["total_rank"] == summary["target_budget"]
        assert read_shared_warmup(run_dir) is not None  # the budgets of a signal share one warm-up
        summaries[target_r] = summary
    assert summaries[2]["fingerprint"] != summaries[4]["fingerprint"]
    assert not (tmp_path / "synthetic" / "combo" / "1").exists()  # a swept run never lands in today's folder
    assert (tmp_path / "synthetic" / "compare" / "budget_curve.png").stat().st_size > 0
    assert "### Gap to baseline_adalora per budget (target_r sweep)" in result.stdout
    reports = build_reports(tmp_path, "synthetic")
    assert [r["variant"] for r in reports] == ["target_r=2", "target_r=4"]
    for report, target_r in zip(reports, (2, 4)):
        (row,) = report["signals"]
        assert row["signal"] == "combo" and row["target_budget"] == [summaries[target_r]["target_budget"]]
        assert row["eval_accuracy"]["mean"] == summaries[target_r]["eval_accuracy"]

    # The case: today's folder holds the budget-2 run; a grid at the default budget (4) must not take it.
    plain = tmp_path / "synthetic" / "combo" / "1"
    shutil.copytree(tmp_path / "synthetic" / "combo" / "target_r=2" / "1", plain)
    assert ablate_main([*grid, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "| synthetic | combo | 1 | other settings | target_r: 2 in the folder, 4 asked |" in dry
    assert "0 finished, 0 skipped, 0 failed, 1 other settings" in dry
    assert json.loads((plain / "final_summary.json").read_text())["settings"]["target_r"] == 2  # untouched

    # Runs with different settings in one report are an error naming them, never pooled: a baseline run beside it
    # that records the budget-4 run's settings.
    write_run(tmp_path, "synthetic", "baseline_adalora", 1, {"eval_accuracy": 0.5},
              summary={"settings": {**summaries[4]["settings"], "signal": "baseline_adalora"}})
    with pytest.raises(UsageError, match="target_r: 4 in synthetic/baseline_adalora/1, 2 in synthetic/combo/1"):
        build_reports(tmp_path, "synthetic")


def test_a_sweeps_report_pairs_each_signal_with_the_baseline_of_its_own_variant(tmp_path):
    """The report of a budget sweep: one per variant, in the sweep's order, its paired difference against the
    baseline of the same variant only (crafted runs of PEFT's schedule at each budget, three seeds each)."""
    from adalora_ablation.analysis.variants import build_reports, reports_markdown

    accuracy = {("baseline_adalora", 2): [0.70, 0.72, 0.71], ("combo", 2): [0.74, 0.73, 0.77],
                ("baseline_adalora", 4): [0.80, 0.79, 0.83], ("combo", 4): [0.78, 0.82, 0.80]}
    for (signal, target_r), values in accuracy.items():
        for seed, value in enumerate(values, start=1):
            write_run(tmp_path, "synthetic", signal, seed, {"eval_accuracy": value}, variant=f"target_r={target_r}",
                      schedule=Schedule(target_r=target_r))
    reports = build_reports(tmp_path, "synthetic")
    assert [r["variant"] for r in reports] == ["target_r=2", "target_r=4"]
    for report, target_r in zip(reports, (2, 4)):
        rows = {row["signal"]: row for row in report["signals"]}
        assert set(rows) == {"baseline_adalora", "combo"}
        assert rows["combo"]["target_budget"] == [target_r * 12]  # tiny-deberta's 12 adapted matrices
        assert rows["combo"]["eval_accuracy"]["mean"] == pytest.approx(sum(accuracy["combo", target_r]) / 3)
        gaps = [c - b for c, b in zip(accuracy["combo", target_r], accuracy["baseline_adalora", target_r])]
        diff = rows["combo"]["eval_accuracy"]["vs_baseline"]
        assert diff["mean_diff"] == pytest.approx(sum(gaps) / 3) and diff["shared_seeds"] == [1, 2, 3]
    markdown = reports_markdown(reports)
    assert "### Gap to baseline_adalora per budget (target_r sweep)" in markdown
    gap = sum(c - b for c, b in zip(accuracy["combo", 2], accuracy["baseline_adalora", 2])) / 3
    assert f"| {sum(accuracy['combo', 2]) / 3:.4f} ({gap:+.4f} over 3 seed(s)" in markdown
