"""Which runs of a grid can share their warm-up, and where a shared warm-up lives. No torch here (dry runs).

Until step ``tinit`` AdaLoRA masks nothing, so runs that differ only in their signal, its settings and ``target_r``
train the same weights until then (adalora/shared_warmup.py says why). Such runs form a group; the group's first
``tinit`` steps are trained once, in ``<output-root>/grid/warmup/<task>-<seed>-<key>/``, which then seeds every
member's run folder with its own normal checkpoint at step ``tinit`` (grid/warmup_run.py).

The grouping reads the train flags a run is started with. ``warmup_key`` is the one place that decides it, so a
fingerprint of the resolved run settings can replace it later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..run.folder import grid_dir, write_json_atomic
from ..signals import SIGNALS

# Flags that do not change the weights before tinit: the signal and its settings (they only move the signal's own
# state), the final budget (the schedule keeps the initial budget until tinit), and where/whether a run trains.
SIGNAL_FLAGS = ("signal", "combo_lambda", "ema_decay", "normalize_method", "plasticity_norm", "beta1", "beta2")
BUDGET_FLAGS = ("target_r",)
# variant: a folder name; include: where a signal's code is found
PLACE_FLAGS = ("output_root", "resume", "resume_fallback", "overwrite", "variant", "include")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_TINIT = 200  # AdaLoraArguments.tinit

WARMUP_DIR = "warmup"  # <output-root>/grid/warmup/<name>/
PLAN = "plan.json"  # the members this grid asked for (rewritten by every ablate that starts the warm-up)
VARIANTS = "variants.json"  # the signal variants the warm-up tracks, fixed when it first starts
DONE = "done.json"  # written once checkpoint-<tinit> is complete
TRAIN_DIR = "train"  # the warm-up's own Trainer folder (checkpoints, metrics.jsonl)


def parse_flags(argv: list[str]) -> dict[str, tuple[str, ...]]:
    """``--name value ...`` / ``--name=value`` tokens as {name_with_underscores: values}; the last one counts."""
    flags: dict[str, tuple[str, ...]] = {}
    name = ""
    for token in argv:
        if token.startswith("--"):
            key, has_value, value = token[2:].partition("=")
            name = key.replace("-", "_")
            flags[name] = (value,) if has_value else ()
        else:
            flags[name] = flags.get(name, ()) + (token,)  # name "" holds a leading config file
    return flags


def warmup_key(argv: list[str]) -> str:
    """Runs with the same key train identical weights until tinit: everything but the signal, its settings, the
    final budget (unless it decides the task) and the run's place. Spellings of one value that differ (1e-3, 0.001)
    only split a group."""
    flags = parse_flags(argv)
    ignored = SIGNAL_FLAGS + PLACE_FLAGS + (() if budget_decides_task(flags) else BUDGET_FLAGS)
    kept = {k: v for k, v in flags.items() if k not in ignored}
    return hashlib.sha256(json.dumps(sorted(kept.items())).encode()).hexdigest()[:12]


def budget_decides_task(flags: dict[str, tuple[str, ...]]) -> bool:
    """On the planted task, the default spec and a drawn one (--planted-draw) are chosen for the final budget: another
    --target-r is another teacher, other rows, other weights from step 0."""
    return flags.get("task", ("rte",))[-1] == "planted" and not flags.get("planted_modules")


def holds_fixed_pattern(argv: list[str]) -> bool:
    """A signal that masks from step 0 (oracle_fixed) trains no warm-up that another run could share."""
    info = SIGNALS.get(parse_flags(argv).get("signal", ("",))[-1])
    return info is not None and info.fixed_pattern


def variant_of(argv: list[str]) -> str:
    """The signal and the signal settings a run was given, e.g. ``combo --combo-lambda 0.5``."""
    flags = parse_flags(argv)
    settings = [f"--{k.replace('_', '-')} {' '.join(flags[k])}" for k in sorted(flags) if k in SIGNAL_FLAGS[1:]]
    return " ".join([" ".join(flags.get("signal", ("baseline_adalora",))), *settings])


def tinit_of(argv: list[str]) -> int:
    """The run's tinit from its flags or its task preset (as train resolves it, minus config files)."""
    flags = parse_flags(argv)
    if flags.get("tinit"):
        return int(flags["tinit"][-1])
    task, preset = flags.get("task", ("rte",))[-1], flags.get("preset", ("default",))[-1]
    path = CONFIG_DIR / (f"{task}.yaml" if preset == "default" else f"{task}_{preset}.yaml")
    options = yaml.safe_load(path.read_text()) if path.exists() else {}
    return int((options or {}).get("tinit", DEFAULT_TINIT))


@dataclass
class WarmupGroup:
    key: str
    folder: Path
    tinit: int
    members: list = field(default_factory=list)  # GridRun, in grid order
    argvs: list = field(default_factory=list)  # each member's train flags
    failure: str | None = None  # set when its process or job failed: the reason, one line

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
        signals = ", ".join(variant_of(a) for a in self.argvs)
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


def plan_warmups(runs, argv_of, output_root) -> list[WarmupGroup]:
    """Group the runs (unstarted ones: no checkpoint) by warmup_key. A group trains its warm-up when it has two or
    more members; a finished warm-up also seeds a single member. Runs whose signal variant a started warm-up does
    not track, and runs of a signal with a fixed pattern, train alone."""
    groups: dict[str, WarmupGroup] = {}
    for run in runs:
        argv = argv_of(run)
        if holds_fixed_pattern(argv):
            continue
        key = warmup_key(argv)
        if key not in groups:
            groups[key] = WarmupGroup(key, warmup_folder(output_root, run.task, run.seed, key), tinit_of(argv))
        group = groups[key]
        tracked = tracked_variants(group.folder)
        if tracked is None or variant_of(argv) in tracked:
            group.members.append(run)
            group.argvs.append(argv)
    return [g for g in groups.values()
            if g.tinit > 0 and (len(g.members) >= 2 or (g.members and not g.trains))]


def write_plan(group: WarmupGroup) -> Path:
    group.folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(group.folder / PLAN, {"key": group.key, "members": [
        {"name": f"{r.task}/{r.signal}/{r.seed}", "run_dir": str(Path(r.run_dir).resolve()), "argv": argv,
         "variant": variant_of(argv)} for r, argv in zip(group.members, group.argvs)]})
    return group.folder
