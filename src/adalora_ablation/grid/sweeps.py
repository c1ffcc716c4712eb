"""Sweeps as grid axes (``ablate --sweep target_r=2,4,8``), and which existing run folders hold other settings.

A sweep with several values is an axis: its values name the run's folder (``<task>/<signal>/target_r=2/<seed>``,
run/identity.py) and reach ``train`` as flags plus ``--variant``. A sweep with one value varies nothing: it is the
same as passing that flag, and the run keeps the folder it would have without a sweep.

Comparing an existing folder with what the grid asks for needs the run's identity (args.RunSettings.identity:
presets, config file, defaults, transformers' TrainingArguments), computed lazily: only when a folder holds a
finished run or a checkpoint to compare with. Checking the grid's train arguments needs no torch.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ..args import RUN_CLASSES, TrainArgumentParser, parse_settings, run_identity
from ..errors import UsageError
from ..run.folder import latest_complete_checkpoint, read_summary
from ..run.lock import held_elsewhere
from ..run.identity import (
    canonical_value, decides_result, difference, read_identity, summary_settings, variant_name,
)

# What a sweep cannot vary: the grid's own axes, and what says where a run goes or how it resumes.
NOT_SWEEPABLE = {"task": "--task", "signal": "--signals", "seed": "--seeds", "output_root": "--output-root",
                 "variant": None, "resume": None, "overwrite": None, "resume_fallback": None}


@dataclass
class Variant:
    name: str = ""  # "" outside a sweep
    flags: list[str] = field(default_factory=list)  # the train flags that make it, --variant included


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``target_r=2,4`` (or ``target-r=2,4``) -> ("target_r", ["2", "4"]); ValueError naming the problem."""
    name, sep, values = text.partition("=")
    name = name.strip().lstrip("-").replace("-", "_")
    parts = [v.strip() for v in values.split(",")]
    if not sep or not name or not all(parts):
        raise ValueError(f"--sweep {text!r} is not NAME=V1,V2,... (e.g. --sweep target_r=2,4,8)")
    if len({canonical_value(v) for v in parts}) != len(parts):
        raise ValueError(f"--sweep {text!r} names a value twice")
    return name, parts


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def flag_given(name: str, argv: list[str]) -> bool:
    spellings = {f"--{name}", _flag(name)}
    return any(tok in spellings or tok.split("=", 1)[0] in spellings for tok in argv)


def check_sweeps(sweeps: list[tuple[str, list[str]]], extra: list[str]) -> None:
    """Every swept name is a train setting that decides a run's result, named once, and not also a plain flag."""
    known = TrainArgumentParser().settings_names()
    names = [name for name, _ in sweeps]
    for name in names:
        if name in NOT_SWEEPABLE:
            axis = NOT_SWEEPABLE[name]
            raise UsageError(f"--sweep {name} is not possible" + (f"; the grid's {axis} already lists its values"
                                                                  if axis else ": it does not change a run's result"))
        if name not in known:
            raise UsageError(f"--sweep {name}: train has no flag {_flag(name)} (see 'adalora-ablation train --help')")
        if names.count(name) > 1:
            raise UsageError(f"--sweep {name} is given twice; list all its values in one: --sweep {name}=V1,V2")
        if flag_given(name, extra):
            raise UsageError(f"{_flag(name)} is given both as a flag and as --sweep {name}; keep one")


def variants(sweeps: list[tuple[str, list[str]]]) -> list[Variant]:
    """The product of the sweeps' values. Sweeps of one value add their flag to every run and name no folder."""
    fixed = [arg for name, values in sweeps if len(values) == 1 for arg in (_flag(name), values[0])]
    axes = [(name, values) for name, values in sweeps if len(values) > 1]
    if not axes:
        return [Variant("", fixed)]
    found = []
    for combination in itertools.product(*(values for _, values in axes)):
        values = {name: value for (name, _), value in zip(axes, combination)}
        name = variant_name(values)
        flags = [arg for key, value in values.items() for arg in (_flag(key), value)]
        found.append(Variant(name, fixed + flags + ["--variant", name]))
    return found


def check_train_argvs(argvs: list[tuple[str, list[str]]]) -> None:
    """Before anything runs: every ``train`` the grid starts parses and passes train's checks (``--init-r 4
    --target-r 8`` does not); one line, naming the sweep's variant where there is one. No torch."""
    for variant, argv in argvs:
        try:
            parse_settings(argv)
        except UsageError as exc:
            raise UsageError(f"variant {variant}: {exc}" if variant else str(exc)) from None


def check_variants(sweeps) -> None:
    """A sweep over a setting that cannot change the result (logging, saving) is refused: it would only repeat
    runs."""
    groups = {f.name: group for cls, group in zip(RUN_CLASSES, ("run", "model", "data", "adalora"))
              for f in dataclasses.fields(cls)}
    idle = [name for name, _ in sweeps if not decides_result(groups.get(name, "training"), name)]
    if idle:
        raise UsageError(f"--sweep {idle[0]}: {_flag(idle[0])} does not change a run's result (it decides where or "
                         f"what a run writes); pass it as a plain flag")


def asked_settings(train_argv: list[str]) -> dict:
    """The result settings a ``train`` with these arguments would record (args.run_identity; loads transformers)."""
    return run_identity(train_argv)["settings"]


def recorded_settings(run_dir: Path) -> tuple[dict, str] | None:
    """The settings a folder's finished run, or else its newest checkpoint, or else the run another process is
    making in it, was made with, and where they were found; None if there is none or it records none (a checkpoint
    written before settings were recorded: train itself still compares its signal settings)."""
    summary = read_summary(run_dir)
    if summary is not None:
        settings = summary_settings(summary)
        return (settings, "in the folder") if settings is not None else None
    checkpoint = latest_complete_checkpoint(run_dir)
    if checkpoint is None:
        # A run that another live process holds (its lock) is made with the folder's settings, written once that
        # process has loaded its model; a folder nobody holds, without a checkpoint, starts over anyway.
        found = read_identity(run_dir) if held_elsewhere(run_dir) is not None else None
        return (found["settings"], "in the run in progress") if found else None
    found = read_identity(checkpoint) or read_identity(run_dir)
    return (found["settings"], "in the checkpoint") if found else None


def mark_other_settings(runs, train_argv) -> list:
    """Set status 'other settings' (detail: the settings that differ) on every run whose folder holds a finished
    run or a checkpoint made with other settings than the grid asks for; return the other runs. Such a folder is
    never skipped as done, reported or resumed as this run."""
    rest = []
    for run in runs:
        recorded = recorded_settings(run.run_dir)
        other = difference(recorded[0], asked_settings(train_argv(run)), recorded[1]) if recorded else None
        if other:
            run.status, run.detail = "other settings", other
        else:
            rest.append(run)
    return rest
