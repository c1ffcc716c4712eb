"""A run's settings: ``train``'s arguments as dataclasses, parsed and checked without torch or transformers.

Precedence, lowest first: built-in defaults < the task preset file (``configs/<task>[_<preset>].yaml``) < a YAML/JSON
config file given as the first argument < flags on the command line.

The run's own settings are the four dataclasses below; the Trainer's are transformers' ``TrainingArguments``, whose
flags (names, types, choices, help) are listed in ``configs/trainer_flags.json`` (written from the installed
transformers by ``python scripts/make_trainer_flags.py``; a test checks it against it). So ``--help``, ``--version``
and every usage error come before torch, transformers or peft is imported; ``RunSettings.training`` builds the
``TrainingArguments`` on first use, from the Trainer flags exactly as given.

``RunSettings.identity()`` is the one place that says what a run is (run/identity.py): ``train`` records and checks
it, ``ablate`` compares folders against it (``--status``, ``--dry-run``, sweeps) and keys shared warm-ups on it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import typing
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import yaml

from .errors import OneLineArgumentParser, UsageError, first_line
from .files import default_cache_dir, file_sha256
from .signals import (
    INCLUDE_HELP, NORMALIZE_METHODS, PLASTICITY_NORMS, SIGNALS, describe_signals, included_modules, load_signals,
)
from .data.planted_spec import construction_rule, default_rule, draw_rule, student_rule
from .data.tasks import CUSTOM, TASK_CHOICES
from .run.identity import identity

CONFIG_DIR = Path(__file__).parent / "configs"
TRAINER_FLAGS = CONFIG_DIR / "trainer_flags.json"
DEFAULT_MODEL = "microsoft/deberta-v3-base"


@dataclass
class RunArguments:
    task: str = field(default="rte", metadata={"help": "GLUE task (mnli, rte, cola, sst2, mrpc, qqp, qnli, stsb), "
                                                       "synthetic (offline demo task), planted (offline, labels from "
                                                       "planted low-rank updates), or custom (your own files: "
                                                       "--train-file, --validation-file, --text-columns)."})
    signal: str = field(default="baseline_adalora", metadata={"help": "Scoring signal (see 'signals' below)."})
    include: list[str] | None = field(default=None, metadata={"help": INCLUDE_HELP})
    preset: str = field(
        default="default",
        metadata={"help": "Task preset from configs/: 'default' (quick) or 'paper' (AdaLoRA paper settings)."},
    )
    output_root: str = field(
        default="outputs", metadata={"help": "Runs go to <output-root>/<task>/<signal>/<seed>/ (the output_dir)."}
    )
    variant: str = field(
        default="",
        metadata={"help": "A point of an ablate --sweep, e.g. target_r=2 or combo_lambda=0.5,target_r=2: the run goes "
                          "to <output-root>/<task>/<signal>/<variant>/<seed>/, and each NAME must equal the run's "
                          "own setting (pass the flags too: --target-r 2 --variant target_r=2)."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace a run folder that already holds a finished run."})
    resume: bool = field(
        default=False,
        metadata={"help": "Continue an unfinished run from its newest verified checkpoint (start fresh if none)."},
    )
    resume_fallback: str = field(
        default="restart",
        metadata={"help": "With --resume, when the run has checkpoints but none verifies (damaged or unsafe files): "
                          "'restart' the run from scratch, or 'stop' with an error."},
    )
    adapter_effect: bool = field(
        default=True,
        metadata={"help": "After the final evaluation, evaluate once more with every LoRA update switched off (the "
                          "trained head kept) and record eval_accuracy_without_adapters and adapter_effect in the "
                          "summary: do the adapters matter at all? Costs one evaluation; False skips it."},
    )


@dataclass
class ModelArguments:
    model: str = field(
        default_factory=lambda: os.environ.get("ADALORA_MODEL_PATH", DEFAULT_MODEL),
        metadata={"help": "Hub id or local folder (default $ADALORA_MODEL_PATH or microsoft/deberta-v3-base); "
                          "'tiny-deberta' builds a small random DeBERTa-v3-shaped model offline."},
    )
    target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Linear module names (suffixes) to adapt; default: detected from the model "
                          "(Q, K, V, attention output, FFN in, FFN out of every encoder layer)."},
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained in full beside the adapters; default: the classification head "
                          "(pooler and classifier)."},
    )


@dataclass
class DataArguments:
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Your own copy of GLUE, in any of these layouts (detected per task): the GLUE download "
                          "(MNLI/{train,dev_matched,dev_mismatched}.tsv, RTE/{train,dev}.tsv, CoLA/, SST-2/, ...), "
                          "a snapshot of the hub dataset nyu-mll/glue (mnli/*.parquet, rte/*.parquet, ...) or "
                          "datasets save_to_disk folders (mnli/, rte/, ...); default: GLUE from the hub."},
    )
    max_seq_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None,
                                         metadata={"help": "Use only the first N rows of each eval set."})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Tokenized-dataset cache (default $ADALORA_CACHE or ~/.cache/adalora_ablation)."},
    )
    train_file: str | None = field(default=None, metadata={
        "help": "--task custom: training data (.csv, .tsv, .json/.jsonl or .parquet); the run folder is named after "
                "it (custom-<name>)."})
    validation_file: str | None = field(default=None, metadata={"help": "--task custom: evaluation data."})
    test_file: str | None = field(default=None, metadata={
        "help": "--task custom: optional test data, evaluated once after training (test_metrics in the summary)."})
    text_columns: list[str] | None = field(default=None, metadata={
        "help": "--task custom: one text column, or two for sentence pairs."})
    label_column: str = field(default="label", metadata={
        "help": "--task custom: the label column; strings or integers are classes, floats a regression score."})
    metric: str | None = field(default=None, metadata={
        "help": "--task custom: the main metric, accuracy (default), f1 (binary), matthews, or pearson "
                "(regression default); the others that apply are recorded beside it."})
    # The planted task (--task planted, data/planted.py): what the teacher's low-rank updates are, and the rows.
    planted_modules: str | None = field(
        default=None,
        metadata={"help": "Task planted: NAME=RANK,NAME=RANK,... (short module names as in final_ranks, e.g. "
                          "layer.1.attention.self.value_proj=4); default: the last layer's attention output and the "
                          "first layer's FFN input, each at half the final budget (at most --init-r), far above what "
                          "a uniform spread keeps there."},
    )
    planted_draw: int | None = field(
        default=None,
        metadata={"help": "Task planted: instead of --planted-modules, spec number K (0, 1, ...) of the suite drawn "
                          "from --planted-seed for this model's adapted modules, --init-r and --target-r (ablate "
                          "--planted-suite N runs draws 0..N-1)."},
    )
    planted_seed: int = field(default=0, metadata={"help": "Task planted: seed of the planted updates and the "
                                                             "inputs, independent of --seed."})
    planted_strength: str = field(
        default="auto", metadata={"help": "Task planted: every planted singular value is this times the module's "
                                          "largest singular value; auto (default): the smallest of 0.0625, 0.088, "
                                          "0.125, ..., 16 (up to --planted-max-strength) at which the base model "
                                          "agrees with the teacher on at most half of the calibration inputs "
                                          "(recorded as planted.strength_used)."})
    planted_max_strength: float = field(
        default=16.0, metadata={"help": "Task planted: the largest strength --planted-strength auto may choose "
                                        "(default 16, the ladder's top). A pretrained model may need updates as "
                                        "large as its weights before half its predictions change, and such a "
                                        "teacher is far harder to learn (the minilm preset: 0.5)."})
    planted_targets: str = field(
        default="logits", metadata={"help": "Task planted: what the student learns from: logits (default: MSE on the "
                                            "teacher's logits, distillation), hidden (the logits and the teacher's "
                                            "final hidden states on every token) or labels (the teacher's classes, "
                                            "cross-entropy)."})
    planted_train_rows: int = field(default=2000, metadata={"help": "Task planted: training rows."})
    planted_train_head: bool = field(
        default=False, metadata={"help": "Task planted: train the head too (default: it stays the teacher's, so the "
                                         "adapters must learn the planted updates)."})
    planted_eval_rows: int = field(default=400, metadata={"help": "Task planted: validation rows."})


@dataclass
class AdaLoraArguments:
    init_r: int = field(default=12, metadata={"help": "Initial rank of every adapted matrix."})
    target_r: int = field(default=4, metadata={"help": "Average final rank; the budget is target_r x modules."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input."})
    tinit: int = field(default=200, metadata={"help": "Warm-up steps before the budget starts to fall."})
    tfinal: int = field(default=200,
                        metadata={"help": "Length of the final fixed-budget phase (the last tfinal steps)."})
    deltaT: int = field(default=10, metadata={"help": "Steps between two allocations while the budget falls."})
    beta1: float = field(default=0.85, metadata={"help": "PEFT sensitivity EMA (baseline_adalora, sensitivity_only, "
                                                         "sensitivity_snr)."})
    beta2: float = field(default=0.85, metadata={"help": "PEFT uncertainty EMA (baseline_adalora, sensitivity_snr)."})
    orth_reg_weight: float = field(default=0.5, metadata={"help": "Orthogonal regularisation weight (PEFT default)."})
    ema_decay: float = field(default=0.9, metadata={"help": "EMA decay of importance_only, plasticity_only, "
                                                            "plasticity_rms, combo and fisher."})
    combo_lambda: float = field(default=1.0,
                                metadata={"help": "combo = norm(importance) + lambda * norm(plasticity)."})
    normalize_method: str = field(default="zscore",
                                  metadata={"help": f"combo normalisation: {', '.join(NORMALIZE_METHODS)}."})
    plasticity_norm: str = field(
        default="l2", metadata={"help": "combo's plasticity: l2 (plasticity_only's gradient L2 norm) or rms "
                                        "(plasticity_rms, size-fair)."})


RUN_CLASSES = (RunArguments, ModelArguments, DataArguments, AdaLoraArguments)

# Trainer-side defaults that differ from TrainingArguments' own (lowest precedence).
BASE_DEFAULTS = {"report_to": "none", "save_total_limit": 2, "logging_steps": 10, "disable_tqdm": True}
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


# -- the flags --------------------------------------------------------------------------------------------------
def string_to_bool(text):
    """A bool flag's value as HfArgumentParser reads it (``--fp16``, ``--fp16 True``, ``--fp16 no``)."""
    if isinstance(text, bool):
        return text
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"Truthy value expected: got {text} but expected one of yes/no, true/false, "
                                     f"t/f, y/n, 1/0 (case insensitive).")


def add_dataclass_flags(parser, cls) -> None:
    """The flags of one of our dataclasses, as HfArgumentParser makes them (a test compares the two): ``--name`` and
    ``--name-with-dashes``; a bool takes an optional value (``--flag``, ``--flag False``) and, when it defaults to
    True, also ``--no_flag``; a list takes one or more values; ``X | None`` is X with default None."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        args = typing.get_args(kind)
        optional = type(None) in args
        if optional:
            kind = next(a for a in args if a is not type(None))
        options = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_text = f.metadata.get("help")
        if kind is bool:
            parser.add_argument(*options, type=string_to_bool, default=default, nargs="?", const=True, help=help_text)
            if default is True:
                parser.add_argument(f"--no_{f.name}", f"--no-{f.name.replace('_', '-')}", action="store_false",
                                    dest=f.name, default=False, help=help_text)
        elif typing.get_origin(kind) is list:
            parser.add_argument(*options, type=typing.get_args(kind)[0], nargs="+", default=default, help=help_text)
        else:
            parser.add_argument(*options, type=kind, default=default, help=help_text)


class TrainerFlag(argparse.Action):
    """A flag of TrainingArguments: its value is checked here (type, choices) and kept as the tokens given, which
    TrainingArguments' own parser reads once the run's settings are valid (``RunSettings.training``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = dict(getattr(namespace, TRAINER_DEST, None) or {})
        given.pop(self.dest, None)  # the last one given counts, in the order given
        tokens = values if isinstance(values, list) else [] if values is None or values is self.const else [values]
        given[self.dest] = [option_string, *tokens]
        setattr(namespace, TRAINER_DEST, given)


class TrainerFlagOff(TrainerFlag):
    """``--no_<flag>`` of a TrainingArguments bool that defaults to True."""

    def __init__(self, **kwargs):
        super().__init__(nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, [], option_string)


TRAINER_DEST = "trainer_flags"
_TYPES = {"str": str, "int": int, "float": float, "bool": string_to_bool, "raw": str}


def checked_text(convert):
    """An argparse type that checks a value as ``convert`` reads it and keeps the text (TrainingArguments' own
    parser reads it later); a bad value is argparse's usual one-line error (``invalid int value: 'x'``)."""
    def check(text):
        convert(text)
        return text
    check.__name__ = convert.__name__
    return check


def trainer_flags_of_transformers() -> dict:
    """TrainingArguments' flags as the installed transformers' HfArgumentParser makes them: what
    configs/trainer_flags.json holds (scripts/make_trainer_flags.py writes it; imports transformers)."""
    import transformers
    from transformers import HfArgumentParser, TrainingArguments
    from transformers.hf_argparser import string_to_bool as hf_string_to_bool

    flags = []
    for action in HfArgumentParser(TrainingArguments)._actions:
        if action.dest == "help":
            continue
        store_false = isinstance(action, argparse._StoreFalseAction)
        if store_false:
            kind = None
        elif action.choices is not None:
            kind = "choice"
        elif action.type is hf_string_to_bool:
            kind = "bool"
        elif action.type in (str, int, float):
            kind = action.type.__name__
        else:  # dict, ParallelismConfig, DebugOption: read by TrainingArguments' own parser only
            kind = "raw"
        default = action.default
        flags.append({
            "dest": action.dest, "options": list(action.option_strings),
            "action": "store_false" if store_false else "store", "kind": kind, "nargs": action.nargs,
            "const": action.const if action.nargs == "?" else None,
            "choices": None if action.choices is None else [getattr(c, "value", c) for c in action.choices],
            "default": default if isinstance(default, (str, int, float, bool, type(None))) else str(default),
            "help": action.help,
        })
    return {"transformers": transformers.__version__, "flags": flags}


@lru_cache(maxsize=1)
def trainer_flags() -> list[dict]:
    """TrainingArguments' flags as the installed transformers' HfArgumentParser makes them, read without importing
    transformers: configs/trainer_flags.json when the installed release is the one it was made from (the newest
    supported), else a copy made once per release in the cache folder (that first call imports transformers)."""
    packaged = json.loads(TRAINER_FLAGS.read_text(encoding="utf-8"))
    installed = importlib.metadata.version("transformers")
    if packaged["transformers"] == installed:
        return packaged["flags"]
    cached = default_cache_dir() / f"trainer_flags-transformers-{installed}.json"
    if cached.is_file():
        with contextlib.suppress(ValueError, KeyError):
            return json.loads(cached.read_text(encoding="utf-8"))["flags"]
    found = trainer_flags_of_transformers()
    with contextlib.suppress(OSError):  # a read-only home only costs the import again next time
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(found), encoding="utf-8")
        os.replace(partial, cached)
    return found["flags"]


def add_trainer_flags(group) -> set[str]:
    """The Trainer's flags (argparse's own type and choice checks, no transformers); returns their names."""
    names = set()
    for flag in trainer_flags():
        shown = str(flag["default"]).replace("%", "%%")
        help_text = f"{flag['help'] or ''} (default: {shown})".strip()
        if flag["action"] == "store_false":
            group.add_argument(*flag["options"], action=TrainerFlagOff, dest=flag["dest"], default=argparse.SUPPRESS,
                               help=help_text)
            continue
        names.add(flag["dest"])
        choices = None if flag["choices"] is None else [str(c) for c in flag["choices"]]
        extra = {"const": flag["const"]} if flag["nargs"] == "?" else {}
        group.add_argument(*flag["options"], action=TrainerFlag, dest=flag["dest"], nargs=flag["nargs"],
                           type=str if choices else checked_text(_TYPES[flag["kind"]]), choices=choices,
                           default=argparse.SUPPRESS, help=help_text, **extra)
    return names


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag, the signal table as written."""


class TrainArgumentParser(OneLineArgumentParser):
    """``train``'s flags: the run's four groups, then the Trainer's; --help ends with the signal table."""

    def __init__(self):
        super().__init__(
            prog="adalora-ablation train", formatter_class=_HelpFormatter,
            usage="adalora-ablation train [CONFIG.yaml|CONFIG.json] [--FLAG VALUE ...]",
            description="Train one run. A YAML/JSON file given first sets flags by name (their values as on the\n"
                        "command line); flags after it override it.",
            epilog=f"signals (--signal NAME; role: baseline, signal or control):\n{describe_signals()}")
        for cls, title in zip(RUN_CLASSES, ("run", "model", "data", "AdaLoRA")):
            add_dataclass_flags(self.add_argument_group(f"{title} ({cls.__name__})"), cls)
        trainer = self.add_argument_group(
            "Trainer (transformers' TrainingArguments)",
            "Defaults as TrainingArguments has them, except report_to none, save_total_limit 2, logging_steps 10,\n"
            "disable_tqdm True, and use_cpu True where no GPU is found; a task preset may set others.")
        self.trainer_names = add_trainer_flags(trainer)

    def settings_names(self) -> set[str]:
        """Every setting a flag sets (the Trainer's and the run's)."""
        return {a.dest for a in self._actions if a.dest not in ("help", "version", TRAINER_DEST)} | self.trainer_names


# -- the settings ---------------------------------------------------------------------------------------------
@dataclass
class RunSettings:
    """One run's resolved, checked settings. Nothing here loads torch until ``training`` is read."""

    run: RunArguments
    model: ModelArguments
    data: DataArguments
    adalora: AdaLoraArguments
    trainer_argv: list[str]  # the Trainer's flags as given, lowest precedence first (TrainingArguments reads them)

    @cached_property
    def training(self):
        """The Trainer's TrainingArguments (imports transformers and torch)."""
        import torch
        from transformers import HfArgumentParser, TrainingArguments

        argv = list(self.trainer_argv)
        if not torch.cuda.is_available() and not _given(argv, "use_cpu"):
            argv = ["--use_cpu", "True", *argv]  # lets --bf16 run on CPU instead of failing "doesn't support bf16"
        try:
            (training,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(args=argv)
        except ValueError as exc:  # TrainingArguments.__post_init__ rejects some combinations
            raise UsageError(first_line(exc)) from None
        return training

    def trainer_flag_given(self, name: str) -> bool:
        """Whether the Trainer flag ``name`` was given (by a preset, config file or flag), not left to its default."""
        return _given(self.trainer_argv, name)

    def parts(self) -> tuple:
        """(run, model, data, adalora, training), as train uses them."""
        return self.run, self.model, self.data, self.adalora, self.training

    def config(self) -> dict:
        """Every resolved setting, by group, as the summary records it."""
        return run_config(*self.parts())

    def identity(self, custom_digests: dict[str, str] | None = None) -> dict:
        """The run's identity (run/identity.py): the settings that decide its result and their fingerprint. Beside
        the resolved flags: the number of processes it trains in (the global batch is per-device batch x processes)
        and, for --task custom, the contents of its files (a file edited under the same name is other data;
        ``custom_digests`` when they have been read already)."""
        config = self.config()
        config["processes"] = {"world_size": self.training.world_size}
        if self.run.task == CUSTOM:
            config["task"] = {"data_files_sha256": custom_digests or custom_file_digests(self.data)}
        return identity(config)


def _given(argv: list[str], name: str) -> bool:
    spellings = {f"--{name}", f"--{name.replace('_', '-')}", f"--no_{name}", f"--no-{name.replace('_', '-')}"}
    return any(tok.split("=", 1)[0] in spellings for tok in argv)


def custom_file_digests(data: DataArguments) -> dict[str, str]:
    """The sha256 of each file of --task custom, by split (as data/custom.py records them)."""
    digests = {}
    for split, path in (("train", data.train_file), ("validation", data.validation_file), ("test", data.test_file)):
        if path:
            file = Path(path).expanduser()
            if not file.is_file():
                raise UsageError(f"--{split}-file {file} does not exist (or is not a file)")
            stat = file.stat()
            digests[split] = _file_digest(str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    return digests


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, read once per version of the file (a grid resolves every run's identity)."""
    return file_sha256(Path(path))


def _to_argv(options: dict) -> list[str]:
    argv = []
    for key, value in options.items():
        if isinstance(value, bool):
            argv += [f"--{key}", str(value)]
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *[str(v) for v in value]]
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def is_config_file(token: str) -> bool:
    """Whether a first argument is a config file (train and ablate take one there)."""
    return not token.startswith("-") and token.endswith(CONFIG_SUFFIXES)


def read_options(path: Path) -> dict:
    """A config file's settings: {name: value}."""
    try:
        text = Path(path).read_text()
        data = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of argument names to values")
    return data


def _peek(argv: list[str], name: str, default: str) -> str:
    """The last value given for --name/--name-with-dashes in argv (before full parsing, to pick the preset)."""
    value = default
    flags = {f"--{name}", f"--{name.replace('_', '-')}"}
    for i, tok in enumerate(argv):
        if tok in flags and i + 1 < len(argv):
            value = argv[i + 1]
        elif "=" in tok and tok.split("=", 1)[0] in flags:
            value = tok.split("=", 1)[1]
    return value


def preset_path(task: str, preset: str) -> Path:
    return CONFIG_DIR / (f"{task}.yaml" if preset == "default" else f"{task}_{preset}.yaml")


def parse_settings(argv: list[str]) -> RunSettings:
    """Parse and check ``train`` arguments: defaults < preset < config file < flags. No torch, transformers or
    peft: every usage error is raised here, before anything heavy loads."""
    argv = list(argv)
    file_options: dict = {}
    if argv and is_config_file(argv[0]):
        file_options = read_options(Path(argv.pop(0)))
    user_argv = _to_argv(file_options) + argv
    task = _peek(user_argv, "task", RunArguments.task)
    preset = _peek(user_argv, "preset", RunArguments.preset)
    path = preset_path(task, preset)
    if task in TASK_CHOICES and not path.exists():
        choices = sorted(p.stem.split("_", 1)[1] for p in CONFIG_DIR.glob(f"{task}_*.yaml"))
        raise UsageError(f"no preset {preset!r} for task {task!r}; choose one of: {', '.join(['default', *choices])}")
    preset_options = read_options(path) if path.exists() else {}
    full = _to_argv(BASE_DEFAULTS) + _to_argv(preset_options) + user_argv
    load_signals(included_modules(user_argv))  # before --signal is checked (and --help lists the signals)
    namespace, unknown = TrainArgumentParser().parse_known_args(full)
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (see 'adalora-ablation train --help')")
    values = vars(namespace)
    run, model, data, adalora = (cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})
                                 for cls in RUN_CLASSES)
    trainer_argv = [tok for tokens in (values.get(TRAINER_DEST) or {}).values() for tok in tokens]
    settings = RunSettings(run, model, data, adalora, trainer_argv)
    validate(run, adalora)
    validate_data(run, data)
    validate_planted(run, data)
    validate_seed(trainer_argv)
    return settings


def parse_train_args(argv: list[str]):
    """``train`` arguments as (run, model, data, adalora, training) dataclasses (loads transformers and torch)."""
    return parse_settings(argv).parts()


def run_identity(argv: list[str]) -> dict:
    """The identity of the run that ``train`` with these arguments makes (RunSettings.identity)."""
    return parse_settings(argv).identity()


def run_config(run_args, model_args, data_args, ada_args, training_args) -> dict:
    """Every resolved setting, by group, as the summary records it (run/identity.py picks those that decide the
    result from it)."""
    data = dataclasses.asdict(data_args)
    # The default's and a draw's modules depend on the model; the rule that picks them is the setting.
    if run_args.task == "planted":  # how the updates are built and the student computes: another rule, another task
        data["planted_construction"] = construction_rule()
        data["planted_student"] = student_rule()
    if run_args.task == "planted" and not data_args.planted_modules:
        if data_args.planted_draw is None:
            data["planted_default"] = default_rule()
        else:
            data["planted_draw_rule"] = draw_rule()
    return {"run": dataclasses.asdict(run_args), "model": dataclasses.asdict(model_args), "data": data,
            "adalora": dataclasses.asdict(ada_args), "training": training_args.to_dict()}


CUSTOM_FLAGS = ("train_file", "validation_file", "test_file", "text_columns", "metric")


def validate_seed(trainer_argv: list[str]) -> None:
    """Seeds name run folders (<task>/<signal>/<seed>) and the report reads them as numbers >= 0."""
    seed = _last_value(trainer_argv, "seed")
    if seed is not None and int(seed) < 0:
        raise UsageError(f"--seed {seed} must be >= 0 (run folders and the report number seeds 0, 1, 2, ...)")


def _last_value(argv: list[str], name: str) -> str | None:
    value = None
    for i, tok in enumerate(argv):
        if tok in (f"--{name}", f"--{name.replace('_', '-')}") and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def validate_data(run: RunArguments, data: DataArguments) -> None:
    """--task custom needs its files and columns; the other tasks take none of them."""
    if run.task == CUSTOM:
        missing = [f for f in ("train_file", "validation_file", "text_columns") if not getattr(data, f)]
        if missing:
            raise UsageError(f"--task custom needs --{missing[0].replace('_', '-')} (e.g. --train-file train.csv "
                             f"--validation-file dev.csv --text-columns sentence --label-column label)")
        if data.data_dir:
            raise UsageError("--data-dir is for the GLUE tasks; --task custom reads --train-file and "
                             "--validation-file")
        return
    given = [f for f in CUSTOM_FLAGS if getattr(data, f)]
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} is for --task custom (your own files); --task {run.task} "
                         f"reads GLUE (--data-dir for a local copy)")


def validate_planted(run: RunArguments, data: DataArguments) -> None:
    """--planted-draw picks the spec itself: with --planted-modules, or on another task, it is refused."""
    if data.planted_draw is None:
        return
    if run.task != "planted":
        raise UsageError(f"--planted-draw is for --task planted (it draws the planted spec); drop it for --task "
                         f"{run.task}")
    if data.planted_modules:
        raise UsageError("--planted-draw and --planted-modules both choose the planted spec; give one of them")
    if data.planted_draw < 0:
        raise UsageError(f"--planted-draw {data.planted_draw} must be >= 0 (the draws are numbered 0, 1, ...)")


def validate(run: RunArguments, adalora: AdaLoraArguments) -> None:
    if run.task not in TASK_CHOICES:
        raise UsageError(f"unknown task {run.task!r}; use --task with one of: {', '.join(TASK_CHOICES)}")
    if run.resume_fallback not in ("restart", "stop"):
        raise UsageError(f"unknown --resume-fallback {run.resume_fallback!r}; choose restart or stop")
    if run.signal not in SIGNALS:
        raise UsageError(f"unknown signal {run.signal!r}; use --signal with one of: {', '.join(SIGNALS)}")
    if SIGNALS[run.signal].only_task not in (None, run.task):
        raise UsageError(f"--signal {run.signal} needs --task {SIGNALS[run.signal].only_task} (it reads that task's "
                         f"answer); choose another signal for --task {run.task}")
    if adalora.normalize_method not in NORMALIZE_METHODS:
        raise UsageError(f"unknown --normalize-method {adalora.normalize_method!r}; "
                         f"choose one of: {', '.join(NORMALIZE_METHODS)}")
    if adalora.plasticity_norm not in PLASTICITY_NORMS:
        raise UsageError(f"unknown --plasticity-norm {adalora.plasticity_norm!r}; "
                         f"choose one of: {', '.join(PLASTICITY_NORMS)}")
    if not 0 < adalora.target_r <= adalora.init_r:
        raise UsageError(f"--target-r {adalora.target_r} must be between 1 and --init-r {adalora.init_r}")
    if adalora.deltaT < 1 or adalora.tinit < 0 or adalora.tfinal < 0:
        raise UsageError("--deltaT must be >= 1 and --tinit/--tfinal >= 0")
    if not 0 < adalora.ema_decay < 1:
        raise UsageError(f"--ema-decay {adalora.ema_decay} must be strictly between 0 and 1")


def help_text() -> str:
    return TrainArgumentParser().format_help()

