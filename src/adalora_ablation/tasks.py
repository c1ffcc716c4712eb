"""The task table: text columns, label names and evaluation splits. Adding a GLUE task is one entry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    text_keys: tuple[str, str]  # premise/hypothesis columns (hub and local TSV agree on these after renaming)
    labels: tuple[str, ...]  # label names in the hub's id order
    hub_config: str | None  # datasets: load_dataset("nyu-mll/glue", hub_config)
    local_dir: str | None  # sub-folder of --data-dir
    train_split: str
    eval_splits: dict[str, str]  # eval set name -> split; several sets log as eval_<name>_accuracy
    synthetic: bool = False
    # final_summary.json's field for each eval set's accuracy, in eval_splits order (runs.accuracies)
    accuracy_fields: tuple[str, ...] = ("eval_accuracy",)


TASKS = {
    "mnli": Task(
        name="mnli",
        text_keys=("premise", "hypothesis"),
        labels=("entailment", "neutral", "contradiction"),
        hub_config="mnli",
        local_dir="MNLI",
        train_split="train",
        eval_splits={"matched": "validation_matched", "mismatched": "validation_mismatched"},
        accuracy_fields=("eval_accuracy", "eval_accuracy_mm"),
    ),
    "rte": Task(
        name="rte",
        text_keys=("sentence1", "sentence2"),
        labels=("entailment", "not_entailment"),
        hub_config="rte",
        local_dir="RTE",
        train_split="train",
        eval_splits={"": "validation"},
    ),
    "synthetic": Task(
        name="synthetic",
        text_keys=("sentence1", "sentence2"),
        labels=("entailment", "not_entailment"),
        hub_config=None,
        local_dir=None,
        train_split="train",
        eval_splits={"": "validation"},
        synthetic=True,
    ),
}
TASK_NAMES = tuple(TASKS)

# Local GLUE TSV file for each split name.
LOCAL_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}
