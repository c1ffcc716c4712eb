"""Where the grid's runs execute: here one at a time, here one per listed GPU, or as submitit jobs (Slurm, or
submitit's local executor, which runs the same submission code on this machine).

Every run is ``train ... --resume True``, so a run that is started again for any reason (a crash, a pre-empted or
timed-out job, a resubmission) continues from its latest complete checkpoint instead of starting over.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import REQUEUE_EXIT_CODE, RunInterrupted, UsageError
from ..logs import configure_console
from ..run.lock import held_elsewhere
from ..run.folder import grid_dir, latest_complete_checkpoint, read_summary, run_headline, write_json_atomic

SUBMITIT_LAUNCHERS = {"slurm": "slurm", "submitit-local": "local"}  # --launcher -> submitit's cluster name
INSTALL_HINT = 'pip install submitit (or pip install -e ".[cluster]")'
# Slurm states in which a job will still run (or is running): resubmitting it would run the same run twice.
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}
# sacct may not list a job for a short while after sbatch; until then UNKNOWN must not mean "gone".
UNKNOWN_GRACE_S = 600


def run_name(run) -> str:
    return f"{run.task}/{run.signal}/{run.seed}"


def train_argv(run, output_root: str, extra: list[str]) -> list[str]:
    return ["--task", run.task, "--signal", run.signal, "--seed", str(run.seed), "--output-root", str(output_root),
            "--resume", "True", *extra]


# ----------------------------------------------------------------------------------------------- on this machine

def train_command(run, output_root: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "adalora_ablation", "train", *train_argv(run, output_root, extra)]


def run_one(run, output_root: str, extra: list[str], gpu: str | None = None, cpu_threads: int | None = None) -> None:
    """Train one grid cell in its own process (on one GPU if given); keep the last line of its output as the
    reason if it fails. Its output goes to stderr, each line prefixed with the run, so that runs sharing the
    console stay apart and stdout keeps only the grid's own lines, table and report."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # stdout and stderr share one pipe: keep their lines in order
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if cpu_threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(cpu_threads))
    print(f"[grid] {run_name(run)}" + (f" on GPU {gpu}" if gpu is not None else ""), flush=True)
    proc = subprocess.Popen(train_command(run, output_root, extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, env=env)
    last_line = ""
    for line in proc.stdout:
        sys.stderr.write(f"[{run_name(run)}] {line}")
        if line.strip():
            last_line = line.strip()
    proc.wait()
    summary = read_summary(run.run_dir)
    if proc.returncode == 0 and summary is not None:
        run.status, run.detail = "finished", run_headline(run.run_dir, summary)
    elif proc.returncode == REQUEUE_EXIT_CODE:
        run.status, run.detail = "interrupted", last_line.replace("adalora-ablation: ", "")
    else:
        run.status, run.detail = "failed", last_line or f"exit code {proc.returncode}"


def run_on_gpus(runs, output_root: str, extra: list[str], gpus: list[str]) -> None:
    """At most one run per listed GPU at a time; a GPU is handed to the next run as soon as its run ends. Like
    torchrun, split the CPU threads between the processes (unless OMP_NUM_THREADS is set): each torch would
    otherwise start one thread per core, and oversubscribed cores slow every run down many times over."""
    free = queue.Queue()
    for gpu in gpus:
        free.put(gpu)
    cpu_threads = max((os.cpu_count() or 1) // len(gpus), 1)

    def work(run):
        gpu = free.get()
        try:
            run_one(run, output_root, extra, gpu, cpu_threads)
        finally:
            free.put(gpu)

    with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
        list(pool.map(work, runs))  # list(): re-raise anything a worker raised


def parse_gpus(text: str) -> list[str]:
    gpus = [part.strip() for part in text.split(",")]
    if not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"expected distinct GPU indices separated by commas, e.g. 0,1,2,3 (got {text!r})")
    return gpus


# --------------------------------------------------------------------------------------------------- submitit

def require_submitit():
    try:
        import submitit
    except ImportError:
        raise UsageError(f"the slurm and submitit-local launchers need submitit: {INSTALL_HINT}") from None
    return submitit


def parse_slurm_time(text: str) -> int:
    """Slurm's --time formats (minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
    days-hours:minutes:seconds) as whole minutes, rounded up."""
    days, clock = text.split("-", 1) if "-" in text else (None, text)
    fields = clock.split(":")
    if not (len(fields) <= 3 and all(f.isdigit() for f in fields) and (days is None or days.isdigit())):
        raise ValueError(f"expected a Slurm time limit such as 24:00:00 or 1-12:00:00 (got {text!r})")
    numbers = [int(f) for f in fields]
    if days is not None:
        hours, minutes, seconds = numbers + [0] * (3 - len(numbers))
    elif len(numbers) == 3:
        hours, minutes, seconds = numbers
    else:
        hours, (minutes, seconds) = 0, numbers + [0] * (2 - len(numbers))
    total = int(days or 0) * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)
    if total < 1:
        raise ValueError(f"the time limit must be at least one minute (got {text!r})")
    return total


@dataclass
class SubmititOptions:
    launcher: str  # a key of SUBMITIT_LAUNCHERS
    timeout_min: int
    gpus_per_run: int
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    partition: str | None = None
    array_parallelism: int | None = None


class TrainJob:
    """What one submitit job runs: one grid cell's ``train``, in the job's own process. Holds plain data only, so
    it pickles; submitit calls ``checkpoint`` when the job is pre-empted or about to time out."""

    def __init__(self, argv: list[str], run_dir: Path):
        self.argv = list(argv)
        self.run_dir = Path(run_dir)

    def __call__(self) -> dict:
        summary = read_summary(self.run_dir)
        if summary is not None:  # requeued after the run had finished: train would refuse the finished folder
            return summary
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            # One task per GPU (--gpus-per-run N): give each its torch.distributed rank. Every GPU stays visible,
            # because the Trainer places each process on cuda:LOCAL_RANK.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        configure_console()  # the job's own process: its progress goes to the job's log files
        from ..run.preemption import STOP_SIGNALS  # here, in the job: submitting and --status never load training code
        from ..train import train

        preempt_signal = getattr(signal, f"SIG{submitit.JobEnvironment.USR_SIG}")
        try:
            return train(self.argv, stop_signals=(*STOP_SIGNALS, preempt_signal))
        except RunInterrupted:
            # The run has written a checkpoint at the step it stopped after; now do what submitit would have done
            # on its signal: call checkpoint() below and requeue the job (this exits the process).
            signal.getsignal(preempt_signal)(preempt_signal, None)
            raise

    def checkpoint(self):
        # Nothing to save here: the run's own checkpoints hold its state. The requeued job runs the same
        # train --resume True, which continues from the latest complete checkpoint (and rewinds the jsonl logs).
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def jobs_file(output_root) -> Path:
    return grid_dir(output_root) / "jobs.json"


def read_jobs(output_root) -> dict[str, dict]:
    """The job record of every submitted run, keyed by task/signal/seed."""
    path = jobs_file(output_root)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))["runs"]
    except (ValueError, KeyError):
        raise UsageError(f"{path} is not a job record written by 'ablate'; move it away and run again") from None


def job_states(records: list[dict]) -> list[tuple[str, str]]:
    """(state, detail) for each job record: the cluster's state (Slurm: sacct, asked once for all jobs; local: is
    the job's process alive), with the job's own error line when it raised."""
    if not records:
        return []
    submitit = require_submitit()
    slurm = [r for r in records if r["launcher"] == "slurm"]
    if slurm:
        for record in slurm:  # constructing the job registers it with the shared sacct watcher
            submitit.SlurmJob(folder=record["log_folder"], job_id=record["job_id"])
        submitit.SlurmJob.watcher.update()
    states = []
    for record in records:
        outcome = _job_outcome(submitit, record)
        if record["launcher"] == "slurm":
            state = submitit.SlurmJob.watcher.get_state(record["job_id"], mode="cache").split()[0]  # "CANCELLED by 0"
        else:
            state = _local_state(record, outcome)
        error = outcome[1].strip().splitlines()[-1] if outcome and outcome[0] == "error" else ""
        states.append((state, error))
    return states


def _job_outcome(submitit, record) -> tuple[str, str] | None:
    """('success'|'error', result or traceback) from the job's result file, or None while it has none."""
    path = submitit.core.utils.JobPaths(record["log_folder"], record["job_id"], task_id=0).result_pickle
    return submitit.core.utils.pickle_load(path) if path.exists() else None


def _local_state(record, outcome) -> str:
    if outcome is not None:
        return "COMPLETED" if outcome[0] == "success" else "FAILED"
    try:  # a local job's id is its controller's process id
        os.kill(int(record["job_id"]), 0)
    except ProcessLookupError:
        return "INTERRUPTED"  # ended without a result: killed
    except PermissionError:
        pass
    return "RUNNING"


def is_active(state: str, record: dict) -> bool:
    if state == "UNKNOWN":
        submitted = datetime.fromisoformat(record["submitted_at"])
        return (datetime.now(timezone.utc) - submitted).total_seconds() < UNKNOWN_GRACE_S
    return state in ACTIVE_STATES


def _checkpoint_note(run) -> str:
    checkpoint = latest_complete_checkpoint(run.run_dir)
    return f"at {checkpoint.name}" if checkpoint else ""


def grid_status(runs, output_root) -> dict[str, dict]:
    """Set each run's status: finished (from its final_summary.json), else its job's state, else 'not
    submitted'. Returns the job records (task/signal/seed -> record)."""
    book = read_jobs(output_root)
    summaries = {run_name(r): read_summary(r.run_dir) for r in runs}
    asked = [r for r in runs if summaries[run_name(r)] is None and run_name(r) in book]
    states = dict(zip(map(run_name, asked), job_states([book[run_name(r)] for r in asked])))
    for run in runs:
        summary, name = summaries[run_name(run)], run_name(run)
        if summary is not None:
            run.status, run.detail = "finished", run_headline(run.run_dir, summary)
        elif name in states:
            state, error = states[name]
            notes = [f"job {book[name]['job_id']} ({book[name]['launcher']})", _checkpoint_note(run), error]
            run.status, run.detail = state, ", ".join(n for n in notes if n)
        else:
            run.status, run.detail = "not submitted", _checkpoint_note(run)
    return book


def make_executor(submitit, options: SubmititOptions, folder: Path):
    executor = submitit.AutoExecutor(folder=folder, cluster=SUBMITIT_LAUNCHERS[options.launcher])
    tasks = max(options.gpus_per_run, 1)  # one process per GPU
    executor.update_parameters(
        name="adalora-ablation", timeout_min=options.timeout_min, nodes=1, gpus_per_node=options.gpus_per_run,
        tasks_per_node=tasks, cpus_per_task=max(options.cpus_per_run // tasks, 1) if options.cpus_per_run else None,
        mem_gb=options.mem_gb, slurm_partition=options.partition,
        slurm_array_parallelism=options.array_parallelism,
    )
    return executor


def submit_grid(runs, output_root: str, extra: list[str], options: SubmititOptions, dry_run: bool) -> None:
    """Submit every run that is neither finished nor still queued/running, as one job array where the cluster
    has them, and record the job ids in <output-root>/grid/jobs.json. The local executor has no queue to leave
    jobs in (they are children of this process), so with it wait for them and report how they ended."""
    submitit = require_submitit()
    root = Path(output_root).resolve()  # the jobs may start in another working directory
    book = grid_status(runs, root)
    to_submit = []
    for run in runs:
        record = book.get(run_name(run))
        owner = held_elsewhere(run.run_dir)
        if run.status == "finished":
            run.status, run.detail = "skipped", "already finished"
        elif owner is not None and not (record is not None and is_active(run.status, record)):
            run.status, run.detail = "running elsewhere", owner.describe()
        elif record is not None and is_active(run.status, record):
            run.status, run.detail = "queued", f"{run.status}, {run.detail}"
        else:
            run.detail = f"previous job {record['job_id']} {run.status}" if record else ""
            run.status = "would resubmit" if record else "would submit"
            to_submit.append(run)
    if dry_run or not to_submit:
        return

    folder = grid_dir(root) / "submitit" / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    executor = make_executor(submitit, options, folder)
    try:
        with executor.batch():
            jobs = [executor.submit(TrainJob(train_argv(run, root, extra), run.run_dir)) for run in to_submit]
    except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedSubmissionError) as exc:
        lines = str(exc).strip().splitlines()  # sbatch's own message has been printed above
        raise UsageError(f"submitting the jobs failed: {lines[-1] if lines else type(exc).__name__}") from None
    submitted_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for run, job in zip(to_submit, jobs):
        book[run_name(run)] = {"task": run.task, "signal": run.signal, "seed": run.seed, "job_id": job.job_id,
                               "launcher": options.launcher, "submitted_at": submitted_at, "log_folder": str(folder)}
        run.status = "resubmitted" if run.status == "would resubmit" else "submitted"
        run.detail = ", ".join(n for n in (f"job {job.job_id}", run.detail) if n)
    jobs_file(root).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(jobs_file(root), {"runs": book})
    print(f"[grid] submitted {len(jobs)} run(s) with --launcher {options.launcher}; job logs in {folder}", flush=True)
    if options.launcher == "submitit-local":
        wait_for(jobs, to_submit, root)


def wait_for(jobs, runs, output_root: Path) -> None:
    for job in jobs:
        job.wait()
    grid_status(runs, output_root)
    for run in runs:
        if run.status != "finished":
            run.status, run.detail = "failed", f"{run.status}, {run.detail}"
