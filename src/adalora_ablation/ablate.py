"""``adalora-ablation ablate``: run a task x signal x seed grid, one run at a time, safely.

Each run is a separate ``train --resume`` process, so a crash in one run cannot take the others down; finished
runs (a valid final_summary.json) are skipped and interrupted ones continue from their latest checkpoint.
Flags this command does not know are passed through to every ``train``.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .cli import OneLineArgumentParser
from .demo import DEMO_SIGNALS
from .resume import latest_complete_checkpoint
from .run_files import read_summary
from .signals import SIGNALS
from .tasks import TASK_NAMES
from .train import run_dir_for

CONTROL_SIGNALS = ("random", "uniform")


@dataclass
class GridRun:
    task: str
    signal: str
    seed: int
    run_dir: Path
    status: str = "pending"  # finished | skipped | failed | would run | would resume
    detail: str = ""


def plan(tasks, signals, seeds, output_root) -> list[GridRun]:
    return [GridRun(t, s, n, run_dir_for(output_root, t, s, n)) for t, s, n in itertools.product(tasks, signals, seeds)]


def run_one(run: GridRun, output_root: str, extra: list[str]) -> None:
    """Train one grid cell in its own process; keep the last line of its stderr as the reason if it fails."""
    cmd = [sys.executable, "-m", "adalora_ablation", "train", "--task", run.task, "--signal", run.signal,
           "--seed", str(run.seed), "--output-root", output_root, "--resume", "True", *extra]
    print(f"\n=== {run.task}/{run.signal}/{run.seed} ===", flush=True)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1)
    last_line = ""
    for line in proc.stderr:  # stream it through, remembering the last meaningful line
        sys.stderr.write(line)
        if line.strip():
            last_line = line.strip()
    proc.wait()
    if proc.returncode == 0 and read_summary(run.run_dir) is not None:
        run.status, run.detail = "finished", f"accuracy {read_summary(run.run_dir)['eval_accuracy']:.4f}"
    else:
        run.status, run.detail = "failed", last_line or f"exit code {proc.returncode}"


def status_table(runs: list[GridRun]) -> str:
    lines = ["| task | signal | seed | status | detail |", "|---|---|---|---|---|"]
    lines += [f"| {r.task} | {r.signal} | {r.seed} | {r.status} | {r.detail.replace('|', '/')} |" for r in runs]
    return "\n".join(lines)


def print_reports(tasks, output_root: str) -> None:
    from .report import build_report, to_markdown

    for task in tasks:
        try:
            print(f"\n## Report: {task}\n\n{to_markdown(build_report(output_root, task))}")
        except Exception as exc:  # a report problem must not hide the grid's own result
            print(f"\n(no report for {task}: {exc})")


def ablate_main(argv: list[str]) -> int:
    parser = OneLineArgumentParser(prog="adalora-ablation ablate", description=__doc__)
    parser.add_argument("--task", "--tasks", nargs="+", default=["rte"], choices=TASK_NAMES, dest="tasks")
    parser.add_argument("--signals", nargs="+", default=list(DEMO_SIGNALS), choices=list(SIGNALS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--with-controls", "--with_controls", action="store_true",
                        help=f"add the control signals {', '.join(CONTROL_SIGNALS)}")
    parser.add_argument("--output-root", "--output_root", default="outputs")
    parser.add_argument("--dry-run", "--dry_run", action="store_true", help="list what would run, run nothing")
    args, extra = parser.parse_known_args(argv)
    signals = list(dict.fromkeys(args.signals + (list(CONTROL_SIGNALS) if args.with_controls else [])))
    runs = plan(args.tasks, signals, args.seeds, args.output_root)

    for run in runs:
        if read_summary(run.run_dir) is not None:
            run.status, run.detail = "skipped", "already finished"
        elif args.dry_run:
            checkpoint = latest_complete_checkpoint(run.run_dir) if run.run_dir.exists() else None
            run.status = "would resume" if checkpoint else "would run"
            run.detail = f"from {checkpoint.name}" if checkpoint else ""
        else:
            run_one(run, args.output_root, extra)

    print(f"\n{status_table(runs)}")
    counts = {s: sum(r.status == s for r in runs) for s in ("finished", "skipped", "failed")}
    print(f"\n{counts['finished']} finished, {counts['skipped']} skipped, {counts['failed']} failed"
          + (f" (extra train flags: {' '.join(extra)})" if extra else ""))
    if not args.dry_run:
        print_reports(args.tasks, args.output_root)
    return 1 if counts["failed"] else 0
