"""Launchers: one run per GPU here, submitit jobs (its local executor for real, Slurm through fake sbatch/sacct),
the job record, --status, resubmission of failed and pre-empted runs, and the one-line errors. (Real tiny runs on
--gpus: the budget sweep of tests/test_ablate.py runs on two.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_in_process import run_cli

from adalora_ablation.grid import launchers
from adalora_ablation.grid.ablate import ablate_main
from adalora_ablation.cli import main as cli_main
from adalora_ablation.grid.launchers import parse_gpus, parse_slurm_time
from adalora_ablation.run.folder import latest_complete_checkpoint, read_jsonl, read_shared_warmup, read_summary

# Short runs: 12 steps, the budget falls from step 4 to step 8, no checkpoint or evaluation but the final one.
TRAIN = ["--max-steps", "12", "--tinit", "4", "--tfinal", "4", "--deltaT", "2", "--save-strategy", "no",
         "--eval-strategy", "no", "--max-train-samples", "64", "--max-eval-samples", "32", "--adapter-effect", "False"]


def ablate(capsys, *args):
    """``adalora-ablation ablate *args`` in this process (its runs and jobs are processes of their own)."""
    return run_cli(capsys, "ablate", *args)


@pytest.fixture
def one_thread(monkeypatch):
    """Runs that share the 2 cores of a test machine: one torch thread each, or oversubscription (threads
    spinning against each other and against other work on the machine) makes them many times slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def jobs(root) -> dict:
    return json.loads((Path(root) / "grid" / "jobs.json").read_text())["runs"]


def test_slurm_time_and_gpu_lists():
    assert parse_slurm_time("24:00:00") == 1440
    assert parse_slurm_time("90") == 90
    assert parse_slurm_time("10:30") == 11  # minutes:seconds, rounded up
    assert parse_slurm_time("1-12") == 2160
    assert parse_slurm_time("2-00:30:00") == 2910
    for bad in ("", "1:2:3:4", "abc", "-5", "0", "1-x"):
        with pytest.raises(ValueError):
            parse_slurm_time(bad)
    assert parse_gpus("0,1, 3") == ["0", "1", "3"]
    for bad in ("", "0,,1", "0,0", "a,b", "-1"):
        with pytest.raises(ValueError):
            parse_gpus(bad)


@pytest.mark.parametrize("args, expected", [
    (["--gpus", "0,x"], "argument --gpus: expected distinct GPU indices"),
    (["--gpus", "1,1"], "argument --gpus: expected distinct GPU indices"),
    (["--launcher", "slurm", "--gpus", "0,1"], "use --gpus-per-run"),
    (["--slurm-partition", "gpu"], "--slurm-partition is for --launcher slurm"),
    (["--launcher", "submitit-local", "--time", "soon"], "argument --time: expected a Slurm time limit"),
    (["--launcher", "slurm", "--gpus-per-run", "-1"], "must be at least 0 (got -1)"),
])
def test_bad_launcher_flags_are_one_line_errors(args, expected, capsys):
    assert cli_main(["ablate", "--task", "synthetic", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_slurm_without_submitit_names_the_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    assert cli_main(["ablate", "--task", "synthetic", "--launcher", "slurm", "--slurm-partition", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "pip install submitit" in err and err.count("\n") == 1, err


# A fake run records when it started and ended; it ends only once BARRIER runs have started (or after 120 s), so runs
# the launcher starts together overlap whatever the machine's load (a fixed sleep overlapped them only by luck).
BARRIER = """
def wait_for(count, run_dir):
    started = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(run_dir))), "started")
    os.makedirs(started, exist_ok=True)
    open(os.path.join(started, os.path.basename(os.path.dirname(run_dir)) + "-" + os.path.basename(run_dir)),
         "w").close()
    deadline = time.time() + 120
    while len(os.listdir(started)) < count and time.time() < deadline:
        time.sleep(0.02)
"""
FAKE_TRAIN = """
import json, os, sys, time
""" + BARRIER + """
run_dir = sys.argv[1]
os.makedirs(run_dir, exist_ok=True)
start = time.time()
wait_for(2, run_dir)
time.sleep(0.5)
record = {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}
json.dump(record, open(os.path.join(run_dir, "seen.json"), "w"))
json.dump({"eval_accuracy": 0.5}, open(os.path.join(run_dir, "final_summary.json"), "w"))
"""


def test_gpus_run_concurrently_each_on_its_own_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launchers, "train_command",
                        lambda run, root, extra: [sys.executable, "-c", FAKE_TRAIN, str(run.run_dir)])
    code = ablate_main(["--task", "synthetic", "--signals", "importance_only", "uniform", "--seeds", "1", "2",
                        "--output-root", str(tmp_path), "--gpus", "0,1", "--no-share-warmup"])
    out = capsys.readouterr().out
    assert code == 0 and "4 finished, 0 skipped, 0 failed" in out, out
    seen = {}
    for line in out.splitlines():
        if line.startswith("[grid] ") and " on GPU " in line:
            name, gpu = line.removeprefix("[grid] ").split(" on GPU ")
            seen[name] = json.loads((tmp_path / name / "seen.json").read_text())
            assert seen[name]["gpu"] == gpu  # the process itself saw the GPU the runner gave it
    assert len(seen) == 4 and {s["gpu"] for s in seen.values()} == {"0", "1"}
    runs = list(seen.values())
    overlapping = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
                   if a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlapping, "no two runs ran at the same time"
    assert all(a["gpu"] != b["gpu"] for a, b in overlapping), "two runs shared a GPU"


@pytest.mark.slow
def test_submitit_local_records_jobs_skips_finished_and_resubmits_failed(tmp_path, capsys, one_thread):
    pytest.importorskip("submitit")
    root = str(tmp_path)
    grid = ["--task", "synthetic", "--signals", "importance_only", "random", "--seeds", "1", "--output-root", root]
    (tmp_path / "synthetic" / "random").mkdir(parents=True)
    (tmp_path / "synthetic" / "random" / "1").write_text("a file where the run folder goes: this run fails")

    first = ablate(capsys, *grid, "--launcher", "submitit-local", *TRAIN)
    assert first.returncode == 1, first.stderr[-2000:]
    assert "| synthetic | importance_only | 1 | finished |" in first.stdout
    assert "| synthetic | random | 1 | failed | FAILED, job " in first.stdout
    assert "exists but is not a folder" in first.stdout  # the job's own error, in one line
    # The two runs' first steps were one shared warm-up, a job of its own that seeded the run that could start.
    assert "[grid warm-up] submitted 1 shared warm-up(s)" in first.stdout
    assert read_shared_warmup(tmp_path / "synthetic" / "importance_only" / "1") is not None
    record = jobs(root)
    assert set(record) == {"synthetic/importance_only/1", "synthetic/random/1"}
    for name, entry in record.items():
        assert entry["launcher"] == "submitit-local" and entry["job_id"].isdigit() and entry["submitted_at"]
        assert (entry["task"], entry["signal"], entry["seed"]) == ("synthetic", name.split("/")[1], 1)

    assert ablate_main([*grid, "--status", *TRAIN]) == 0  # the grid is its settings: the same train flags
    status = capsys.readouterr().out
    assert "| synthetic | importance_only | 1 | finished |" in status
    assert f"| synthetic | random | 1 | FAILED | job {record['synthetic/random/1']['job_id']} " in status

    (tmp_path / "synthetic" / "random" / "1").unlink()
    second = ablate(capsys, *grid, "--launcher", "submitit-local", *TRAIN)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "| synthetic | importance_only | 1 | skipped | already finished |" in second.stdout
    assert "1 finished, 1 skipped, 0 failed" in second.stdout
    again = jobs(root)
    assert again["synthetic/importance_only/1"] == record["synthetic/importance_only/1"]  # not resubmitted
    assert again["synthetic/random/1"]["job_id"] != record["synthetic/random/1"]["job_id"]
    assert read_summary(tmp_path / "synthetic" / "random" / "1")["budget_check_passed"]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the job's process through /proc")
def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, one_thread):
    pytest.importorskip("submitit")
    run_dir = tmp_path / "synthetic" / "combo" / "3"
    proc = subprocess.Popen([sys.executable, "-m", "adalora_ablation", "ablate", "--task", "synthetic", "--signals",
                             "combo", "--seeds", "3", "--output-root", str(tmp_path), "--launcher", "submitit-local",
                             "--max-steps", "120", "--tinit", "5", "--tfinal", "10", "--deltaT", "5",
                             "--save-strategy", "steps", "--save-steps", "10", "--eval-strategy", "no",
                             "--logging-steps", "5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 600
        while not (run_dir.is_dir() and latest_complete_checkpoint(run_dir)) and proc.poll() is None:
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.1)
        job_id = jobs(tmp_path)["synthetic/combo/3"]["job_id"]
        (task,) = _children(int(job_id))  # the local job's controller runs the task (our TrainJob) as its child
        os.kill(task, signal.SIGUSR2)  # what Slurm sends before a time-out or pre-emption
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "| synthetic | combo | 3 | finished |" in out
    assert jobs(tmp_path)["synthetic/combo/3"]["job_id"] == job_id  # requeued as the same job, not resubmitted
    log = next((tmp_path / "grid" / "submitit").glob(f"*/{job_id}_0_log.out")).read_text()
    assert "Calling checkpoint method" in log and f"Requeued job {job_id}" in log
    summary = read_summary(run_dir)
    assert summary["resumed_from"].startswith("checkpoint-") and summary["budget_check_passed"]
    train_logs = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert train_logs == sorted(set(train_logs))  # rewound to the checkpoint: no line repeated ...
    assert [s for s in train_logs if s % 5 == 0] == list(range(5, 121, 5))  # ... or lost
    stopped_at = int(summary["resumed_from"].split("-")[1])  # the signal's checkpoint, at the step it came in
    assert set(train_logs) - set(range(5, 121, 5)) <= {stopped_at}  # whose loss line was written before stopping


@pytest.mark.slow
def test_several_gpus_per_run_train_as_one_distributed_run(tmp_path, capsys, one_thread):
    """--gpus-per-run 2: the job runs two tasks, each given its torch.distributed rank (on CPU: gloo)."""
    pytest.importorskip("submitit")
    result = ablate(capsys, "--task", "synthetic", "--signals", "importance_only", "--seeds", "1", "--output-root",
                    str(tmp_path), "--launcher", "submitit-local", "--gpus-per-run", "2", *TRAIN)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    consistency = json.loads((tmp_path / "synthetic" / "importance_only" / "1" / "ddp_consistency.json").read_text())
    assert consistency["world_size"] == 2 and consistency["identical"]


def test_running_job_is_left_alone(tmp_path, capsys):
    pytest.importorskip("submitit")
    grid = ["--task", "synthetic", "--signals", "importance_only", "--seeds", "1", "--output-root", str(tmp_path)]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        record = {"task": "synthetic", "signal": "importance_only", "seed": 1, "job_id": str(sleeper.pid),
                  "launcher": "submitit-local", "submitted_at": "2026-01-01T00:00:00+00:00",
                  "log_folder": str(tmp_path / "grid" / "submitit" / "x")}
        (tmp_path / "grid").mkdir()
        (tmp_path / "grid" / "jobs.json").write_text(json.dumps({"runs": {"synthetic/importance_only/1": record}}))

        assert ablate_main([*grid, "--status"]) == 0
        assert f"| RUNNING | job {sleeper.pid} (submitit-local) |" in capsys.readouterr().out
        assert ablate_main([*grid, "--launcher", "submitit-local", *TRAIN]) == 0
        assert f"| queued | RUNNING, job {sleeper.pid} (submitit-local) |" in capsys.readouterr().out
        assert jobs(tmp_path)["synthetic/importance_only/1"] == record
    finally:
        sleeper.kill()
        sleeper.wait()
    assert ablate_main([*grid, "--launcher", "submitit-local", "--dry-run"]) == 0
    assert f"| would resubmit | previous job {sleeper.pid} INTERRUPTED |" in capsys.readouterr().out


FAKE_SBATCH = """#!/bin/sh
if [ -e "$FAKE_SLURM/refuse" ]; then echo "sbatch: error: invalid partition specified: nope" >&2; exit 1; fi
n=$(cat "$FAKE_SLURM/next_id"); echo $((n + 1)) > "$FAKE_SLURM/next_id"
cp "$1" "$FAKE_SLURM/sbatch_$n.sh"
echo "Submitted batch job $n"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """srun/sbatch/sacct stand-ins: sbatch keeps each script and answers job ids 4242, 4243, ...; sacct prints
    whatever the test wrote to sacct.txt."""
    submitit = pytest.importorskip("submitit")
    bin_dir = tmp_path / "fake_slurm"
    bin_dir.mkdir()
    for name, text in {"srun": "#!/bin/sh\nexit 0\n", "sbatch": FAKE_SBATCH,
                       "sacct": '#!/bin/sh\necho "JobID|State|NodeList"\ncat "$FAKE_SLURM/sacct.txt"\n'}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "next_id").write_text("4242\n")
    (bin_dir / "sacct.txt").write_text("")
    monkeypatch.setenv("FAKE_SLURM", str(bin_dir))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    submitit.SlurmJob.watcher.clear()  # the sacct cache is per process; start each test without it
    return bin_dir


def test_slurm_submits_a_job_array_and_resubmits_only_what_ended(tmp_path, fake_slurm, capsys):
    root = tmp_path / "out"
    grid = ["--task", "synthetic", "--signals", "importance_only", "random", "--seeds", "1", "--output-root", str(root),
            "--no-share-warmup"]
    slurm = ["--launcher", "slurm", "--slurm-partition", "gpu", "--gpus-per-run", "1", "--time", "24:00:00",
             "--cpus-per-run", "4", "--mem-gb", "16", "--slurm-array-parallelism", "1"]
    assert ablate_main([*grid, *slurm, "--max-steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "| synthetic | importance_only | 1 | submitted | job 4242_0 |" in out
    assert "| synthetic | random | 1 | submitted | job 4242_1 |" in out and "2 submitted" in out
    script = (fake_slurm / "sbatch_4242.sh").read_text()
    for line in ("--partition=gpu", "--gpus-per-node=1", "--ntasks-per-node=1", "--time=1440", "--cpus-per-task=4",
                 "--mem=16GB", "--array=0-1%1", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in script, line
    record = jobs(root)
    assert [record[k]["job_id"] for k in ("synthetic/importance_only/1", "synthetic/random/1")] == ["4242_0", "4242_1"]

    import submitit

    job = submitit.SlurmJob(folder=record["synthetic/random/1"]["log_folder"], job_id="4242_1")
    train_job = job.submission().function
    assert train_job.argv[-4:] == ["--resume", "True", "--max-steps", "40"]
    assert train_job.argv[train_job.argv.index("--output-root") + 1] == str(root.resolve())
    assert train_job.checkpoint().function is train_job  # a pre-empted job is requeued with the same run

    (fake_slurm / "sacct.txt").write_text("4242_0|RUNNING|node1\n4242_1|PENDING|\n")
    assert ablate_main([*grid, "--status"]) == 0
    out = capsys.readouterr().out
    assert "| synthetic | importance_only | 1 | RUNNING | job 4242_0 (slurm) |" in out
    assert "| synthetic | random | 1 | PENDING | job 4242_1 (slurm) |" in out
    assert ablate_main([*grid, *slurm]) == 0
    assert capsys.readouterr().out.count("| queued |") == 2 and not (fake_slurm / "sbatch_4243.sh").exists()

    # The first run finished; the second was pre-empted (no requeue): only that one goes back in, resuming.
    (root / "synthetic" / "importance_only" / "1").mkdir(parents=True)
    (root / "synthetic" / "importance_only" / "1" / "final_summary.json").write_text('{"eval_accuracy": 0.5}')
    (fake_slurm / "sacct.txt").write_text("4242_0|COMPLETED|node1\n4242_1|PREEMPTED|node2\n")
    assert ablate_main([*grid, *slurm]) == 0
    out = capsys.readouterr().out
    assert "| synthetic | importance_only | 1 | skipped | already finished |" in out
    assert "| synthetic | random | 1 | resubmitted | job 4243, previous job 4242_1 PREEMPTED |" in out
    assert jobs(root)["synthetic/random/1"]["job_id"] == "4243"
    assert "--array" not in (fake_slurm / "sbatch_4243.sh").read_text()  # a single run needs no array


def test_refused_submission_is_one_line_error(tmp_path, fake_slurm, capsys):
    (fake_slurm / "refuse").touch()
    code = cli_main(["ablate", "--task", "synthetic", "--signals", "uniform", "--output-root", str(tmp_path),
                     "--launcher", "slurm", "--slurm-partition", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "submitting the jobs failed: sbatch: error: invalid partition" in err.splitlines()[-1]
    assert not (tmp_path / "grid" / "jobs.json").exists()


class RunsCode:
    """An object whose unpickling runs code: it would create the file at ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def crafted_submitit_jobs(tmp_path):
    """A grid's argv, its submitit log folder and the id of a process that has ended: the setup of the --status tests
    that craft a job record by hand."""
    grid = ["--task", "synthetic", "--signals", "importance_only", "random", "--seeds", "1", "--output-root",
            str(tmp_path)]
    folder = tmp_path / "grid" / "submitit" / "x"
    folder.mkdir(parents=True)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return grid, folder, ended.pid


def submitit_record(job_id, folder, **extra):
    return {"job_id": str(job_id), "launcher": "submitit-local", "submitted_at": "2026-01-01T00:00:00+00:00",
            "log_folder": str(folder), **extra}


def test_status_reads_no_pickle_from_the_output_root(tmp_path, capsys):
    """A result file planted in the job folder would run code if unpickled; --status reads the job's log instead."""
    import pickle

    grid, folder, ended = crafted_submitit_jobs(tmp_path)
    book = {}
    for signal_name, job_id in (("importance_only", ended), ("random", ended + 100000)):
        book[f"synthetic/{signal_name}/1"] = submitit_record(job_id, folder, task="synthetic", signal=signal_name,
                                                             seed=1)
        marker = tmp_path / f"pwned-{signal_name}"
        (folder / f"{job_id}_0_result.pkl").write_bytes(pickle.dumps(("error", RunsCode(marker))))
    (tmp_path / "grid" / "jobs.json").write_text(json.dumps({"runs": book}))
    (folder / f"{ended}_0_log.err").write_text(
        "submitit ERROR (2026-01-01 00:00:00,000) - Submitted job triggered an exception\n"
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
        "adalora_ablation.errors.UsageError: /data/glu holds no RTE files\n")

    assert ablate_main([*grid, "--status"]) == 0
    out = capsys.readouterr().out
    assert not list(tmp_path.glob("pwned-*")), "--status unpickled a file from the output root"
    assert (f"| synthetic | importance_only | 1 | FAILED | job {ended} (submitit-local), "
            f"adalora_ablation.errors.UsageError: /data/glu holds no RTE files |") in out
    assert f"| synthetic | random | 1 | INTERRUPTED | job {ended + 100000} (submitit-local) |" in out


FAKE_TRAIN_THREADS = """
import json, os, sys, time
""" + BARRIER + """
run_dir = sys.argv[1]
os.makedirs(run_dir, exist_ok=True)
start = time.time()
wait_for(4, run_dir)
time.sleep(1)
record = {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": os.environ.get("OMP_NUM_THREADS"),
          "start": start, "end": time.time()}
json.dump(record, open(os.path.join(run_dir, "seen.json"), "w"))
json.dump({"eval_accuracy": 0.5}, open(os.path.join(run_dir, "final_summary.json"), "w"))
"""


def test_runs_per_gpu_keeps_up_to_k_runs_on_each_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launchers, "train_command",
                        lambda run, root, extra: [sys.executable, "-c", FAKE_TRAIN_THREADS, str(run.run_dir)])
    monkeypatch.setattr(launchers.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    code = ablate_main(["--task", "synthetic", "--signals", "importance_only", "uniform", "random", "--seeds", "1",
                        "2", "--output-root", str(tmp_path), "--gpus", "0,1", "--runs-per-gpu", "2",
                        "--no-share-warmup"])
    out = capsys.readouterr().out
    assert code == 0 and "6 finished, 0 skipped, 0 failed" in out, out
    seen = [json.loads(p.read_text()) for p in tmp_path.glob("synthetic/*/*/seen.json")]
    assert len(seen) == 6 and {s["threads"] for s in seen} == {"4"}  # 16 cores over 2 GPUs x 2 runs
    on_gpu = {gpu: [s for s in seen if s["gpu"] == gpu] for gpu in ("0", "1")}
    assert sum(map(len, on_gpu.values())) == 6

    def most_at_once(runs):
        return max(sum(o["start"] <= r["start"] < o["end"] for o in runs) for r in runs)
    assert all(most_at_once(runs) <= 2 for runs in on_gpu.values())  # never more than K on one GPU
    assert max(most_at_once(runs) for runs in on_gpu.values()) == 2  # and K at once did happen
    assert most_at_once(seen) <= 4


def test_runs_per_gpu_needs_gpus(capsys):
    assert cli_main(["ablate", "--task", "synthetic", "--runs-per-gpu", "2"]) == 2
    err = capsys.readouterr().err
    assert "--runs-per-gpu needs --gpus" in err and err.count("\n") == 1, err


def test_slurm_runs_wait_for_their_shared_warmup(tmp_path, fake_slurm, capsys):
    root = tmp_path / "out"
    grid = ["--task", "synthetic", "--signals", "importance_only", "random", "--seeds", "1", "--output-root", str(root)]
    slurm = ["--launcher", "slurm", "--slurm-partition", "gpu"]
    assert ablate_main([*grid, *slurm, "--max-steps", "40", "--tinit", "5"]) == 0
    out = capsys.readouterr().out
    assert "| synthetic | importance_only | 1 | submitted | job 4243_0, after shared warm-up synthetic-1-" in out
    warmup_script = (fake_slurm / "sbatch_4242.sh").read_text()
    runs_script = (fake_slurm / "sbatch_4243.sh").read_text()
    assert "--dependency" not in warmup_script and "--array" not in warmup_script
    assert "#SBATCH --dependency=afterok:4242\n" in runs_script and "#SBATCH --array=0-1" in runs_script
    assert "#SBATCH --kill-on-invalid-dep=yes\n" in runs_script  # a failed warm-up cancels them
    record = json.loads((root / "grid" / "jobs.json").read_text())
    (name, warmup), = record["warmups"].items()
    assert warmup["job_id"] == "4242" and warmup["runs"] == ["synthetic/importance_only/1", "synthetic/random/1"]
    assert {r["warmup"] for r in record["runs"].values()} == {name}
    plan = json.loads((Path(warmup["folder"]) / "plan.json").read_text())
    assert [m["variant"] for m in plan["members"]] == ["importance_only", "random"]

    import submitit

    job = submitit.SlurmJob(folder=warmup["log_folder"], job_id="4242")
    assert isinstance(job.submission().function, launchers.WarmupJob)
    assert job.submission().function.run_dir == Path(warmup["folder"])

    (fake_slurm / "sacct.txt").write_text("4242|FAILED|node1\n4243_0|CANCELLED|\n4243_1|CANCELLED|\n")
    assert ablate_main([*grid, "--status"]) == 0
    out = capsys.readouterr().out
    assert out.count("its shared warm-up job 4242 ended FAILED; run the same command again to resume it") == 2


def test_status_says_which_shared_warmup_a_run_waits_for_or_lost(tmp_path, capsys):
    """--status notes a run's shared warm-up: still running (the run waits for it) or ended without success (with its
    error line, read from its logs as text)."""
    grid, folder, ended = crafted_submitit_jobs(tmp_path)
    lost = ended + 100000  # a process id that is not running (the next ones may be: the one below)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        runs = {f"synthetic/{name}/1": submitit_record(ended, folder, task="synthetic", signal=name, seed=1,
                                                       warmup=warmup)
                for name, warmup in (("importance_only", "failed-w"), ("random", "running-w"))}
        warmups = {"failed-w": submitit_record(lost, folder), "running-w": submitit_record(alive.pid, folder)}
        (tmp_path / "grid" / "jobs.json").write_text(json.dumps({"runs": runs, "warmups": warmups}))
        (folder / f"{lost}_0_log.out").write_text(
            "submitit ERROR (2026-01-01 00:00:00,000) - Submitted job triggered an exception\n")
        (folder / f"{lost}_0_log.err").write_text(
            "Traceback (most recent call last):\nadalora_ablation.errors.UsageError: the disk is full\n")

        assert ablate_main([*grid, "--status"]) == 0
        out = capsys.readouterr().out
    finally:
        alive.kill()
        alive.wait()
    assert (f"its shared warm-up job {lost} ended FAILED: adalora_ablation.errors.UsageError: the disk is "
            f"full; run the same command again to resume it") in out
    assert f"waits for shared warm-up job {alive.pid} (RUNNING)" in out
