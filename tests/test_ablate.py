"""The grid: finished runs are skipped, a failing run does not stop the others, the exit code tells."""

import subprocess
import sys

import pytest

from adalora_ablation.run.folder import read_summary

TRAIN = ["--max-steps", "40", "--tinit", "5", "--tfinal", "10", "--deltaT", "5", "--save-strategy", "no",
         "--eval-strategy", "no"]


def ablate(*args):
    return subprocess.run([sys.executable, "-m", "adalora_ablation", "ablate", *args], capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_grid_runs_skips_and_reports_failures(tmp_path):
    root = str(tmp_path)
    # A run folder that is a file cannot be written: that one run fails, the others must still run.
    (tmp_path / "synthetic" / "random").mkdir(parents=True)
    (tmp_path / "synthetic" / "random" / "1").write_text("not a folder")

    dry = ablate("--task", "synthetic", "--signals", "importance_only", "--with-controls", "--seeds", "1",
                 "--output-root", root, "--dry-run", *TRAIN)
    assert dry.returncode == 0 and dry.stdout.count("would run") == 3
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
