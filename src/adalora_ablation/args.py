"""Command-line arguments as dataclasses (parsed by HfArgumentParser, with TrainingArguments for the Trainer).

Precedence, lowest first: built-in defaults < the task preset file (``configs/<task>[_<preset>].yaml``) < a YAML/JSON
config file given as the only positional argument < flags on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from .errors import OneLineArgumentParser, UsageError, first_line
from .signals import (
    INCLUDE_HELP, NORMALIZE_METHODS, PLASTICITY_NORMS, SIGNALS, describe_signals, included_modules, load_signals,
)
from .data.planted_spec import construction_rule, default_rule, draw_rule
from .data.tasks import CUSTOM, TASK_CHOICES

CONFIG_DIR = Path(__file__).parent / "configs"
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
                                          "largest singular value; auto (default): the smallest of 0.5, 0.71, 1, ..., "
                                          "16 at which the base model agrees with the teacher on at most half of the "
                                          "calibration inputs (recorded as planted.strength_used)."})
    planted_targets: str = field(
        default="logits", metadata={"help": "Task planted: what the student learns from: logits (default: MSE on the "
                                            "teacher's logits, distillation) or labels (the teacher's classes, "
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


ARGUMENT_CLASSES = (RunArguments, ModelArguments, DataArguments, AdaLoraArguments, TrainingArguments)

# Trainer-side defaults that differ from TrainingArguments' own (lowest precedence).
BASE_DEFAULTS = {"report_to": "none", "save_total_limit": 2, "logging_steps": 10, "disable_tqdm": True}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag (HfArgumentParser's choice), the signal table as written."""


class TrainArgumentParser(OneLineArgumentParser, HfArgumentParser):
    """HfArgumentParser over ARGUMENT_CLASSES with one-line errors; --help ends with the signal table."""

    def __init__(self):
        super().__init__(ARGUMENT_CLASSES, prog="adalora-ablation train", formatter_class=_HelpFormatter,
                         epilog=f"signals (--signal NAME; role: baseline, signal or control):\n{describe_signals()}")


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


def _read_options(path: Path) -> dict:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
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


def parse_train_args(argv: list[str]):
    """Parse ``train`` arguments into (run, model, data, adalora, training) dataclasses."""
    argv = list(argv)
    file_options: dict = {}
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml", ".json")):
        file_options = _read_options(Path(argv.pop(0)))
    user_argv = _to_argv(file_options) + argv
    task = _peek(user_argv, "task", RunArguments.task)
    preset = _peek(user_argv, "preset", RunArguments.preset)
    path = preset_path(task, preset)
    if task in TASK_CHOICES and not path.exists():
        choices = sorted(p.stem.split("_", 1)[1] for p in CONFIG_DIR.glob(f"{task}_*.yaml"))
        raise UsageError(f"no preset {preset!r} for task {task!r}; choose one of: {', '.join(['default', *choices])}")
    preset_options = _read_options(path) if path.exists() else {}
    base = dict(BASE_DEFAULTS)
    if not torch.cuda.is_available():
        base["use_cpu"] = True  # lets --bf16 run on CPU instead of failing "your setup doesn't support bf16/gpu"
    full = _to_argv(base) + _to_argv(preset_options) + user_argv
    load_signals(included_modules(user_argv))  # before --signal is checked (and --help lists the signals)
    parser = TrainArgumentParser()
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=full, return_remaining_strings=True)
    except ValueError as exc:  # TrainingArguments.__post_init__ rejects some combinations
        raise UsageError(first_line(exc)) from None
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (see 'adalora-ablation train --help')")
    run, model, data, adalora, training = parsed
    validate(run, adalora)
    validate_data(run, data)
    validate_planted(run, data)
    return run, model, data, adalora, training


def run_config(run_args, model_args, data_args, ada_args, training_args) -> dict:
    """Every resolved setting, by group, as the summary records it (run/identity.py picks those that decide the
    result from it)."""
    data = dataclasses.asdict(data_args)
    # The default's and a draw's modules depend on the model; the rule that picks them is the setting.
    if run_args.task == "planted":  # how the updates are built: another construction, another task
        data["planted_construction"] = construction_rule()
    if run_args.task == "planted" and not data_args.planted_modules:
        if data_args.planted_draw is None:
            data["planted_default"] = default_rule()
        else:
            data["planted_draw_rule"] = draw_rule()
    return {"run": dataclasses.asdict(run_args), "model": dataclasses.asdict(model_args), "data": data,
            "adalora": dataclasses.asdict(ada_args), "training": training_args.to_dict()}


CUSTOM_FLAGS = ("train_file", "validation_file", "test_file", "text_columns", "metric")


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

