"""One writer per run folder: the lock file, its owner and heartbeat, takeover of dead owners."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from adalora_ablation.run.folder import latest_complete_checkpoint
from adalora_ablation.run.lock import LOCK_FILE, STALE_S, LockHeld, RunLock, held_elsewhere, read_owner

HOLDER = """
import sys, time
from adalora_ablation.run.lock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def write_lock(run_dir, host, pid, age=0.0):
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    path.write_text(json.dumps({"host": host, "pid": pid, "started": time.time() - age, "token": "t"}))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def finished_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_a_second_process_cannot_take_a_live_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"in use by process {holder.pid} on "):
            RunLock(tmp_path, log=lambda *a: None).acquire()
        assert held_elsewhere(tmp_path).pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # killed without releasing: same host, PID gone -> taken over, with a message naming the old owner
    messages = []
    with RunLock(tmp_path, log=messages.append) as lock:
        assert read_owner(tmp_path / LOCK_FILE)[0] == lock.owner
        assert messages == [f"[run] taking over the lock of {tmp_path}: process {holder.pid} on "
                            f"{lock.owner.host} (since {messages[0].split('(since ')[1]}"]
        assert "is no longer running" in messages[0]
    assert not (tmp_path / LOCK_FILE).exists()  # released


def test_a_lock_of_another_host_is_live_until_its_heartbeat_goes_stale(tmp_path):
    write_lock(tmp_path, "other-node", 12345, age=10)
    with pytest.raises(LockHeld, match="process 12345 on other-node"):
        RunLock(tmp_path).acquire()
    write_lock(tmp_path, "other-node", 12345, age=STALE_S + 5)
    assert held_elsewhere(tmp_path) is None
    messages = []
    with RunLock(tmp_path, log=messages.append):
        assert "has not renewed its heartbeat" in messages[0]


@pytest.mark.slow
def test_a_dead_local_owner_is_taken_over_and_release_leaves_a_foreign_lock_alone(tmp_path):
    write_lock(tmp_path, os.uname().nodename, finished_pid())
    lock = RunLock(tmp_path, log=lambda *a: None).acquire()
    write_lock(tmp_path, "other-node", 1)  # someone replaced our lock (e.g. took it over after a long hang)
    lock.release()
    assert read_owner(tmp_path / LOCK_FILE)[0].host == "other-node"


def test_heartbeat_renews_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr("adalora_ablation.run.lock.HEARTBEAT_S", 0.05)
    with RunLock(tmp_path):
        path = tmp_path / LOCK_FILE
        os.utime(path, (time.time() - 100, time.time() - 100))
        time.sleep(0.3)
        assert read_owner(path)[1] < 5


# Long enough to outlive the checks below on any machine; the test stops it with SIGTERM (a checkpoint, exit 75).
TRAIN = ["--task", "synthetic", "--signal", "combo", "--seed", "5", "--max-steps", "100000", "--tinit", "10",
         "--tfinal", "10", "--deltaT", "5", "--eval-strategy", "no", "--save-strategy", "no"]


@pytest.mark.slow
def test_a_second_train_on_the_same_folder_stops_and_the_first_writes_consistent_logs(tmp_path):
    def cli(*args):
        return [sys.executable, "-m", "adalora_ablation", *args, "--output-root", str(tmp_path)]

    run_dir = tmp_path / "synthetic" / "combo" / "5"
    first = subprocess.Popen(cli("train", *TRAIN), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (run_dir / LOCK_FILE).exists():
            assert first.poll() is None and time.time() < deadline, "the first run never took its lock"
            time.sleep(0.05)
        for extra in ([], ["--overwrite", "True"]):
            second = subprocess.run(cli("train", *TRAIN, *extra), capture_output=True, text=True, timeout=300)
            assert second.returncode == 2, second.stderr[-2000:]
            errors = [line for line in second.stderr.splitlines() if line.startswith("adalora-ablation: error:")]
            assert len(errors) == 1 and f"{run_dir} is in use by process {first.pid} on " in errors[0]
            assert first.poll() is None, "the second process disturbed the first"
        grid = subprocess.run(cli("ablate", "--task", "synthetic", "--signals", "combo", "--seeds", "5", "--dry-run"),
                              capture_output=True, text=True, timeout=120)
        assert f"| synthetic | combo | 5 | running elsewhere | process {first.pid} on " in grid.stdout
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 75, out[-2000:]  # checkpointed at the step the signal came in, and stopped
    steps = [json.loads(line)["step"] for line in (run_dir / "rank_pattern.jsonl").read_text().splitlines()]
    assert steps and steps == sorted(set(steps))  # one writer: every allocation once, in order
    checkpoint = latest_complete_checkpoint(run_dir)
    state = torch.load(checkpoint / "adalora_allocator.pt", weights_only=True)
    assert state["allocations"] == len(steps)  # the run's own count agrees with its log
    assert not (run_dir / LOCK_FILE).exists()  # released at the end
