"""A run folder's life (run/life.py): a stop signal at any moment between taking the lock and releasing it ends in
a defined way, and a resume from wherever it stopped equals the uninterrupted run.

Every run here is in this process (one set of torch settings, so results compare bit for bit) and shares one
uninterrupted run. --save-strategy epoch as the RTE presets have it; 100 steps are one epoch of 63 steps and 37 of
the next, so the last step is not on an epoch boundary.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from adalora_ablation.errors import RunInterrupted
from adalora_ablation.run.folder import MANIFEST, complete_checkpoints, read_jsonl, verify_manifest
from adalora_ablation.run.lock import LOCK_FILE
from adalora_ablation.train import train

pytestmark = pytest.mark.slow

ARGS = ["--task", "synthetic", "--signal", "combo", "--seed", "3", "--max-steps", "100", "--tinit", "10",
        "--tfinal", "20", "--deltaT", "5", "--save-strategy", "epoch", "--eval-strategy", "epoch",
        "--logging-steps", "10"]
TIMING = ("_runtime", "_per_second", "_preparation_time")  # fields that differ between any two runs


def run_dir_of(root):
    return root / "synthetic" / "combo" / "3"


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.endswith(TIMING)}


def metric_lines(run_dir) -> list[dict]:
    return [without_timing(r) for r in read_jsonl(run_dir / "metrics.jsonl") if "train_runtime" not in r]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    summary = train([*ARGS, "--output-root", str(root)])
    return run_dir_of(root), summary


def signal_when(condition, sig=signal.SIGTERM) -> threading.Thread:
    """Send ``sig`` to this process as soon as ``condition()`` holds (checked every 2 ms, for at most 15 min: a
    loaded machine takes minutes to reach the step)."""
    def watch():
        deadline = time.time() + 900
        while time.time() < deadline:
            if condition():
                os.kill(os.getpid(), sig)
                return
            time.sleep(0.002)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def assert_equals_straight(run_dir, summary, straight, approx_loss=False):
    straight_dir, expected = straight
    for name in ("rank_pattern.jsonl", "signal_scores.jsonl"):
        assert (run_dir / name).read_text() == (straight_dir / name).read_text(), name
    for field in ("eval_accuracy", "final_ranks", "allocations", "total_rank", "eval_accuracy_without_adapters"):
        assert summary[field] == expected[field], field
    assert without_timing(summary["eval_metrics"]) == without_timing(expected["eval_metrics"])
    # the whole run's mean loss; after a resume at a step between two log lines the float sums group differently
    assert summary["train_loss"] == (pytest.approx(expected["train_loss"], rel=1e-6) if approx_loss
                                     else expected["train_loss"])
    final_evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval_loss" in r and r["step"] == 100]
    assert len(final_evals) == 2  # the epoch-end evaluation and the final one, each once


def test_the_uninterrupted_run_reports_the_trainers_train_loss(straight):
    run_dir, summary = straight
    (end,) = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train_runtime" in r]
    assert summary["train_loss"] == end["train_loss"]
    assert [c.name for c in complete_checkpoints(run_dir)] == ["checkpoint-63", "checkpoint-100"]
    assert not (run_dir / LOCK_FILE).exists()
    for checkpoint in complete_checkpoints(run_dir):  # full-shape adapters: PEFT's save would prune them
        assert json.loads((checkpoint / "adapter_config.json").read_text())["rank_pattern"] is None


def test_a_signal_after_the_last_step_keeps_it_and_the_resume_trains_nothing(tmp_path, straight):
    run_dir = run_dir_of(tmp_path)
    signal_when(lambda: any("train_runtime" in line for line in _lines(run_dir / "metrics.jsonl")))
    with pytest.raises(RunInterrupted) as stopped:  # during the final evaluation
        train([*ARGS, "--output-root", str(tmp_path)])
    assert (stopped.value.step, stopped.value.checkpoint) == (100, "checkpoint-100")
    assert not (run_dir / "final_summary.json").exists() and not (run_dir / LOCK_FILE).exists()
    verify_manifest(run_dir / "checkpoint-100")

    summary = train([*ARGS, "--output-root", str(tmp_path), "--resume", "True"])
    assert summary["resumed_from"] == "checkpoint-100"
    assert [c.name for c in complete_checkpoints(run_dir)] == ["checkpoint-63", "checkpoint-100"]  # no step 101
    assert_equals_straight(run_dir, summary, straight)
    assert metric_lines(run_dir) == metric_lines(straight[0])


@pytest.mark.resume_check  # .ci/run runs it on the oldest transformers too
def test_a_signal_mid_epoch_stops_at_its_step_without_an_epoch_end_evaluation(tmp_path, straight):
    run_dir = run_dir_of(tmp_path)
    signal_when(lambda: any(json.loads(line)["step"] >= 70 for line in _lines(run_dir / "rank_pattern.jsonl")))
    with pytest.raises(RunInterrupted) as stopped:
        train([*ARGS, "--output-root", str(tmp_path)])
    step = stopped.value.step
    assert 70 < step < 100
    assert [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval_loss" in r and r["step"] > 63] == []
    assert [c.name for c in complete_checkpoints(run_dir)] == ["checkpoint-63", f"checkpoint-{step}"]
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == sorted(["checkpoint-63", f"checkpoint-{step}"])
    assert not (run_dir / LOCK_FILE).exists()

    summary = train([*ARGS, "--output-root", str(tmp_path), "--resume", "True"])
    assert summary["resumed_from"] == f"checkpoint-{step}"
    assert_equals_straight(run_dir, summary, straight, approx_loss=True)


def test_a_signal_right_after_the_lock_is_taken_ends_the_run_cleanly_and_releases_it(tmp_path):
    run_dir = run_dir_of(tmp_path)
    signal_when(lambda: (run_dir / LOCK_FILE).exists())
    with pytest.raises(RunInterrupted) as stopped:
        train([*ARGS, "--output-root", str(tmp_path)])
    assert not (run_dir / LOCK_FILE).exists()
    if stopped.value.checkpoint is None:  # before training: nothing kept
        assert str(stopped.value).startswith("stopped by SIGTERM before training started")
        assert not complete_checkpoints(run_dir)
    else:  # it had started: the step it was in is kept whole
        assert (run_dir / stopped.value.checkpoint / MANIFEST).is_file()


def test_a_checkpoint_being_written_is_invisible_until_verified_and_a_cut_off_one_is_cleared(tmp_path, straight):
    shutil.copytree(straight[0], run_dir_of(tmp_path))
    run_dir = run_dir_of(tmp_path)
    (run_dir / "final_summary.json").unlink()
    (run_dir / "checkpoint-100" / MANIFEST).unlink()  # as a kill while checkpoint-100 was being written leaves it
    assert [c.name for c in complete_checkpoints(run_dir)] == ["checkpoint-63"]
    summary = train([*ARGS, "--output-root", str(tmp_path), "--resume", "True"])
    assert summary["resumed_from"] == "checkpoint-63"
    assert_equals_straight(run_dir, summary, straight, approx_loss=True)
    verify_manifest(run_dir / "checkpoint-100")  # written anew


def _lines(path):
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def test_a_signal_while_the_model_and_data_load_exits_75_with_nothing_written(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "adalora_ablation", "train", *ARGS, "--output-root", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in proc.stdout:
            if "[data]" in line:  # the data is loaded; the model is being wrapped
                proc.send_signal(signal.SIGTERM)
                break
        out = proc.communicate(timeout=300)[0]
    finally:
        proc.kill()
    assert proc.returncode == 75, out[-2000:]
    assert "adalora-ablation: stopped by SIGTERM before training started, with nothing to keep" in out
    run_dir = run_dir_of(tmp_path)
    assert not (run_dir / LOCK_FILE).exists()
    assert not run_dir.exists() or not complete_checkpoints(run_dir)


def test_save_total_limit_never_leaves_the_run_without_a_verified_checkpoint(tmp_path):
    """Older checkpoints go only after the new one is complete: watched every millisecond, the run always has one."""
    run_dir = run_dir_of(tmp_path)
    seen, empty = [], []

    def watch(stop):
        while not stop.is_set():
            names = [c.name for c in complete_checkpoints(run_dir)] if run_dir.exists() else []
            if seen and not names and not complete_checkpoints(run_dir):  # twice: a listing can race a rename
                empty.append(time.time())
            if names:
                seen.append(names[-1])
            time.sleep(0.001)

    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop,), daemon=True)
    watcher.start()
    try:
        train([*ARGS, "--output-root", str(tmp_path), "--max-steps", "40", "--tfinal", "10", "--save-strategy",
               "steps", "--save-steps", "5", "--save-total-limit", "1", "--eval-strategy", "no"])
    finally:
        stop.set()
        watcher.join()
    assert [c.name for c in complete_checkpoints(run_dir)] == ["checkpoint-40"]
    assert len(set(seen)) >= 6 and not empty  # it watched the rotations, and none left the run without one
