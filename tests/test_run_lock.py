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
from adalora_ablation.run import lock as run_lock
from adalora_ablation.run.lock import (
    LOCK_FILE, STALE_S, LockHeld, LockOwner, RunLock, held_elsewhere, read_owner,
)
from cli_in_process import run_cli

HOLDER = """
import sys, time
from adalora_ablation.run.lock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def write_lock(run_dir, host, pid, age=0.0, **identity):
    """A lock as another process would have written it; by default on this kernel, in this PID namespace."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    me = LockOwner.of_this_process()
    boot_id = me.boot_id if host == me.host else f"the kernel of {host}"
    record = {"host": host, "pid": pid, "started": time.time() - age, "token": "t", "boot_id": boot_id,
              "pid_ns": me.pid_ns, "pid_start": "", **identity}
    path.write_text(json.dumps(record))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def finished_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


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
        deadline = time.time() + 30  # every 0.05 s; on a loaded machine the thread may wait its turn a while
        while read_owner(path)[1] >= 5 and time.time() < deadline:
            time.sleep(0.05)
        assert read_owner(path)[1] < 5


def test_pids_are_compared_only_within_one_kernel_and_pid_namespace(tmp_path):
    dead = finished_pid()
    write_lock(tmp_path, os.uname().nodename, dead, pid_ns="pid:[1]")  # same host name, another container
    with pytest.raises(LockHeld, match=f"in use by process {dead} on "):
        RunLock(tmp_path).acquire()
    write_lock(tmp_path, os.uname().nodename, dead, boot_id="another-machine")
    with pytest.raises(LockHeld):
        RunLock(tmp_path).acquire()
    write_lock(tmp_path, os.uname().nodename, os.getpid())  # our PID, not our lock: a dead predecessor's
    messages = []
    with RunLock(tmp_path, log=messages.append):
        assert "this process has its PID now" in messages[0]
    write_lock(tmp_path, os.uname().nodename, os.getppid(), pid_start="1")  # the PID runs, but started later
    with RunLock(tmp_path, log=messages.append):
        assert "its PID belongs to a later process" in messages[-1]


UNSHARE = ["unshare", "--pid", "--fork", "--map-root-user"]


def test_a_run_in_another_pid_namespace_is_neither_taken_over_nor_blocks_its_requeue_forever(tmp_path):
    if subprocess.run([*UNSHARE, "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --pid is not permitted here")
    holder = subprocess.Popen([*UNSHARE, sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        owner = read_owner(tmp_path / LOCK_FILE)[0]
        assert owner.pid == 1 and owner.pid_ns != LockOwner.of_this_process().pid_ns  # PID 1 in its container
        with pytest.raises(LockHeld, match="in use by process 1 on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(LockHeld):  # killed: its PID cannot be checked from here, so its heartbeat decides
        RunLock(tmp_path).acquire()
    os.utime(tmp_path / LOCK_FILE, (time.time() - STALE_S - 5, time.time() - STALE_S - 5))
    with RunLock(tmp_path, log=lambda *a: None):
        pass


def test_a_client_clock_ahead_of_the_filesystems_does_not_make_a_live_lock_stale(tmp_path, monkeypatch):
    write_lock(tmp_path, "other-node", 12345, age=10)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 2 * STALE_S)  # this client's clock runs ahead
    with pytest.raises(LockHeld, match="process 12345 on other-node"):
        RunLock(tmp_path).acquire()
    assert held_elsewhere(tmp_path).pid == 12345


def test_a_lock_that_cannot_be_written_is_one_line_and_leaves_no_file(tmp_path):
    script = ("import resource, signal, sys\n"
              "from adalora_ablation.run.lock import LockHeld, RunLock\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))  # as a full disk: the lock's record fails\n"
              "try:\n    RunLock(sys.argv[1]).acquire()\nexcept LockHeld as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip() == f"cannot write the lock {tmp_path / LOCK_FILE} (File too large); free space " \
                                    f"or choose another --output-root"
    assert not (tmp_path / LOCK_FILE).exists()
    with RunLock(tmp_path):  # the next start is not blocked
        pass


# The winner holds the lock until every racer has tried (each leaves a file in argv[2] once it has), so that a racer
# slow to start on a loaded machine still meets the held lock: a fixed hold of a few seconds let it win by luck.
RACER = """
import os, sys, time
from adalora_ablation.run.lock import LockHeld, RunLock

def tried():
    open(os.path.join(sys.argv[2], str(os.getpid())), "w").close()

try:
    with RunLock(sys.argv[1], log=lambda *a: None):
        print("held", flush=True)
        tried()
        deadline = time.time() + 120
        while len(os.listdir(sys.argv[2])) < 3 and time.time() < deadline:
            time.sleep(0.02)
except LockHeld as exc:
    print("refused", exc, flush=True)
    tried()
"""


def test_of_three_processes_racing_for_one_stale_lock_exactly_one_wins(tmp_path):
    write_lock(tmp_path, "other-node", 12345, age=STALE_S + 5)
    (tmp_path / "tried").mkdir()
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(tmp_path / "tried")],
                               stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outcomes = [racer.communicate(timeout=60)[0].split()[0] for racer in racers]
    assert sorted(outcomes) == ["held", "refused", "refused"]
    assert not (tmp_path / LOCK_FILE).exists()


SUSPENDED = """
import sys, time
from adalora_ablation.run import lock
from adalora_ablation.run.lock import LockLost, RunLock
lock.HEARTBEAT_S, lock.STALE_S = 0.1, 1.0
with RunLock(sys.argv[1], lambda *a: None) as held:  # only the main thread prints
    print("held", flush=True)
    try:
        while True:
            held.check()
            with open(sys.argv[2], "a") as f:
                f.write("x\\n")
            time.sleep(0.02)
    except LockLost as exc:
        print("lost:", exc, flush=True)
"""


def test_an_owner_suspended_longer_than_the_takeover_age_notices_and_stops_writing(tmp_path, monkeypatch):
    log = tmp_path / "writes.txt"
    holder = subprocess.Popen([sys.executable, "-c", SUSPENDED, str(tmp_path), str(log)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        deadline = time.time() + 60
        while not log.exists() and time.time() < deadline:  # writing, before it is suspended (a slow machine)
            time.sleep(0.01)
        holder.send_signal(signal.SIGSTOP)
        time.sleep(1.5)  # longer than its STALE_S: its heartbeat stopped with it
        monkeypatch.setattr(run_lock, "STALE_S", 1.0)
        taker = RunLock(tmp_path, log=lambda *a: None).acquire()
        writes = len(log.read_text().splitlines())
        holder.send_signal(signal.SIGCONT)
        out, _ = holder.communicate(timeout=30)
        assert "lost: the lock " in out and "was taken over" in out
        assert len(log.read_text().splitlines()) <= writes + 1  # at most the write it was suspended in
        assert read_owner(tmp_path / LOCK_FILE)[0] == taker.owner  # it left the new owner's lock alone
        taker.release()
    finally:
        holder.kill()


# Long enough to outlive the checks below on any machine; the test stops it with SIGTERM (a checkpoint, exit 75).
TRAIN = ["--task", "synthetic", "--signal", "combo", "--seed", "5", "--max-steps", "100000", "--tinit", "10",
         "--tfinal", "10", "--deltaT", "5", "--eval-strategy", "no", "--save-strategy", "no"]


@pytest.mark.slow
def test_a_second_train_on_the_same_folder_stops_and_the_first_writes_consistent_logs(tmp_path, capsys):
    """The first run is a subprocess; the second `train` (plain, then with --overwrite) and the grid's dry run are
    this test's own process: two processes on one folder, without paying a second interpreter's imports."""
    def cli(*args):
        return [*args, "--output-root", str(tmp_path)]

    run_dir = tmp_path / "synthetic" / "combo" / "5"
    first = subprocess.Popen([sys.executable, "-m", "adalora_ablation", *cli("train", *TRAIN)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (run_dir / LOCK_FILE).exists():
            assert first.poll() is None and time.time() < deadline, "the first run never took its lock"
            time.sleep(0.05)
        for extra in ([], ["--overwrite", "True"]):
            second = run_cli(capsys, *cli("train", *TRAIN, *extra))
            assert second.returncode == 2, second.stderr[-2000:]
            errors = [line for line in second.stderr.splitlines() if line.startswith("adalora-ablation: error:")]
            assert len(errors) == 1 and f"{run_dir} is in use by process {first.pid} on " in errors[0]
            assert first.poll() is None, "the second process disturbed the first"
        grid = run_cli(capsys, *cli("ablate", "--task", "synthetic", "--signals", "combo", "--seeds", "5", "--dry-run",
                                    *TRAIN[6:]))  # the same settings: the grid's own run, in progress elsewhere
        assert f"| synthetic | combo | 5 | running elsewhere | process {first.pid} on " in grid.stdout
        allocations = run_dir / "rank_pattern.jsonl"
        while not (allocations.exists() and len(allocations.read_text().splitlines()) >= 2):  # training, allocating
            assert first.poll() is None and time.time() < deadline + 300, "the first run never allocated"
            time.sleep(0.05)
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
