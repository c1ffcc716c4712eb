"""The offline demo end to end (.ci/run also runs the README's demo command itself, with all four signals and its
300 steps)."""

import json
import os
import subprocess
import sys

import pytest

# The synthetic preset's schedule (tinit 50, tfinal 80) with the budget falling from step 50 to 70: half the demo's
# steps, which the keyword task still learns.
STEPS = 150


@pytest.mark.slow
def test_demo_runs_offline_and_tabulates_its_signals(tmp_path):
    signals = ("baseline_adalora", "combo")  # the two ends: PEFT's own score and the combined one
    result = subprocess.run([sys.executable, "-m", "adalora_ablation", "demo", "--task", "synthetic",
                             "--output-root", str(tmp_path), "--signals", *signals, "--max-steps", str(STEPS)],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout[result.stdout.index("| signal |"):]
    for signal in signals:
        summary = json.loads((tmp_path / "synthetic" / signal / "42" / "final_summary.json").read_text())
        assert summary["synthetic"] is True and summary["budget_check_passed"] and summary["total_step"] == STEPS
        assert summary["eval_accuracy"] > 0.9  # the synthetic task is learnable: the pipeline really trains
        assert (f"| {signal} | {summary['eval_accuracy']:.4f} | {summary['adapter_effect']:+.4f} | "
                f"{summary['total_rank']} |") in table
    assert "SYNTHETIC" in result.stdout
