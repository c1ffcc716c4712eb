"""``adalora-ablation ablate``: run a task x signal x seed grid safely, here or on a Slurm cluster.

Each run is a separate ``train --resume True`` (its own process or job), so a crash in one run cannot take the
others down; finished runs (a valid final_summary.json) are skipped and interrupted ones continue from their latest
checkpoint. Flags this command does not know are passed through to every ``train``, and a YAML/JSON config file
given first (``ablate CONFIG.yaml --signals ...``) reaches every ``train`` as its first argument, as in ``train
CONFIG.yaml``: below every flag; its task, signal, seed and output root are the grid's defaults.

Runs that differ only in their signal, its settings and --target-r share their first tinit steps: each such group
trains them once (a shared warm-up, before its runs; --no-share-warmup turns this off; --dry-run shows the groups).

Launchers: ``local`` runs one run at a time here, or with ``--gpus 0,1`` one run per listed GPU at once
(``--runs-per-gpu K``: up to K on each); ``slurm`` submits one job per run through submitit and records the job
ids in <output-root>/grid/jobs.json (run the same command again to resubmit failed or pre-empted runs;
``--status`` shows where every run stands);
``submitit-local`` is the same submission on this machine, for trying it out without a cluster.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from .. import signals as registry
from ..args import is_config_file, read_options
from ..errors import OneLineArgumentParser, UsageError, at_least, checked
from .launchers import (
    SUBMITIT_LAUNCHERS,
    SubmititOptions,
    grid_status,
    parse_gpus,
    parse_slurm_time,
    require_submitit,
    on_gpus,
    run_on_gpus,
    run_one,
    run_warmup_here,
    submit_grid,
    train_argv,
)
from .warmup import plan_warmups, write_plan
from ..analysis.markdown import table
from ..run.lock import held_elsewhere
from ..run.folder import latest_complete_checkpoint, read_summary, run_dir_for
from ..data.tasks import CUSTOM, TASK_CHOICES, custom_task_name
from .sweeps import (
    Variant, asked_settings, check_sweeps, check_train_argvs, check_variants, flag_given, mark_other_settings,
    parse_sweep, variants,
)

LAUNCHERS = ("local", *SUBMITIT_LAUNCHERS)
# Flags that only mean something to a submitit launcher: with --launcher local they would be silently ignored
# (and a forgotten --launcher slurm would run the whole grid here).
SUBMITIT_FLAGS = ("slurm_partition", "gpus_per_run", "time", "cpus_per_run", "mem_gb", "slurm_array_parallelism")
DEFAULT_TIME = "24:00:00"


@dataclass
class GridRun:
    task: str
    signal: str
    seed: int
    run_dir: Path
    status: str = "pending"  # finished | skipped | failed | other settings | would run | a submitit job's state ...
    detail: str = ""
    variant: str = ""  # the settings a sweep varies (target_r=2); "" outside a sweep
    train_flags: list[str] = field(default_factory=list)  # the flags that make the variant, --variant included


def plan(tasks, signals, seeds, output_root, grid_variants: list[Variant] | None = None,
         folders: dict[str, str] | None = None) -> list[GridRun]:
    """``folders``: task -> its folder under the output root where that differs (custom -> custom-<name>). A signal
    that reads one task's answer (the planted task's oracle) is planned for that task only."""
    folders = folders or {}
    return [GridRun(t, s, n, run_dir_for(output_root, folders.get(t, t), s, n, v.name), variant=v.name,
                    train_flags=v.flags)
            for t, s, v, n in itertools.product(tasks, signals, grid_variants or [Variant()], seeds)
            if registry.runs_on(s, t)]


def task_folders(tasks, extra: list[str], file_options: dict | None = None) -> dict[str, str]:
    """--task custom writes its runs to custom-<name>, named after the --train-file passed through to train (or set
    by the config file)."""
    if CUSTOM not in tasks:
        return {}
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--train-file", "--train_file")
    train_file = parser.parse_known_args(extra)[0].train_file or (file_options or {}).get("train_file")
    if not train_file:
        raise UsageError("--task custom needs --train-file (with --validation-file and --text-columns), which "
                         "ablate passes to every train")
    return {CUSTOM: custom_task_name(train_file)}


def status_table(runs: list[GridRun]) -> str:
    if any(r.variant for r in runs):  # the variant column only where a sweep made variants
        return table(["task", "signal", "variant", "seed", "status", "detail"],
                     [[r.task, r.signal, r.variant, r.seed, r.status, r.detail] for r in runs])
    return table(["task", "signal", "seed", "status", "detail"],
                 [[r.task, r.signal, r.seed, r.status, r.detail] for r in runs])


def print_reports(tasks, output_root: str) -> None:
    # here, not at the top: the statistics and figures (scipy, matplotlib) would slow every --status and --dry-run
    from ..analysis.suite import with_suite
    from ..analysis.variants import build_reports, reports_markdown, write_budget_curve

    for task in tasks:
        try:
            reports = build_reports(output_root, task)  # one per sweep variant
            text = with_suite("markdown", reports_markdown(reports), output_root, task)  # a planted suite: first
            print(f"\n## Report: {task}\n\n{text}")
            curve = write_budget_curve(reports)
            if curve is not None:
                print(f"\nBudget curve: {curve}")
        except Exception as exc:  # a report problem must not hide the grid's own result
            print(f"\n(no report for {task}: {exc})")


SEED_COUNT = "n="  # --seeds n=5: seeds 1..5


def parse_seed(text: str) -> int | range:
    """One --seeds value: a seed number, or n=N for the seeds 1..N."""
    if text.startswith(SEED_COUNT):
        count = text.removeprefix(SEED_COUNT)
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{text!r}: n= takes a number of seeds >= 1, e.g. --seeds n=5 for seeds 1..5")
        return range(1, int(count) + 1)
    try:
        seed = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a seed number; give seeds (--seeds 1 2 3) or a count "
                         f"(--seeds n=5: seeds 1..5)") from None
    if seed < 0:  # the report numbers seeds 0, 1, 2, ... and would never find the runs
        raise ValueError(f"{text!r}: seeds are numbers >= 0, e.g. --seeds 1 2 3")
    return seed


def seed_list(values: list[int | range]) -> list[int]:
    """The seeds of --seeds; a count stands alone (with other seeds it would be unclear which are meant)."""
    counts = [v for v in values if isinstance(v, range)]
    if counts and len(values) > 1:
        raise UsageError(f"--seeds {SEED_COUNT}{len(counts[0])} stands alone: give either a count or the seeds "
                         f"themselves (--seeds 1 2 3)")
    return list(counts[0]) if counts else values


def _suite_size(n: int) -> int:
    if n < 2:  # a sweep of one value names no folder: the report could not tell it is a suite
        raise ValueError(f"must be at least 2 (got {n}); for one drawn spec pass --planted-draw 0 through to train")
    return n


def build_parser(registry) -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="adalora-ablation ablate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="signals (role: baseline, signal or control):\n"
                                          + registry.describe_signals())
    parser.add_argument("--task", "--tasks", nargs="+", default=["rte"], choices=TASK_CHOICES, dest="tasks")
    groups = ", ".join(f"{g} ({' '.join(registry.expand_signals([g]))})" for g in registry.group_names()[:-1])
    parser.add_argument("--signals", nargs="+", default=["seed"], metavar="SIGNAL_OR_GROUP",
                        choices=registry.group_names() + registry.signal_names(),
                        help=f"signals and named groups: {groups}, all (every signal); default: seed")
    parser.add_argument("--seeds", nargs="+", type=checked(parse_seed), default=[42], metavar="SEED",
                        help="seeds to run, e.g. --seeds 1 2 3 (default 42); --seeds n=N: the N seeds 1..N (as the "
                             "report's seed plan gives them)")
    registry.add_include_flag(parser)
    parser.add_argument("--sweep", action="append", default=[], type=checked(parse_sweep), metavar="NAME=V1,V2",
                        help="a grid axis over any train setting, e.g. --sweep target_r=2,4,8 (repeatable: the grid "
                             "is tasks x signals x seeds x every sweep's values); each run goes to "
                             "<task>/<signal>/<NAME=V>/<seed>; a sweep of one value is the same as the plain flag")
    parser.add_argument("--planted-suite", "--planted_suite", type=checked(_suite_size, int), metavar="N",
                        help="--task planted: a benchmark over N planted specs drawn from --planted-seed, the same "
                             "as --sweep planted_draw=0,...,N-1: each run goes to <task>/<signal>/planted_draw=K/"
                             "<seed>, and the report adds the suite's regret against the oracle")
    parser.add_argument("--with-controls", "--with_controls", action="store_true",
                        help=f"add the control signals {', '.join(registry.signal_names('control'))}")
    parser.add_argument("--output-root", "--output_root", default="outputs")
    parser.add_argument("--dry-run", "--dry_run", action="store_true", help="list what would run, run nothing")
    parser.add_argument("--status", action="store_true",
                        help="show each run's state (finished, its job's state, or not submitted) and exit")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: here; slurm: one submitit job per run; submitit-local: submitit on this machine")
    parser.add_argument("--gpus", type=checked(parse_gpus),
                        help="local launcher: run up to one run per listed GPU at once, e.g. 0,1,2,3")
    parser.add_argument("--runs-per-gpu", "--runs_per_gpu", type=checked(at_least(1), int),
                        help="with --gpus: up to this many runs at once on each listed GPU (default 1); small models "
                             "leave most of a large GPU idle")
    parser.add_argument("--no-share-warmup", "--no_share_warmup", dest="share_warmup", action="store_false",
                        help="train every run's warm-up (its first tinit steps) itself instead of once per group of "
                             "runs that differ only in signal, signal settings and --target-r")
    submitit = parser.add_argument_group("slurm / submitit-local launchers")
    submitit.add_argument("--slurm-partition", "--slurm_partition")
    submitit.add_argument("--gpus-per-run", "--gpus_per_run", type=checked(at_least(0), int),
                          help="GPUs (and processes) per run (default 1)")
    submitit.add_argument("--time", type=checked(parse_slurm_time),
                          help=f"time limit per job, Slurm format (default {DEFAULT_TIME}); a job that reaches it "
                               "is requeued and resumes from its checkpoints")
    submitit.add_argument("--cpus-per-run", "--cpus_per_run", type=checked(at_least(1), int))
    submitit.add_argument("--mem-gb", "--mem_gb", type=checked(at_least(1), float))
    submitit.add_argument("--slurm-array-parallelism", "--slurm_array_parallelism", type=checked(at_least(1), int),
                          help="at most this many runs of the job array at once")
    return parser


def check_launcher_flags(args) -> None:
    if args.runs_per_gpu is not None and args.gpus is None:
        raise UsageError("--runs-per-gpu needs --gpus (the GPUs to share), e.g. --gpus 0,1 --runs-per-gpu 4")
    if args.gpus is not None and args.launcher != "local":
        raise UsageError(f"--gpus picks GPUs on this machine (--launcher local); with --launcher {args.launcher} "
                         f"use --gpus-per-run")
    if args.launcher == "local":
        misplaced = [name for name in SUBMITIT_FLAGS if getattr(args, name) is not None]
        if misplaced:
            raise UsageError(f"--{misplaced[0].replace('_', '-')} is for --launcher slurm (or submitit-local); "
                             f"add --launcher slurm or drop it")
    else:
        require_submitit()


def submitit_options(args) -> SubmititOptions:
    return SubmititOptions(launcher=args.launcher, timeout_min=args.time or parse_slurm_time(DEFAULT_TIME),
                           gpus_per_run=1 if args.gpus_per_run is None else args.gpus_per_run,
                           cpus_per_run=args.cpus_per_run, mem_gb=args.mem_gb, partition=args.slurm_partition,
                           array_parallelism=args.slurm_array_parallelism)


def shared_warmups(unstarted: list[GridRun], args, extra: list[str], root=None):
    """The warm-up groups among the runs that have not started (no checkpoint), announced on stdout."""
    if not args.share_warmup:
        return []
    root = args.output_root if root is None else root
    groups = plan_warmups(unstarted, lambda run: train_argv(run, root, extra), root,
                          lambda run: asked_settings(train_argv(run, root, extra)))
    for group in groups:
        print(f"[grid warm-up] {group.describe()}", flush=True)
        for run in group.members:
            run.detail = ", ".join(d for d in (run.detail, f"after shared warm-up {group.name}") if d)
    if groups:
        saved = sum(g.saved_steps for g in groups)
        print(f"[grid warm-up] shared warm-ups save {saved:,} optimizer steps in all", flush=True)
    return groups


def run_here(runs: list[GridRun], args, extra: list[str]) -> None:
    todo, unstarted = [], []
    for run in runs:
        owner = held_elsewhere(run.run_dir)
        if read_summary(run.run_dir) is not None:
            run.status, run.detail = "skipped", "already finished"
        elif owner is not None:
            run.status, run.detail = "running elsewhere", owner.describe()
        else:
            checkpoint = latest_complete_checkpoint(run.run_dir)
            if checkpoint is None:
                unstarted.append(run)
            if args.dry_run:
                run.status = "would resume" if checkpoint else "would run"
                run.detail = f"from {checkpoint.name}" if checkpoint else ""
            else:
                todo.append(run)
    groups = shared_warmups(unstarted, args, extra)
    if args.dry_run:
        return
    for group in groups:
        write_plan(group)
    # The warm-ups first (with the runs' GPUs and thread counts), then every run; a run whose warm-up failed
    # before seeding it does not start (running the same command again resumes the warm-up).
    if args.gpus:
        on_gpus(groups, run_warmup_here, args.gpus, args.runs_per_gpu or 1)
    else:
        for group in groups:
            run_warmup_here(group)
    for group in groups:
        for run in group.members:
            if group.failure and latest_complete_checkpoint(run.run_dir) is None:
                run.status, run.detail = "failed", f"its shared warm-up {group.name} failed: {group.failure}"
                todo.remove(run)
    if args.gpus:
        run_on_gpus(todo, args.output_root, extra, args.gpus, args.runs_per_gpu or 1)
    else:
        for run in todo:
            run_one(run, args.output_root, extra)


def counts_line(runs: list[GridRun], statuses) -> str:
    return ", ".join(f"{sum(r.status == s for r in runs)} {s}" for s in statuses)


def planted_suite_sweep(n: int, tasks: list[str], sweeps, extra: list[str]) -> tuple[str, list[str]]:
    """--planted-suite N as the sweep it is: planted_draw over 0..N-1 (each draw one spec, data/planted_spec.py)."""
    if tasks != ["planted"]:
        raise UsageError(f"--planted-suite draws planted specs: it needs --task planted alone (got --task "
                         f"{' '.join(tasks)})")
    if any(name == "planted_draw" for name, _ in sweeps):
        raise UsageError("--planted-suite N already sweeps planted_draw over 0..N-1; drop --sweep planted_draw")
    for flag in ("planted_draw", "planted_modules"):
        if flag_given(flag, extra):
            raise UsageError(f"--planted-suite draws every run's spec; drop --{flag.replace('_', '-')}")
    return "planted_draw", [str(k) for k in range(n)]


GRID_DEFAULTS = {"task": "tasks", "signal": "signals", "seed": "seeds", "output_root": "output_root"}


def config_defaults(path: str, options: dict) -> dict:
    """A config file's task, signal, seed and output root, as defaults of the grid's own flags (--task, --signals,
    --seeds, --output-root): ``ablate CONFIG.yaml`` runs what ``train CONFIG.yaml`` runs, unless a flag says
    otherwise."""
    given = {GRID_DEFAULTS[name]: str(value) for name, value in options.items()
             if name in GRID_DEFAULTS and value is not None}
    if "seeds" in given:
        try:
            given["seeds"] = parse_seed(given["seeds"])
        except ValueError as exc:
            raise UsageError(f"config file {path}: seed {exc}") from None
    return {dest: value if dest == "output_root" else [value] for dest, value in given.items()}


def ablate_main(argv: list[str]) -> int:
    registry.load_signals(registry.included_modules(argv))  # before --signals is checked against the names
    argv = list(argv)
    config = [str(Path(argv.pop(0)).resolve())] if argv and is_config_file(argv[0]) else []  # jobs may start elsewhere
    parser = build_parser(registry)
    file_options = {}
    if config:
        file_options = {name.replace("-", "_"): value for name, value in read_options(Path(config[0])).items()}
        parser.set_defaults(**config_defaults(config[0], file_options))
    args, extra = parser.parse_known_args(argv)
    args.seeds = seed_list(args.seeds)
    if args.include:  # every run (and shared warm-up) imports them too: its --signal must be known there
        extra = ["--include", *args.include, *extra]
    extra = [*config, *extra]  # train_argv puts the config file first, where train reads it
    check_launcher_flags(args)
    controls = registry.signal_names("control") if args.with_controls else []
    signals = registry.expand_signals(args.signals + controls)
    if args.planted_suite:
        args.sweep.append(planted_suite_sweep(args.planted_suite, args.tasks, args.sweep, extra))
    if args.sweep:
        check_sweeps(args.sweep, extra)
    folders = task_folders(args.tasks, extra, file_options)
    runs = plan(args.tasks, signals, args.seeds, args.output_root, variants(args.sweep), folders)
    # every train command the grid starts parses and passes train's checks, before anything runs (no torch)
    firsts = {(r.task, r.signal, r.variant): r for r in runs}
    check_train_argvs([(r.variant, train_argv(r, args.output_root, extra)) for r in firsts.values()])
    if args.sweep:
        check_variants(args.sweep)

    def argv_of(run):
        return train_argv(run, args.output_root, extra)

    if args.status:
        grid_status(runs, args.output_root)
        mark_other_settings(runs, argv_of)
        print(status_table(runs))
        states = dict.fromkeys(r.status for r in runs)  # in order of first appearance
        print(f"\n{counts_line(runs, states)}")
        return 0

    # A folder holding a run or checkpoint made with other settings is listed as such, never skipped or resumed.
    same = mark_other_settings(runs, argv_of)
    if args.launcher == "local":
        run_here(same, args, extra)
    else:
        submit_grid(same, args.output_root, extra, submitit_options(args), args.dry_run,
                    lambda unstarted, root: shared_warmups(unstarted, args, extra, root))
    # Runs that ended here (local, or the local executor, which waits for its jobs) are counted as finished or
    # failed; Slurm jobs and dry runs by what happened to them now (submitted, queued, would run, ...).
    ended_here = not args.dry_run and args.launcher != "slurm"
    rare = [s for s in ("interrupted", "running elsewhere", "other settings") if any(r.status == s for r in runs)]
    ended = ("finished", "skipped", "failed", *rare)
    statuses = ended if ended_here or args.launcher == "local" else dict.fromkeys(r.status for r in runs)

    print(f"\n{status_table(runs)}")
    flags = extra[len(config):]
    given = [f"config file: {path}" for path in config] + ([f"extra train flags: {' '.join(flags)}"] if flags else [])
    print(f"\n{counts_line(runs, statuses)}" + (f" ({'; '.join(given)})" if given else ""))
    if ended_here:
        print_reports([folders.get(t, t) for t in args.tasks], args.output_root)
    return 1 if any(r.status == "failed" for r in runs) else 0
