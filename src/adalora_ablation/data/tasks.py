"""The task table: text columns, labels, metrics, evaluation splits and where a local copy keeps them.
Adding a GLUE task is one entry."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Task:
    name: str
    text_keys: tuple[str, ...]  # the hub's text columns, one or two (also in a hub snapshot or save_to_disk folder)
    labels: tuple[str, ...]  # label names in the hub's id order; empty for a regression task (one output, MSE)
    hub_config: str | None = None  # load_dataset("nyu-mll/glue", hub_config); also a hub-style local copy's folder
    local_dir: str | None = None  # sub-folder of a GLUE-download style --data-dir (TSV files)
    train_split: str = "train"
    # eval set name -> split; several sets log as eval_<name>_<metric>
    eval_splits: dict[str, str] = field(default_factory=lambda: {"": "validation"})
    # data/metrics.py names; the first is the main metric (the report's tests, the controls' band, adapter effect)
    metrics: tuple[str, ...] = ("accuracy",)
    tsv_text_columns: tuple[str, ...] = ("sentence1", "sentence2")  # the text columns of the GLUE TSV files
    # Label columns of the TSV files, first present wins: the GLUE download's MNLI has gold_label (beside the
    # annotators' label1..label5), its RTE has label, and so do simplified copies of MNLI.
    tsv_label_columns: tuple[str, ...] = ("label",)
    # Column names of a TSV without a header row (CoLA's train/dev files); None: the first row is the header.
    tsv_columns: tuple[str, ...] | None = None
    synthetic: bool = False
    # Suffix of each eval set's summary fields, in eval_splits order: eval_<metric><suffix> (MNLI: "", "_mm")
    field_suffixes: tuple[str, ...] = ("",)
    # --task custom: split -> (file, sha256 of its contents), and the files' label column; None for the table's tasks
    custom_files: dict[str, tuple[str, str]] | None = None
    label_column: str = "label"
    planted: bool = False  # rows labelled by a teacher with planted low-rank updates (data/planted.py)

    @property
    def regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1


# GLUE tasks, main metric first as the GLUE paper (and AdaLoRA's Table 1) report them: Matthews correlation for CoLA,
# Pearson for STS-B (Spearman beside it), accuracy elsewhere (F1 beside it for MRPC and QQP).
TASKS = {
    "mnli": Task(
        name="mnli",
        text_keys=("premise", "hypothesis"),
        labels=("entailment", "neutral", "contradiction"),
        hub_config="mnli",
        local_dir="MNLI",
        eval_splits={"matched": "validation_matched", "mismatched": "validation_mismatched"},
        field_suffixes=("", "_mm"),
        tsv_label_columns=("gold_label", "label"),
    ),
    "rte": Task(
        name="rte",
        text_keys=("sentence1", "sentence2"),
        labels=("entailment", "not_entailment"),
        hub_config="rte",
        local_dir="RTE",
    ),
    "cola": Task(
        name="cola",
        text_keys=("sentence",),
        labels=("unacceptable", "acceptable"),
        hub_config="cola",
        local_dir="CoLA",
        metrics=("matthews", "accuracy"),
        tsv_text_columns=("sentence",),
        tsv_columns=("source", "label", "original_judgement", "sentence"),  # GLUE's CoLA train/dev: no header
    ),
    "sst2": Task(
        name="sst2",
        text_keys=("sentence",),
        labels=("negative", "positive"),
        hub_config="sst2",
        local_dir="SST-2",
        tsv_text_columns=("sentence",),
    ),
    "mrpc": Task(
        name="mrpc",
        text_keys=("sentence1", "sentence2"),
        labels=("not_equivalent", "equivalent"),
        hub_config="mrpc",
        local_dir="MRPC",
        metrics=("accuracy", "f1"),
        tsv_text_columns=("#1 String", "#2 String"),
        tsv_label_columns=("Quality",),
    ),
    "qqp": Task(
        name="qqp",
        text_keys=("question1", "question2"),
        labels=("not_duplicate", "duplicate"),
        hub_config="qqp",
        local_dir="QQP",
        metrics=("accuracy", "f1"),
        tsv_text_columns=("question1", "question2"),
        tsv_label_columns=("is_duplicate",),
    ),
    "qnli": Task(
        name="qnli",
        text_keys=("question", "sentence"),
        labels=("entailment", "not_entailment"),
        hub_config="qnli",
        local_dir="QNLI",
        tsv_text_columns=("question", "sentence"),
    ),
    "stsb": Task(
        name="stsb",
        text_keys=("sentence1", "sentence2"),
        labels=(),  # a similarity score in [0, 5]: regression
        hub_config="stsb",
        local_dir="STS-B",
        metrics=("pearson", "spearman"),
        tsv_label_columns=("score",),
    ),
    "synthetic": Task(
        name="synthetic",
        text_keys=("sentence1", "sentence2"),
        labels=("entailment", "not_entailment"),
        synthetic=True,
    ),
    "planted": Task(
        name="planted",
        text_keys=("sentence1", "sentence2"),
        labels=tuple(f"class_{i}" for i in range(8)),  # several classes: see data/planted.py
        # agreement with the teacher's class; the MSE between the student's and the teacher's logits beside it
        metrics=("agreement", "logit_mse"),
        planted=True,
    ),
}
TASK_NAMES = tuple(TASKS)

# The GLUE download's TSV file for each split name.
LOCAL_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}


@dataclass(frozen=True)
class MetricField:
    """One metric of one eval set: its field in final_summary.json and the Trainer's key for it."""

    field: str  # final_summary.json, e.g. eval_accuracy, eval_accuracy_mm, eval_matthews
    metric: str  # metrics.jsonl and the summary's eval_metrics: eval_<set>_<name> with several eval sets
    eval_set: str  # the task table's name for the eval set; "" for a task with one
    name: str  # the metric (data/metrics.py)

    @property
    def without_adapters_field(self) -> str:
        """The same metric with every LoRA update switched off (adapter_effect.py)."""
        return f"{self.field}_without_adapters"

    @property
    def adapter_effect_field(self) -> str:
        """With the adapters minus without: eval_accuracy -> adapter_effect, eval_accuracy_mm -> adapter_effect_mm,
        eval_matthews -> adapter_effect."""
        return self.field.replace(f"eval_{self.name}", "adapter_effect")

    @property
    def label(self) -> str:
        """Column label: the metric's name, with the eval set's when the task has several."""
        return f"{self.eval_set} {METRIC_LABELS.get(self.name, self.name)}".strip()


METRIC_LABELS = {"accuracy": "accuracy", "agreement": "agreement", "logit_mse": "logit MSE", "f1": "F1",
                 "matthews": "Matthews corr.", "pearson": "Pearson", "spearman": "Spearman"}


def metric_fields(task: Task, main_only: bool = False) -> list[MetricField]:
    """Every (eval set, metric) of the task, eval sets in table order, the main metric first within each; with
    main_only, the main metric of each eval set (the first entry is the task's headline number)."""
    names = task.metrics[:1] if main_only else task.metrics
    out = []
    for (eval_set, _), suffix in zip(task.eval_splits.items(), task.field_suffixes):
        for name in names:
            # The Trainer prefixes "eval_" to compute_metrics' key, and the eval set's name with several sets.
            out.append(MetricField(f"eval_{name}{suffix}", f"eval_{eval_set}_{name}" if eval_set else f"eval_{name}",
                                   eval_set, name))
    return out


# -- a user's own data (--task custom) ----------------------------------------------------------------------------
CUSTOM = "custom"
TASK_CHOICES = (*TASK_NAMES, CUSTOM)
TASK_SPEC = "task.json"  # <output-root>/custom-<name>/task.json: the custom task, for the report and the figures
_SPLIT_WORDS = {"train", "training", "dev", "validation", "valid", "val", "test", "data"}


def custom_task_name(train_file: str | Path) -> str:
    """custom-<name>, named after the data: the training file's name without split words (reviews_train.csv ->
    custom-reviews), or its folder's name when nothing else is left (data/reviews/train.csv -> custom-reviews)."""
    path = Path(train_file).expanduser()
    words = [w for w in re.split(r"[^A-Za-z0-9]+", path.stem) if w and w.lower() not in _SPLIT_WORDS]
    name = "-".join(words) or re.sub(r"[^A-Za-z0-9]+", "-", path.resolve().parent.name).strip("-") or "data"
    return f"{CUSTOM}-{name.lower()}"


def custom_task(train_file, text_columns: tuple[str, ...], label_column: str, labels: tuple[str, ...],
                metrics: tuple[str, ...], files: dict[str, tuple[str, str]]) -> Task:
    return Task(name=custom_task_name(train_file), text_keys=text_columns, labels=labels, metrics=metrics,
                custom_files=files, label_column=label_column)


def task_spec(task: Task) -> dict:
    return {"name": task.name, "text_columns": list(task.text_keys), "label_column": task.label_column,
            "labels": list(task.labels),
            "metrics": list(task.metrics), "files": {s: list(f) for s, f in (task.custom_files or {}).items()}}


def task_from_spec(spec: dict) -> Task:
    """The custom task a run recorded in task.json (the name is the run folder's, whatever the files are called)."""
    return Task(name=spec["name"], text_keys=tuple(spec["text_columns"]), labels=tuple(spec["labels"]),
                metrics=tuple(spec["metrics"]), custom_files={s: tuple(f) for s, f in spec["files"].items()},
                label_column=spec["label_column"])
