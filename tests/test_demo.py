"""The offline demo end to end (.ci/run also runs the README's demo command itself, with all eight signals and its
300 steps)."""

import io
import json

import pytest
from cli_in_process import run_cli

from adalora_ablation import demo
from adalora_ablation.demo import _LinePrefixed

# The synthetic preset's schedule (tinit 50, tfinal 80) with the budget falling from step 50 to 70: half the demo's
# steps, which the keyword task still learns.
STEPS = 150


@pytest.mark.slow
def test_demo_trains_its_runs_side_by_side_offline_and_tabulates_them(tmp_path, capfd, monkeypatch):
    """Two runs at a time, each in a worker process (the default on a machine with two cores or more): every line
    a worker prints starts with its run's signal, and the table holds each run's own summary."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the workers' environment: nothing from the hub
    signals = ("baseline_adalora", "combo")  # the two ends: PEFT's own score and the combined one
    result = run_cli(capfd, "demo", "--task", "synthetic", "--output-root", str(tmp_path), "--signals", *signals,
                     "--max-steps", str(STEPS), "--jobs", "2")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = result.stdout[result.stdout.index("| signal |"):]
    for signal in signals:
        summary = json.loads((tmp_path / "synthetic" / signal / "42" / "final_summary.json").read_text())
        assert summary["synthetic"] is True and summary["budget_check_passed"] and summary["total_step"] == STEPS
        assert summary["eval_accuracy"] > 0.9  # the synthetic task is learnable: the pipeline really trains
        assert (f"| {signal} | {summary['eval_accuracy']:.4f} | {summary['adapter_effect']:+.4f} | "
                f"{summary['total_rank']} |") in table
        assert f"[{signal}] [train] finished at step {STEPS}/{STEPS}" in result.stdout  # marked with its name
    progress = result.stdout[:result.stdout.index("SYNTHETIC")]
    assert all(line.startswith(("[baseline_adalora] ", "[combo] ")) for line in progress.splitlines()
               if line and not line.startswith("=== demo"))


def test_a_workers_lines_come_out_whole_each_with_its_runs_name():
    console = io.StringIO()
    stream = _LinePrefixed(console)
    stream.prefix = "[combo] "
    stream.write("[train] step 1")  # print() writes the text and its newline apart
    assert console.getvalue() == ""  # nothing until the line is whole
    stream.write("\n")
    stream.write("two\nlines\npart")
    assert console.getvalue() == "[combo] [train] step 1\n[combo] two\n[combo] lines\n"



def test_the_default_jobs_are_the_cores_this_process_may_use(monkeypatch):
    """A Slurm job or a container may be bound to fewer cores than the machine has: count those, not the machine's."""
    if not hasattr(demo.os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    monkeypatch.setattr(demo.os, "sched_getaffinity", lambda pid: {3, 5, 7})
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 64)
    assert demo.usable_cores() == 3
