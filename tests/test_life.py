"""A run folder's life (run/life.py): a stop signal at any moment between taking the lock and releasing it ends in
a defined way, and a resume from wherever it stopped equals the uninterrupted run.

Every run here is in this process (one set of torch settings, so results compare bit for bit) and shares one
uninterrupted run. --save-strategy epoch as the RTE presets have it; 50 steps are one epoch of 30 steps (960 rows of
32) and 20 of the next, so the last step is not on an epoch boundary. Where a signal must come at a given moment, a
log handler sends it from the main thread when the run logs that moment, so it arrives there however loaded the
machine is. A thread watching the run's files instead read a line of rank_pattern.jsonl while it was being written;
json.loads raised in the thread, which died without sending, and the run finished unsignalled (DID NOT RAISE).
"""

import contextlib
import json
import logging
import os
import shutil
import signal
import threading
import time

import pytest

from adalora_ablation.errors import RunInterrupted
from adalora_ablation.logs import PACKAGE_LOGGER
from adalora_ablation.run.folder import MANIFEST, complete_checkpoints, read_jsonl, verify_manifest
from adalora_ablation.run.lock import LOCK_FILE
from adalora_ablation.train import train
from cli_in_process import run_cli

pytestmark = pytest.mark.slow

ARGS = ["--task", "synthetic", "--signal", "combo", "--seed", "3", "--max-steps", "50", "--tinit", "10",
        "--tfinal", "10", "--deltaT", "5", "--save-strategy", "epoch", "--eval-strategy", "epoch",
        "--logging-steps", "10", "--max-train-samples", "960", "--max-eval-samples", "128"]
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


class _SignalOnLog(logging.Handler):
    def __init__(self, condition, sig):
        super().__init__()
        self.condition, self.sig, self.sent = condition, sig, False

    def emit(self, record):
        if not self.sent and self.condition(record.getMessage()):
            self.sent = True
            os.kill(os.getpid(), self.sig)  # delivered to the main thread, which is the one logging


@contextlib.contextmanager
def signal_on_log(condition, sig=signal.SIGTERM):
    """Send ``sig`` to this process the first time the run logs a message for which ``condition(message)`` holds."""
    handler = _SignalOnLog(condition, sig)
    PACKAGE_LOGGER.addHandler(handler)
    try:
        yield handler
    finally:
        PACKAGE_LOGGER.removeHandler(handler)


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
    final_evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval_loss" in r and r["step"] == 50]
    assert len(final_evals) == 2  # the epoch-end evaluation and the final one, each once


def test_the_uninterrupted_run_reports_the_trainers_train_loss(straight):
    run_dir, summary = straight
    (end,) = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train_runtime" in r]
    assert summary["train_loss"] == end["train_loss"]
    assert [c.name for c in complete_checkpoints(run_dir)] == ["checkpoint-30", "checkpoint-50"]
    assert not (run_dir / LOCK_FILE).exists()
    for checkpoint in complete_checkpoints(run_dir):  # full-shape adapters: PEFT's save would prune them
        assert json.loads((checkpoint / "adapter_config.json").read_text())["rank_pattern"] is None


def test_a_signal_after_the_last_step_keeps_it_and_the_resume_trains_nothing(tmp_path, straight):
    run_dir = run_dir_of(tmp_path)
    # the Trainer's end-of-training record (train_runtime), logged before the final evaluation
    with signal_on_log(lambda message: message.startswith("[train] finished at step")) as sent, \
            pytest.raises(RunInterrupted) as stopped:
        train([*ARGS, "--output-root", str(tmp_path)])
    assert sent.sent and any("train_runtime" in line for line in _lines(run_dir / "metrics.jsonl"))
    assert (stopped.value.step, stopped.value.checkpoint) == (50, "checkpoint-50")
    assert not (run_dir / "final_summary.json").exists() and not (run_dir / LOCK_FILE).exists()
    verify_manifest(run_dir / "checkpoint-50")

    summary = train([*ARGS, "--output-root", str(tmp_path), "--resume", "True"])
    assert summary["resumed_from"] == "checkpoint-50"
    assert [c.name for c in complete_checkpoints(run_dir)] == ["checkpoint-30", "checkpoint-50"]  # no step 51
    assert_equals_straight(run_dir, summary, straight)
    assert metric_lines(run_dir) == metric_lines(straight[0])


@pytest.mark.oldest_transformers  # .ci/run runs it on the oldest transformers too
def test_a_signal_mid_epoch_stops_at_its_step_without_an_epoch_end_evaluation(tmp_path, straight):
    run_dir = run_dir_of(tmp_path)
    # the allocation of step 35, in the second epoch (steps 31 to 50), before its last allocation (step 40)
    with signal_on_log(lambda message: message.startswith("[AdaLoRA Update] Step 35:")) as sent, \
            pytest.raises(RunInterrupted) as stopped:
        train([*ARGS, "--output-root", str(tmp_path)])
    step = stopped.value.step
    assert sent.sent and 35 <= step < 40
    assert [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval_loss" in r and r["step"] > 30] == []
    assert [c.name for c in complete_checkpoints(run_dir)] == ["checkpoint-30", f"checkpoint-{step}"]
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == sorted(["checkpoint-30", f"checkpoint-{step}"])
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
    (run_dir / "checkpoint-50" / MANIFEST).unlink()  # as a kill while checkpoint-50 was being written leaves it
    assert [c.name for c in complete_checkpoints(run_dir)] == ["checkpoint-30"]
    summary = train([*ARGS, "--output-root", str(tmp_path), "--resume", "True"])
    assert summary["resumed_from"] == "checkpoint-30"
    assert_equals_straight(run_dir, summary, straight, approx_loss=True)
    verify_manifest(run_dir / "checkpoint-50")  # written anew


def _lines(path):
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def test_a_signal_while_the_model_and_data_load_exits_75_with_nothing_written(tmp_path, capsys):
    """The command line (in this process): SIGTERM as the data is loaded, before the model is wrapped."""
    with signal_on_log(lambda message: message.startswith("[data]")) as sent:
        result = run_cli(capsys, "train", *ARGS, "--output-root", str(tmp_path))
    assert sent.sent and result.returncode == 75, (result.stdout + result.stderr)[-2000:]
    assert "adalora-ablation: stopped by SIGTERM before training started, with nothing to keep" in result.stderr
    assert "[train]" not in result.stdout  # not a step trained
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
