"""The signal registry: which scores can decide where AdaLoRA's rank goes. It needs no torch.

Adding a signal is one small class (a ``Signal`` subclass in a module of this folder, see ``base.py``) and one
entry in ``BUILT_IN`` below: its name, role, one-line description and where its class lives. Names, roles and
descriptions are read from here by ``--help``, docs/signals.md's table, grids, ``ablate --status``, ``report``
and ``plot`` without importing torch; the class is imported only when a run builds the signal (``build_signal``).

Each signal names its ``role``: the ``baseline`` (PEFT's own score, what the others are compared to), a replacement
``signal``, or a ``control`` (a reference point: chance, no reallocation). A signal defined outside this package
registers itself with ``register_signal`` (see docs/signals.md, "Adding a signal").
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points

from ..errors import UsageError, first_line

# A signal's settings, here for every reader of the registry (defined apart: the signals' modules need them too)
from .config import NORMALIZE_METHODS as NORMALIZE_METHODS, PLASTICITY_NORMS as PLASTICITY_NORMS
from .config import SignalConfig as SignalConfig

ROLES = ("baseline", "signal", "control")


@dataclass(frozen=True)
class SignalInfo:
    name: str
    role: str  # one of ROLES
    description: str  # one line, shown by --help and in docs/signals.md's table
    where: str  # "module:Class", the module relative to this package
    only_task: str | None = None  # a signal that reads a task's known answer runs on that task only
    # One rank pattern from step 0 to the end (no warm-up without masking, so it shares no warm-up with others)
    fixed_pattern: bool = False


BUILT_IN = [
    # this study's signals (and PEFT's own score, the baseline)
    SignalInfo("baseline_adalora", "baseline", "PEFT's own score: EMA(|w*g|) * EMA(|ipt - EMA(ipt)|), unchanged",
               "study:BaselineAdaLoRA"),
    SignalInfo("importance_only", "signal",
               "EMA(|w*g|): PEFT's sensitivity without its uncertainty term, at decay --ema-decay 0.9 (PEFT: 0.85); "
               "sensitivity_only is the clean comparison", "study:ImportanceOnly"),
    SignalInfo("plasticity_only", "signal", "EMA of the triplet's gradient L2 norm", "study:PlasticityOnly"),
    SignalInfo("plasticity_rms", "signal", "EMA of the triplet's RMS gradient (size-fair plasticity)",
               "study:PlasticityRMS"),
    SignalInfo("combo", "signal", "normalize(importance) + combo_lambda * normalize(plasticity)", "study:Combo"),
    # controls: reference points that go through the same allocator
    SignalInfo("random", "control", "uniform random scores at every allocation (seeded): does any signal beat chance?",
               "controls:RandomScores"),
    SignalInfo("uniform", "control",
               "the same rank for every module, PEFT's score within one: does reallocation beat a fixed rank?",
               "controls:UniformRank"),
    SignalInfo("oracle", "control",
               "task planted only: the planted modules keep their planted ranks, PEFT's score the rest (upper "
               "reference)", "controls:PlantedOracle", only_task="planted"),
    SignalInfo("oracle_fixed", "control",
               "task planted only: the planted ranks in the planted modules, rank 0 elsewhere, from step 0 and never "
               "pruned (what the schedule itself costs)", "controls:PlantedFixed", only_task="planted",
               fixed_pattern=True),
    # the literature's scores
    SignalInfo("singular_value", "signal", "|E_i| only (AdaLoRA Table 4, '|lambda| only')",
               "literature:SingularValue"),
    SignalInfo("sensitivity_only", "signal",
               "PEFT's EMA of |w*grad| with beta1, no uncertainty (AdaLoRA Table 4, 'sensitivity only')",
               "literature:SensitivityOnly"),
    SignalInfo("sensitivity_snr", "signal", "smoothed sensitivity / smoothed uncertainty (signal-to-noise ratio)",
               "literature:SensitivitySNR"),
    SignalInfo("fisher", "signal", "EMA of grad^2 (empirical Fisher diagonal)", "literature:Fisher"),
    SignalInfo("component_norm", "signal",
               "||B_i|| |E_i| ||A_i||, the triplet's rank-one update norm (dynamic-rank DoRA)",
               "literature:ComponentNorm"),
]
SIGNALS: dict[str, SignalInfo] = {info.name: info for info in BUILT_IN}  # name -> info, in registration order
_CLASSES: dict[str, type] = {}  # classes registered by ``register_signal`` or already imported


def register_signal(cls: type) -> type:
    """Class decorator for a signal defined outside this package: available under ``cls.name`` (``--signal``,
    grids, the report), with the class's ``role`` (default "signal") and ``description``."""
    name, role = getattr(cls, "name", ""), getattr(cls, "role", "signal")
    if name in SIGNALS:
        raise ValueError(f"a signal named {name!r} is already registered ({SIGNALS[name].where}); "
                         f"choose a name that is not one of: {', '.join(SIGNALS)}")
    if not name or role not in ROLES:
        raise ValueError(f"signal class {cls.__qualname__} needs a name and a role in {ROLES} "
                         f"(has name={name!r}, role={role!r})")
    SIGNALS[name] = SignalInfo(name, role, getattr(cls, "description", ""), f"{cls.__module__}:{cls.__qualname__}")
    _CLASSES[name] = cls
    return cls


# -- signals of other code, in every process: installed entry points, and --include MODULE -----------------------
ENTRY_POINT_GROUP = "adalora_ablation.signals"  # an entry point names a module (its classes register themselves)
INCLUDE_HELP = ("Modules of your own whose signals register themselves (docs/signals.md, 'Adding a signal'), imported "
                "before signal names are read; ablate passes them on to every run, which imports them too "
                "(put their folder on PYTHONPATH, or install them)")
_entry_points_read_for: tuple | None = None  # the sys.path they were last read from


def add_include_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include", nargs="+", action="extend", default=[], metavar="MODULE", help=INCLUDE_HELP)


def included_modules(argv: list[str]) -> list[str]:
    """The modules named by ``--include MODULE [MODULE ...]`` (repeatable) in a command's arguments, read before
    the command's own parser, whose signal choices must already hold them."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    add_include_flag(parser)
    try:
        return parser.parse_known_args(argv)[0].include
    except argparse.ArgumentError:  # "--include" without a module: the command's own parser says so, in one line
        return []


def load_signals(modules: list[str] | tuple = ()) -> None:
    """Register the signals defined outside this package: those of every installed entry point of the group
    ``adalora_ablation.signals`` (read again only when sys.path has changed), then those of each ``--include``
    module. Each command calls this before it reads signal names, so that a signal of your own reaches every process
    a grid starts; importing twice registers nothing twice."""
    global _entry_points_read_for
    if _entry_points_read_for != tuple(sys.path):
        for point in entry_points(group=ENTRY_POINT_GROUP):
            _load(point.load, f"entry point {point.name} = {point.value} of group {ENTRY_POINT_GROUP}")
        _entry_points_read_for = tuple(sys.path)
    for module in modules:
        _load(lambda module=module: importlib.import_module(module), f"--include {module}")


def _load(load, where: str) -> None:
    try:
        found = load()
        if isinstance(found, type) and found not in _CLASSES.values():  # an entry point may name the class itself
            register_signal(found)
    except ImportError as exc:
        raise UsageError(f"cannot import {where} ({first_line(exc)}); put the folder that holds it on PYTHONPATH "
                         f"(every run of a grid imports it too), or install it") from None
    except ValueError as exc:  # register_signal refused a name (its decorator runs while the module is imported)
        raise UsageError(f"{where}: {first_line(exc)}") from None


def signal_class(name: str) -> type:
    """The class of a registered signal (imports its module, and with it torch, on first use)."""
    if name not in SIGNALS:
        raise ValueError(f"unknown signal {name!r}; choose one of {', '.join(SIGNALS)}")
    if name not in _CLASSES:
        module, cls = SIGNALS[name].where.split(":")
        _CLASSES[name] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return _CLASSES[name]


def runs_on(name: str, task: str) -> bool:
    """Whether signal ``name`` can run on ``task`` (the oracle needs the planted task's answer)."""
    return SIGNALS[name].only_task in (None, task) if name in SIGNALS else True


def build_signal(name: str, layout, config: SignalConfig):
    """A fresh instance of signal ``name`` for the adapters described by ``layout`` (a ``LoraLayout``)."""
    return signal_class(name)(layout, config)


def signal_names(*roles: str) -> list[str]:
    """Registered signal names with one of ``roles`` (default: all), in registration order."""
    return [name for name, info in SIGNALS.items() if not roles or info.role in roles]


# Named groups for --signals (ablate, demo): this study's four signals, the AdaLoRA paper's own scoring ablation
# (Table 4) and the literature's other scores. "controls" (the control role) and "all" (every registered signal) are
# derived from the registry.
SIGNAL_GROUPS = {
    "seed": ("baseline_adalora", "importance_only", "plasticity_only", "combo"),
    "table4": ("baseline_adalora", "sensitivity_only", "singular_value"),
    "peers": ("sensitivity_snr", "fisher", "component_norm"),
}


def group_names() -> list[str]:
    return [*SIGNAL_GROUPS, "controls", "all"]


def expand_signals(names: list[str]) -> list[str]:
    """Signal names with every group replaced by its members, each name once, in the order given."""
    out = []
    for name in names:
        if name == "all":
            out += signal_names()
        elif name == "controls":
            out += signal_names("control")
        elif name in SIGNAL_GROUPS:
            out += SIGNAL_GROUPS[name]
        elif name in SIGNALS:
            out.append(name)
        else:
            raise ValueError(f"unknown signal or group {name!r}; choose from: {', '.join(group_names())} or "
                             f"{', '.join(SIGNALS)}")
    return list(dict.fromkeys(out))


def ordered_signals(names) -> list[str]:
    """``names`` with the registered ones first, in registration order (the baseline leads), then others sorted."""
    known = signal_names("baseline") + signal_names("signal", "control")
    return [s for s in known if s in names] + sorted(set(names) - set(known))


def describe_signals() -> str:
    """One line per registered signal: name, role, description (for --help)."""
    width = max(map(len, SIGNALS))
    return "\n".join(f"  {name:{width}}  {info.role:8}  {info.description}" for name, info in SIGNALS.items())


def __getattr__(name: str):
    # The base class and the EMA, for a signal defined outside this package (docs/signals.md): imported on
    # first use, so that reading the registry never loads torch.
    if name in ("Signal", "ema_"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
