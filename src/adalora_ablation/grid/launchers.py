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

from ..args import is_config_file
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
    return "/".join(str(p) for p in (run.task, run.signal, getattr(run, "variant", ""), run.seed) if p != "")


def train_argv(run, output_root: str, extra: list[str]) -> list[str]:
    """The run's ``train`` arguments: ``extra`` is what every run of the grid gets, a config file first if there is
    one (train reads it there, below every flag); then the grid's own flags, the shared ones, and a sweep's last."""
    config, flags = (extra[:1], extra[1:]) if extra and is_config_file(extra[0]) else ([], extra)
    return [*config, "--task", run.task, "--signal", run.signal, "--seed", str(run.seed), "--output-root",
            str(output_root), "--resume", "True", *flags, *getattr(run, "train_flags", [])]


# ----------------------------------------------------------------------------------------------- on this machine

def train_command(run, output_root: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "adalora_ablation", "train", *train_argv(run, output_root, extra)]


def warmup_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "adalora_ablation", "warmup", str(folder)]


def run_process(name: str, command: list[str], gpu: str | None, cpu_threads: int | None) -> tuple[int, str]:
    """Run one grid process (on one GPU if given); returns its exit code and the last line of its output. Its
    output goes to stderr, each line prefixed with its name, so that processes sharing the console stay apart and
    stdout keeps only the grid's own lines, table and report."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # stdout and stderr share one pipe: keep their lines in order
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if cpu_threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(cpu_threads))
    # one write per line: print() writes the text and its newline apart, and --gpus starts runs from several
    # threads at once, whose lines could then run into one another
    sys.stdout.write(f"[grid] {name}" + (f" on GPU {gpu}" if gpu is not None else "") + "\n")
    sys.stdout.flush()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
    last_line = ""
    for line in proc.stdout:
        sys.stderr.write(f"[{name}] {line}")
        if line.strip():
            last_line = line.strip()
    proc.wait()
    return proc.returncode, last_line


def run_one(run, output_root: str, extra: list[str], gpu: str | None = None, cpu_threads: int | None = None) -> None:
    """Train one grid cell in its own process; keep the last line of its output as the reason if it fails."""
    returncode, last_line = run_process(run_name(run), train_command(run, output_root, extra), gpu, cpu_threads)
    summary = read_summary(run.run_dir)
    if returncode == 0 and summary is not None:
        run.status, run.detail = "finished", run_headline(run.run_dir, summary)
    elif returncode == REQUEUE_EXIT_CODE:
        run.status, run.detail = "interrupted", last_line.replace("adalora-ablation: ", "")
    else:
        run.status, run.detail = "failed", last_line or f"exit code {returncode}"


def run_warmup_here(group, gpu: str | None = None, cpu_threads: int | None = None) -> None:
    """Train a shared warm-up (grid/warmup.py) in its own process and seed its runs; sets group.failure."""
    returncode, last_line = run_process(f"warm-up {group.name}", warmup_command(group.folder), gpu, cpu_threads)
    group.failure = None if returncode == 0 else (last_line.replace("adalora-ablation: ", "")
                                                  or f"exit code {returncode}")


def on_gpus(items, work, gpus: list[str], runs_per_gpu: int = 1) -> None:
    """``work(item, gpu, cpu_threads)`` for every item, at most ``runs_per_gpu`` at a time on each listed GPU; a
    GPU slot is handed to the next item as soon as its item ends. Like torchrun, split the CPU threads between
    all concurrent processes (unless OMP_NUM_THREADS is set): each torch would otherwise start one thread per
    core, and oversubscribed cores slow every run down many times over."""
    free = queue.Queue()
    for _ in range(runs_per_gpu):
        for gpu in gpus:  # round-robin: the first items spread over the GPUs before any GPU takes a second
            free.put(gpu)
    slots = len(gpus) * runs_per_gpu
    cpu_threads = max((os.cpu_count() or 1) // slots, 1)

    def one(item):
        gpu = free.get()
        try:
            work(item, gpu, cpu_threads)
        finally:
            free.put(gpu)

    with ThreadPoolExecutor(max_workers=slots) as pool:
        list(pool.map(one, items))  # list(): re-raise anything a worker raised


def run_on_gpus(runs, output_root: str, extra: list[str], gpus: list[str], runs_per_gpu: int = 1) -> None:
    on_gpus(runs, lambda run, gpu, threads: run_one(run, output_root, extra, gpu, threads), gpus, runs_per_gpu)


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

    def work(self, stop_signals):
        from ..train import train  # here, in the job: submitting and --status never load training code

        return train(self.argv, stop_signals=stop_signals)

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

        preempt_signal = getattr(signal, f"SIG{submitit.JobEnvironment.USR_SIG}")
        try:
            return self.work((*STOP_SIGNALS, preempt_signal))
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


class WarmupJob(TrainJob):
    """A shared warm-up as a submitit job: trains the group's first tinit steps (resuming its own checkpoints when
    requeued), then seeds its runs, whose jobs wait for this one (Slurm: afterok)."""

    def __init__(self, folder: Path):
        super().__init__([], folder)

    def work(self, stop_signals):
        from .warmup_run import run_warmup

        return run_warmup(self.run_dir, stop_signals)


def jobs_file(output_root) -> Path:
    return grid_dir(output_root) / "jobs.json"


def read_jobs(output_root, part: str = "runs") -> dict[str, dict]:
    """The job record of every submitted run, keyed by task/signal/seed (part "warmups": of every shared
    warm-up, keyed by its folder's name)."""
    path = jobs_file(output_root)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["runs"] if part == "runs" else data.get(part, {})
    except (ValueError, KeyError, AttributeError):
        raise UsageError(f"{path} is not a job record written by 'ablate'; move it away and run again") from None


def job_states(records: list[dict]) -> list[tuple[str, str]]:
    """(state, detail) for each job record: the cluster's state (Slurm: sacct, asked once for all jobs; local: is
    the job's process alive, and how its log ends), with the job's own error line when it raised.

    Nothing here unpickles: submitit's result file of a job is a pickle in the output root, and on a shared scratch
    folder anyone who can write there could plant one whose code would run in the next ``--status``. A job's outcome
    is read from its stderr log as text instead (the run folder itself says whether the run finished)."""
    if not records:
        return []
    slurm = [r for r in records if r["launcher"] == "slurm"]
    if slurm:
        submitit = require_submitit()
        for record in slurm:  # constructing the job registers it with the shared sacct watcher
            submitit.SlurmJob(folder=record["log_folder"], job_id=record["job_id"])
        submitit.SlurmJob.watcher.update()
    states = []
    for record in records:
        # submitit's own messages go to the job's stdout log, the exception's traceback to its stderr log
        err, out = _log_tail(record, "err"), _log_tail(record, "out")
        failed = JOB_RAISED in out + err
        if record["launcher"] == "slurm":
            state = submitit.SlurmJob.watcher.get_state(record["job_id"], mode="cache").split()[0]  # "CANCELLED by 0"
        else:
            state = _local_state(record, out + err)
        states.append((state, _last_line(err) if failed else ""))
    return states


# What submitit's job process logs (submitit/core/submission.py; its logger writes to the job's stdout log) when the
# job raised, and after it returned; the exception's traceback is in the stderr log, whose last line is the error.
JOB_RAISED = "Submitted job triggered an exception"
JOB_SUCCEEDED = "Job completed successfully"


def job_log(record, stream: str = "err") -> Path:
    """The job's stderr (``err``, where its error line is) or stdout (``out``) log: submitit's JobPaths for task 0."""
    return Path(record["log_folder"]) / f"{record['job_id']}_0_log.{stream}"


def _log_tail(record, stream: str = "err", size: int = 1 << 16) -> str:
    try:
        with open(job_log(record, stream), "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - size, 0))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _local_state(record, log: str) -> str:
    try:  # a local job's id is its controller's process id
        os.kill(int(record["job_id"]), 0)
    except ProcessLookupError:
        if JOB_RAISED in log:
            return "FAILED"
        return "COMPLETED" if JOB_SUCCEEDED in log else "INTERRUPTED"  # ended without either: killed
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
    warmup_states = _warmup_states([book[name] for name in states], read_jobs(output_root, "warmups"))
    for run in runs:
        summary, name = summaries[run_name(run)], run_name(run)
        if summary is not None:
            run.status, run.detail = "finished", run_headline(run.run_dir, summary)
        elif name in states:
            state, error = states[name]
            notes = [f"job {book[name]['job_id']} ({book[name]['launcher']})", _checkpoint_note(run), error,
                     warmup_states.get(book[name].get("warmup"), "")]
            run.status, run.detail = state, ", ".join(n for n in notes if n)
        else:
            run.status, run.detail = "not submitted", _checkpoint_note(run)
    return book


def _warmup_states(records: list[dict], warmups: dict[str, dict]) -> dict[str, str]:
    """For --status: the state of each shared warm-up that unfinished runs wait for, as a note on those runs."""
    names = sorted({r["warmup"] for r in records if r.get("warmup") in warmups})
    notes = {}
    for name, (state, error) in zip(names, job_states([warmups[n] for n in names])):
        job = warmups[name]["job_id"]
        if state == "COMPLETED":
            continue
        notes[name] = (f"waits for shared warm-up job {job} ({state})" if is_active(state, warmups[name]) else
                       f"its shared warm-up job {job} ended {state}" + (f": {error}" if error else "")
                       + "; run the same command again to resume it")
    return notes


def make_executor(submitit, options: SubmititOptions, folder: Path, after: str | None = None):
    executor = submitit.AutoExecutor(folder=folder, cluster=SUBMITIT_LAUNCHERS[options.launcher])
    tasks = max(options.gpus_per_run, 1)  # one process per GPU
    executor.update_parameters(
        name="adalora-ablation", timeout_min=options.timeout_min, nodes=1, gpus_per_node=options.gpus_per_run,
        tasks_per_node=tasks, cpus_per_task=max(options.cpus_per_run // tasks, 1) if options.cpus_per_run else None,
        mem_gb=options.mem_gb, slurm_partition=options.partition,
        slurm_array_parallelism=options.array_parallelism,
    )
    if after is not None:  # start only once that job succeeded; never, if it failed (Slurm then cancels this one)
        executor.update_parameters(slurm_dependency=f"afterok:{after}",
                                   slurm_additional_parameters={"kill-on-invalid-dep": "yes"})
    return executor


def submit_grid(runs, output_root: str, extra: list[str], options: SubmititOptions, dry_run: bool,
                group_runs=lambda unstarted, root: []) -> None:
    """Submit every run that is neither finished nor still queued/running, as one job array where the cluster
    has them, and record the job ids in <output-root>/grid/jobs.json. The local executor has no queue to leave
    jobs in (they are children of this process), so with it wait for them and report how they ended.

    ``group_runs(unstarted runs, root)`` gives the shared warm-ups (grid/warmup.py): each is one job, submitted
    first; its runs' jobs depend on it (Slurm: afterok; the local executor: they are submitted once it ended)."""
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
    groups = group_runs([r for r in to_submit if latest_complete_checkpoint(r.run_dir) is None], root)
    if dry_run or not to_submit:
        return

    folder = grid_dir(root) / "submitit" / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    warmups = read_jobs(root, "warmups")
    waits = _submit_warmups(submitit, groups, options, folder, warmups)  # run name -> (warm-up name, job id)
    to_submit = [run for run in to_submit if run.status != "failed"]  # (a local warm-up that failed)
    # One batch (a job array on Slurm) per warm-up its runs wait for, one for the runs that wait for none.
    batches: dict[str | None, list] = {}
    for run in to_submit:
        batches.setdefault(waits.get(run_name(run), (None, None))[1], []).append(run)
    jobs = {}
    try:
        for after, batch in batches.items():
            executor = make_executor(submitit, options, folder, after if options.launcher == "slurm" else None)
            with executor.batch():
                for run in batch:
                    jobs[run_name(run)] = executor.submit(TrainJob(train_argv(run, root, extra), run.run_dir))
    except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedSubmissionError) as exc:
        lines = str(exc).strip().splitlines()  # sbatch's own message has been printed above
        raise UsageError(f"submitting the jobs failed: {lines[-1] if lines else type(exc).__name__}") from None
    submitted_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for run in to_submit:
        job = jobs[run_name(run)]
        book[run_name(run)] = {"task": run.task, "signal": run.signal, "seed": run.seed, "job_id": job.job_id,
                               "launcher": options.launcher, "submitted_at": submitted_at, "log_folder": str(folder)}
        if run_name(run) in waits:
            book[run_name(run)]["warmup"] = waits[run_name(run)][0]
        run.status = "resubmitted" if run.status == "would resubmit" else "submitted"
        run.detail = ", ".join(n for n in (f"job {job.job_id}", run.detail) if n)
    jobs_file(root).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(jobs_file(root), {"runs": book, "warmups": warmups})
    print(f"[grid] submitted {len(jobs)} run(s) with --launcher {options.launcher}; job logs in {folder}", flush=True)
    if options.launcher == "submitit-local":
        wait_for(list(jobs.values()), to_submit, root)


def _submit_warmups(submitit, groups, options: SubmititOptions, folder: Path, warmups: dict) -> dict:
    """Submit one job per shared warm-up and record it in ``warmups``; returns run name -> (warm-up, job id). The
    local executor runs the warm-ups to their end here; runs whose warm-up failed there are marked failed."""
    if not groups:
        return {}
    from .warmup import write_plan

    for group in groups:
        write_plan(group)
    executor = make_executor(submitit, options, folder)
    try:
        with executor.batch():
            jobs = [executor.submit(WarmupJob(group.folder.resolve())) for group in groups]
    except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedSubmissionError) as exc:
        lines = str(exc).strip().splitlines()
        raise UsageError(f"submitting the jobs failed: {lines[-1] if lines else type(exc).__name__}") from None
    submitted_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    waits = {}
    for group, job in zip(groups, jobs):
        warmups[group.name] = {"folder": str(group.folder.resolve()), "job_id": job.job_id,
                               "launcher": options.launcher, "submitted_at": submitted_at, "log_folder": str(folder),
                               "runs": [run_name(r) for r in group.members]}
        waits.update({run_name(r): (group.name, job.job_id) for r in group.members})
    print(f"[grid warm-up] submitted {len(jobs)} shared warm-up(s); their runs wait for them", flush=True)
    if options.launcher == "submitit-local":
        for group, job in zip(groups, jobs):
            job.wait()
            error = job.exception()
            if error is not None:
                reason = [line for line in str(error).strip().splitlines() if line.strip()]
                for run in group.members:
                    if latest_complete_checkpoint(run.run_dir) is None:
                        run.status = "failed"
                        run.detail = f"its shared warm-up {group.name} failed: {reason[-1] if reason else 'error'}"
    return waits


def wait_for(jobs, runs, output_root: Path) -> None:
    for job in jobs:
        job.wait()
    grid_status(runs, output_root)
    for run in runs:
        if run.status != "finished":
            run.status, run.detail = "failed", f"{run.status}, {run.detail}"
