"""The offline demo on tiny-deberta. By default on the planted task, whose answer is known: the study's four
signals and the oracle, oracle_fixed, uniform and random controls, with agreement with the teacher, adapter effect
and how much of the planted rank (and of the planted updates' effect on the data) each signal found.
``--task synthetic``: the keyword task, which every signal solves."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from .args import parse_settings
from .errors import OneLineArgumentParser, at_least, checked
from .logs import configure_console
from .analysis.markdown import table
from .data.tasks import TASKS, metric_fields
from .run.folder import run_dir_for
from .signals import SIGNALS, add_include_flag, expand_signals, group_names, included_modules, load_signals

DEMO_TASKS = ("planted", "synthetic")
DEFAULT_SIGNALS = {"planted": ["seed", "oracle", "oracle_fixed", "uniform", "random"], "synthetic": ["seed"]}


def comparison_table(summaries: list[dict]) -> str:
    planted = any("planted_recall" in s for s in summaries)
    main = metric_fields(TASKS[summaries[0]["task"]], main_only=True)[0]  # planted: agreement with the teacher
    header = ["signal", main.label, "adapter effect"] + (["planted recall", "data recovery", "planted share"]
                                                          if planted else [])
    rows = []
    for s in summaries:
        effect = s.get("adapter_effect")
        row = [s["signal"], f"{s[main.field]:.4f}", "—" if effect is None else f"{effect:+.4f}"]
        if planted:
            recovered = s.get("planted_data_recovery")
            row += [f"{s['planted_recall']:.3f}", "—" if recovered is None else f"{recovered:.3f}",
                    f"{s['planted_share']:.3f}"]
        rows.append(row + [s["total_rank"], s["target_budget"], "pass" if s["budget_check_passed"] else "FAIL"])
    return table(header + ["total rank", "budget", "budget check"], rows)


class _LinePrefixed:
    """A console stream whose every line starts with the run's name, written in one piece: runs that share the
    console keep their lines apart, as ablate's local grid does."""

    def __init__(self, stream):
        self.stream, self.prefix, self._partial = stream, "", ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        if lines:
            self.stream.write("".join(f"{self.prefix}{line}\n" for line in lines))
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, encoding, fileno: the console's
        return getattr(self.stream, name)


def usable_cores() -> int:
    """The cores this process may run on: a Slurm job or a container may be given fewer than the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _start_worker(threads: int) -> None:
    # before torch is imported in this process: its thread pool is sized from this
    os.environ["OMP_NUM_THREADS"] = str(threads)
    sys.stdout, sys.stderr = _LinePrefixed(sys.stdout), _LinePrefixed(sys.stderr)
    configure_console()  # as the command line does in its own process


def _train_in_worker(signal: str, argv: list[str]) -> dict:
    sys.stdout.prefix = sys.stderr.prefix = f"[{signal}] "
    from .train import train

    return train(argv)


def train_all(runs: dict[str, list[str]], jobs: int) -> list[dict]:
    """Train every run and return their summaries in order: one after another in this process (``jobs`` 1), or
    ``jobs`` at a time, each worker process with its share of the cores. A tiny model gains next to nothing from a
    second thread, so on 2 cores two runs at a time finish the demo in about half the time, with the same numbers."""
    jobs = min(jobs, len(runs))
    if jobs <= 1:
        from .train import train

        summaries = []
        for signal, argv in runs.items():
            print(f"\n=== demo: {signal} ===", flush=True)
            summaries.append(train(argv))
        return summaries
    threads = max(usable_cores() // jobs, 1)
    print(f"\n=== demo: {len(runs)} runs, {jobs} at a time ({threads} CPU thread{'s' * (threads > 1)} each); each "
          "line starts with its run's signal ===", flush=True)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_start_worker,
                             initargs=(threads,)) as pool:
        return list(pool.map(_train_in_worker, runs, runs.values()))


def demo_main(argv: list[str]) -> int:
    load_signals(included_modules(argv))
    parser = OneLineArgumentParser(prog="adalora-ablation demo", description=__doc__)
    add_include_flag(parser)
    parser.add_argument("--task", choices=DEMO_TASKS, default="planted",
                        help="planted (default: the answer is known) or synthetic (the keyword task)")
    parser.add_argument("--output-root", "--output_root", default="outputs/demo",
                        help="run folders go to <output-root>/<task>/<signal>/<seed> (default outputs/demo)")
    parser.add_argument("--signals", nargs="+", default=None, choices=group_names() + list(SIGNALS),
                        metavar="SIGNAL_OR_GROUP", help="signals or groups (seed, table4, peers, controls, all); "
                                                        "default: seed, the study's four signals, plus oracle, "
                                                        "oracle_fixed, uniform and random on the planted task")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-steps", "--max_steps", type=int, default=None, help="override the demo's 300 steps")
    parser.add_argument("--jobs", type=checked(at_least(1), int), default=usable_cores(),
                        help="runs trained at once, each in a process of its own with its share of the CPU threads "
                             "(default: one per core this process may use); 1: one after another in this process")
    args = parser.parse_args(argv)

    extra = ["--max_steps", str(args.max_steps)] if args.max_steps else []
    runs = {}
    for signal in expand_signals(args.signals or DEFAULT_SIGNALS[args.task]):
        if SIGNALS[signal].only_task not in (None, args.task):
            print(f"\n=== demo: {signal} skipped (it runs on --task {SIGNALS[signal].only_task} only) ===")
            continue
        runs[signal] = ["--task", args.task, "--signal", signal, "--seed", str(args.seed), "--output_root",
                        args.output_root, "--overwrite", "True", *extra]
        parse_settings(runs[signal])  # every run's arguments checked before the first trains (and before torch)
    if not runs:
        print(f"\nno signal to run on --task {args.task}")
        return 2
    summaries = train_all(runs, args.jobs)
    if args.task == "planted":
        spec = ", ".join(f"{name}={rank}" for name, rank in summaries[0]["planted"]["spec"].items())
        print(f"\nPLANTED task (tiny random DeBERTa; labels from a teacher with planted low-rank updates in {spec}; "
              f"final budget {summaries[0]['target_budget']} triplets). Planted recall 1.0: every planted module "
              "holds its planted rank; data recovery: how much of the planted updates' effect on the validation "
              "inputs the learned updates reproduce (1.0: all of it); oracle is the upper reference.")
    else:
        print("\nSYNTHETIC demo (tiny random DeBERTa, keyword task): these numbers say nothing about GLUE.")
    print(comparison_table(summaries))
    print(f"\nRun folders: {run_dir_for(args.output_root, args.task, '<signal>', args.seed)}/. Real runs: "
          "bash scripts/run_rte.sh combo 42 --data-dir /path/to/glue")
    return 0 if all(s["budget_check_passed"] for s in summaries) else 1
