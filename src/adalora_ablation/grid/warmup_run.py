"""``adalora-ablation warmup FOLDER``: train a group's shared warm-up once, then seed every member's run folder.

The warm-up is an ordinary ``train --resume True`` of the group's first run (its flags, its lock, its periodic
checkpoints: a killed warm-up resumes) with two differences: the allocator tracks every member's signal on the same
gradients, and training stops with a checkpoint at step ``tinit``. Each member then gets, in its own run folder and
under its own lock, that checkpoint with its own signal's state (a normal, verified checkpoint-<tinit>) and the
warm-up's logs, so that its ``train --resume True`` continues through the normal resume path as if it had trained
the first ``tinit`` steps itself. Members that already have a checkpoint or a summary, or whose folder another
process holds, are left alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adalora.shared_warmup import SharedWarmupAllocator, StopAtWarmupEnd
from ..args import parse_settings
from ..errors import UsageError
from ..run.folder import (
    ALLOCATOR_STATE, MANIFEST, METRICS, RANK_PATTERN, SHARED_WARMUP, SIGNAL_SCORES, atomic_write,
    complete_checkpoints, read_summary, rewind_logs, write_json_atomic, write_manifest,
)
from ..run.lock import RunLock
from ..run.preemption import STOP_SIGNALS
from ..run.resume import load_checkpoint_state
from ..signals import SignalConfig
from ..run.identity import IDENTITY_FILE, difference
from ..run.life import clear_run_folder
from ..train import signal_config_for, train
from .warmup import DONE, PLAN, TRAIN_DIR, VARIANTS, variant_of, warmup_identity

logger = logging.getLogger(__name__)


@dataclass
class Member:
    name: str
    run_dir: Path
    variant: str
    argv: list[str]
    signal: str
    config: SignalConfig
    target_r: int
    identity: dict  # the run's settings and fingerprint (run/identity.py), as its own train computes them


class WarmupSession:
    """What ``train`` needs to run a shared warm-up instead of a run: the folder, the allocator, the stop."""

    def __init__(self, folder: Path, variants: dict[str, tuple[str, SignalConfig]], tinit: int, identity: dict):
        self.folder = Path(folder) / TRAIN_DIR
        self.variants = variants
        self.callbacks = [StopAtWarmupEnd(tinit)]
        self.identity = identity  # the warm-up's settings (warmup_identity): what its checkpoints are checked against

    def install_allocator(self, peft_model, config: SignalConfig) -> SharedWarmupAllocator:
        adalora = peft_model.base_model
        name = adalora.trainable_adapter_name
        # Its own settings are only what a resume checks: the seed, which every member shares (the leading run's
        # signal settings would make a resume by a grid that lists another run first refuse the checkpoint).
        allocator = SharedWarmupAllocator(adalora.model, adalora.peft_config[name], name, self.variants,
                                          SignalConfig(seed=config.seed))
        adalora.rankallocator = allocator
        return allocator


def read_members(folder: Path) -> list[Member]:
    """The members plan.json lists, each with its settings as its own ``train`` resolves them (in this process: the
    same launcher, the same number of processes as the member's run)."""
    try:
        plan = json.loads((folder / PLAN).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{folder / PLAN} is missing or unreadable ({type(exc).__name__}); it is written by "
                         f"'ablate', which starts the warm-up") from None
    members = []
    for entry in plan["members"]:
        settings = parse_settings(entry["argv"])
        asked = settings.identity()
        members.append(Member(entry["name"], Path(entry["run_dir"]), variant_of(asked["settings"]), entry["argv"],
                              settings.run.signal, signal_config_for(settings.adalora, settings.training.seed),
                              settings.adalora.target_r, asked))
    return members


def shared_identity(folder: Path, members: list[Member]) -> dict:
    """The warm-up's settings, which every member shares; one line (exit 2) naming the first that does not."""
    shared = warmup_identity(members[0].identity["settings"])
    for member in members[1:]:
        other = difference(shared["settings"], warmup_identity(member.identity["settings"])["settings"],
                           where=f"in {members[0].name}")
        if other:
            raise UsageError(f"{folder / PLAN} lists runs that cannot share a warm-up ({other} in {member.name}); "
                             f"run the same ablate again to plan it anew")
    return shared


def check_recorded(folder: Path, done: dict, shared: dict) -> None:
    """A finished warm-up seeds only runs with its own settings: refused in one line otherwise (never spliced)."""
    recorded = done.get("settings")
    if not isinstance(recorded, dict):
        raise UsageError(f"the shared warm-up in {folder} does not record its settings (made by an older version); "
                         f"remove {folder} to train it again")
    other = difference(recorded, shared["settings"], where="in the warm-up")
    if other:
        raise UsageError(f"the shared warm-up in {folder} was trained with other settings ({other}); its runs would "
                         f"mix two configurations: remove {folder} to train it again")


def tracked(folder: Path, members: list[Member]) -> list[str]:
    """The variants this warm-up tracks: fixed by its first start (its checkpoints hold exactly those states)."""
    path = folder / VARIANTS
    if path.exists() and complete_checkpoints(folder / TRAIN_DIR):
        return json.loads(path.read_text(encoding="utf-8"))["variants"]
    variants = list(dict.fromkeys(m.variant for m in members))
    write_json_atomic(path, {"variants": variants})
    return variants


def run_warmup(folder: Path, stop_signals=STOP_SIGNALS) -> list[str]:
    """Train the warm-up (unless done), then seed the members; returns the names of the members seeded."""
    folder = Path(folder)
    members = read_members(folder)
    leader = members[0]
    shared = shared_identity(folder, members)
    tinit = shared["settings"]["tinit"]
    if tinit == 0:
        return []
    if (folder / DONE).exists():
        check_recorded(folder, json.loads((folder / DONE).read_text(encoding="utf-8")), shared)
    variants = tracked(folder, members)
    checkpoint = folder / TRAIN_DIR / f"checkpoint-{tinit}"
    if not (folder / DONE).exists():
        if not (checkpoint / MANIFEST).is_file():  # else: killed between its checkpoint and the marker
            by_variant = {m.variant: (m.signal, m.config) for m in reversed(members) if m.variant in variants}
            missing = [v for v in variants if v not in by_variant]
            if missing:
                raise UsageError(f"the warm-up in {folder} tracks {', '.join(missing)}, which none of this grid's "
                                 f"runs uses; remove {folder} to start it over")
            session = WarmupSession(folder, {v: by_variant[v] for v in variants}, tinit, shared)
            train(leader.argv, stop_signals, warmup=session)
        if int(os.environ.get("RANK", "0")) != 0:
            return []  # one process of a multi-process warm-up seeds the members
        write_json_atomic(folder / DONE, {"step": tinit, "variants": variants, **shared})
    if int(os.environ.get("RANK", "0")) != 0:
        return []
    return seed_members(folder, checkpoint, [m for m in members if m.variant in variants])


def seed_members(folder: Path, checkpoint: Path, members: list[Member]) -> list[str]:
    try:
        state = load_checkpoint_state(checkpoint)  # the manifest verifies, every file loads safely
    except ValueError as problem:
        raise UsageError(f"the shared warm-up's checkpoint cannot seed runs: {problem}; remove {folder} to train "
                         f"the warm-up again") from None
    seeded = []
    for member in members:
        try:
            lock = RunLock(member.run_dir, logger.warning).acquire()
        except Exception as exc:  # held by a live process, or not a folder: the run will say so when it starts
            logger.warning(f"[warm-up] {member.name} not seeded: {str(exc).splitlines()[0]}")
            continue
        try:
            if read_summary(member.run_dir) is not None or complete_checkpoints(member.run_dir):
                logger.info(f"[warm-up] {member.name} already has a checkpoint or a summary: left alone")
                continue
            seed_one(folder, checkpoint, state, member)
            seeded.append(member.name)
            logger.info(f"[warm-up] seeded {member.run_dir} with {checkpoint.name} ({member.variant})")
        finally:
            lock.release()
    return seeded


def seed_one(folder: Path, checkpoint: Path, state: dict, member: Member) -> None:
    """The member's run folder as its own run would have left it at step tinit: logs first, checkpoint last (its
    folder appears complete, by one rename), so that a seeding cut short leaves a folder that starts clean."""
    run_dir = member.run_dir
    clear_run_folder(run_dir)
    step = int(checkpoint.name.split("-")[1])
    for name in (METRICS, RANK_PATTERN, SIGNAL_SCORES):
        if (folder / TRAIN_DIR / name).exists():
            shutil.copyfile(folder / TRAIN_DIR / name, run_dir / name)
    rewind_logs(run_dir, step)  # the warm-up's lines up to its checkpoint, nothing after
    write_json_atomic(run_dir / SHARED_WARMUP, {"folder": str(folder.resolve()), "step": step,
                                                 "variant": member.variant, "variants": state["allocator"]["signal"]})
    staging = run_dir / f".{checkpoint.name}.seeding"
    shutil.copytree(checkpoint, staging, ignore=shutil.ignore_patterns(MANIFEST, ALLOCATOR_STATE))
    own = {**state, "allocator": state["allocator"]["members"][member.variant],
           "signal_config": dataclasses.asdict(member.config)}
    atomic_write(staging / ALLOCATOR_STATE, lambda f: torch.save(own, f))
    # the run's own settings (not the warm-up's): what its resume checks the checkpoint against
    write_json_atomic(run_dir / IDENTITY_FILE, member.identity)
    write_json_atomic(staging / IDENTITY_FILE, member.identity)
    adapter_config = staging / "adapter_config.json"
    if adapter_config.exists():  # the adapter as its own run would have saved it (its target_r)
        config = json.loads(adapter_config.read_text(encoding="utf-8"))
        config["target_r"] = member.target_r
        write_json_atomic(adapter_config, config)
    trainer_state = staging / "trainer_state.json"
    if trainer_state.exists():  # the stop was the warm-up's, not the run's (--restore-callback-states-from-checkpoint)
        saved = json.loads(trainer_state.read_text(encoding="utf-8"))
        control = saved.get("stateful_callbacks", {}).get("TrainerControl", {}).get("args", {})
        control.update({k: False for k in ("should_training_stop", "should_save") if k in control})
        write_json_atomic(trainer_state, saved)
    write_manifest(staging)
    os.replace(staging, run_dir / checkpoint.name)


def warmup_main(argv: list[str]) -> int:
    """``adalora-ablation warmup FOLDER`` (started by ``ablate``)."""
    if len(argv) != 1:
        raise UsageError("usage: adalora-ablation warmup FOLDER (a folder holding plan.json, written by 'ablate')")
    seeded = run_warmup(Path(argv[0]))
    print(f"[warm-up] {argv[0]}: seeded {len(seeded)} run(s): {', '.join(seeded) or '-'}", flush=True)
    return 0
