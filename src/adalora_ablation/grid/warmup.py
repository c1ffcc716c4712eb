"""Which runs of a grid can share their warm-up, and where a shared warm-up lives.

Until step ``tinit`` AdaLoRA masks nothing, so runs that differ only in their signal, its settings and ``target_r``
train the same weights until then (adalora/shared_warmup.py says why). Such runs form a group; the group's first
``tinit`` steps are trained once, in ``<output-root>/grid/warmup/<task>-<seed>-<key>/``, which then seeds every
member's run folder with its own normal checkpoint at step ``tinit`` (grid/warmup_run.py).

A group is keyed on the runs' identity (args.RunSettings.identity: defaults < preset < config file < flags, the
model path resolved), less what does not change the weights before tinit (``warmup_settings``). So a changed
preset, config file or ``ADALORA_MODEL_PATH`` is another warm-up, in another folder; the warm-up records its settings
in ``done.json``, and a member whose settings differ from them is never seeded (grid/warmup_run.py).

Reading the grid needs no torch here; computing the identity does (transformers' TrainingArguments), only when a
grid plans its warm-ups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..args import AdaLoraArguments, run_identity
from ..run.folder import grid_dir, write_json_atomic
from ..run.identity import fingerprint, show
from ..signals import SIGNALS

# Settings that do not change the weights before tinit: the signal and its settings (they only move the signal's
# own state), and the final budget (the schedule keeps the initial budget until tinit). Where a run goes and how it
# resumes are no part of a run's identity in the first place (run/identity.py).
SIGNAL_SETTINGS = ("signal", "combo_lambda", "ema_decay", "normalize_method", "plasticity_norm", "beta1", "beta2")
BUDGET_SETTINGS = ("target_r",)

WARMUP_DIR = "warmup"  # <output-root>/grid/warmup/<name>/
PLAN = "plan.json"  # the members this grid asked for (rewritten by every ablate that starts the warm-up)
VARIANTS = "variants.json"  # the signal variants the warm-up tracks, fixed when it first starts
DONE = "done.json"  # written once checkpoint-<tinit> is complete: its step, variants and settings
TRAIN_DIR = "train"  # the warm-up's own Trainer folder (checkpoints, metrics.jsonl)


def budget_decides_task(settings: dict) -> bool:
    """On the planted task, the default spec and a drawn one (--planted-draw) are chosen for the final budget: another
    --target-r is another teacher, other rows, other weights from step 0."""
    return settings.get("task") == "planted" and not settings.get("planted_modules")


def warmup_settings(settings: dict) -> dict:
    """A run's settings (its identity's) that decide its weights until tinit: all but its signal, the signal's
    settings and, unless it decides the task, the final budget."""
    ignored = SIGNAL_SETTINGS + (() if budget_decides_task(settings) else BUDGET_SETTINGS)
    return {name: value for name, value in settings.items() if name not in ignored}


def warmup_identity(settings: dict) -> dict:
    """What a warm-up is: {"fingerprint", "settings"} of its warm-up settings (done.json and its checkpoints)."""
    shared = warmup_settings(settings)
    return {"fingerprint": fingerprint(shared), "settings": shared}


def warmup_key(argv: list[str]) -> str:
    """Runs with the same key train identical weights until tinit (from the run's resolved settings)."""
    return warmup_identity(run_identity(argv)["settings"])["fingerprint"][:12]


def holds_fixed_pattern(settings: dict) -> bool:
    """A signal that masks from step 0 (oracle_fixed) trains no warm-up that another run could share."""
    info = SIGNALS.get(settings.get("signal", ""))
    return info is not None and info.fixed_pattern


_SIGNAL_DEFAULTS = {name: getattr(AdaLoraArguments, name) for name in SIGNAL_SETTINGS[1:]}


def variant_of(settings: dict) -> str:
    """The signal and its settings, e.g. ``combo --combo-lambda 0.5``: each setting that differs from its built-in
    default, so that two runs whose signal state differs never share a name (from the resolved settings, whichever
    of preset, config file or flag set them)."""
    changed = [f"--{name.replace('_', '-')} {show(settings[name])}" for name in SIGNAL_SETTINGS[1:]
               if name in settings and settings[name] != _SIGNAL_DEFAULTS[name]]
    return " ".join([settings.get("signal", "baseline_adalora"), *changed])


@dataclass
class WarmupGroup:
    key: str
    folder: Path
    tinit: int
    members: list = field(default_factory=list)  # GridRun, in grid order
    argvs: list = field(default_factory=list)  # each member's train flags
    failure: str | None = None  # set when its process or job failed: the reason, one line
    variants: list = field(default_factory=list)  # each member's signal variant (variant_of)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def saved_steps(self) -> int:
        """Optimizer steps not trained again: every member but one would train the warm-up itself."""
        return (len(self.members) - 1) * self.tinit if self.trains else len(self.members) * self.tinit

    @property
    def trains(self) -> bool:
        """False when a finished warm-up only seeds its members."""
        return not (self.folder / DONE).exists()

    def describe(self) -> str:
        signals = ", ".join(self.variants)
        done = "finished, reused" if not self.trains else f"steps 0..{self.tinit - 1} trained once"
        return (f"shared warm-up {self.name}: {done} for {len(self.members)} runs ({signals}); saves "
                f"{self.saved_steps:,} optimizer steps")


def warmup_folder(output_root, task: str, seed: int, key: str) -> Path:
    return grid_dir(output_root) / WARMUP_DIR / f"{task}-{seed}-{key}"


def tracked_variants(folder: Path) -> list[str] | None:
    """The variants a warm-up that has started tracks (None before it starts): other runs cannot join it."""
    try:
        return json.loads((Path(folder) / VARIANTS).read_text(encoding="utf-8"))["variants"]
    except (OSError, ValueError, KeyError):
        return None


def plan_warmups(runs, argv_of, output_root, settings_of=None) -> list[WarmupGroup]:
    """Group the runs (unstarted ones: no checkpoint) by their warm-up settings. A group trains its warm-up when it
    has two or more members; a finished warm-up also seeds a single member. Runs whose signal variant a started
    warm-up does not track, and runs of a signal with a fixed pattern, train alone. ``settings_of(run)``: the run's
    resolved settings (default: from its train arguments, args.run_identity)."""
    settings_of = settings_of or (lambda run: run_identity(argv_of(run))["settings"])
    groups: dict[str, WarmupGroup] = {}
    for run in runs:
        settings = settings_of(run)
        if holds_fixed_pattern(settings):
            continue
        key = warmup_identity(settings)["fingerprint"][:12]
        if key not in groups:
            groups[key] = WarmupGroup(key, warmup_folder(output_root, run.task, run.seed, key), settings["tinit"])
        group = groups[key]
        tracked = tracked_variants(group.folder)
        variant = variant_of(settings)
        if tracked is None or variant in tracked:
            group.members.append(run)
            group.argvs.append(argv_of(run))
            group.variants.append(variant)
    return [g for g in groups.values()
            if g.tinit > 0 and (len(g.members) >= 2 or (g.members and not g.trains))]


def write_plan(group: WarmupGroup) -> Path:
    group.folder.mkdir(parents=True, exist_ok=True)
    variants = group.variants or [""] * len(group.members)  # (for reading: the warm-up resolves each argv itself)
    write_json_atomic(group.folder / PLAN, {"key": group.key, "members": [
        {"name": f"{r.task}/{r.signal}/{r.seed}", "run_dir": str(Path(r.run_dir).resolve()), "argv": argv,
         "variant": variant} for r, argv, variant in zip(group.members, group.argvs, variants)]})
    return group.folder
