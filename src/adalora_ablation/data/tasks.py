"""The task table: text columns, label names, evaluation splits and where a local copy keeps them.
Adding a GLUE task is one entry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    text_keys: tuple[str, str]  # the hub's text columns (also in a hub snapshot or a save_to_disk folder)
    labels: tuple[str, ...]  # label names in the hub's id order
    hub_config: str | None  # load_dataset("nyu-mll/glue", hub_config); also the sub-folder of a hub-style local copy
    local_dir: str | None  # sub-folder of a GLUE-download style --data-dir (TSV files)
    train_split: str
    eval_splits: dict[str, str]  # eval set name -> split; several sets log as eval_<name>_accuracy
    tsv_text_columns: tuple[str, str] = ("sentence1", "sentence2")  # the text columns of the GLUE TSV files
    # Label columns of the TSV files, first present wins: the GLUE download's MNLI has gold_label (beside the
    # annotators' label1..label5), its RTE has label, and so do simplified copies of MNLI.
    tsv_label_columns: tuple[str, ...] = ("label",)
    synthetic: bool = False
    planted: bool = False  # rows labelled by a teacher with planted low-rank updates (data/planted.py)
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
        tsv_label_columns=("gold_label", "label"),
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
    "planted": Task(
        name="planted",
        text_keys=("sentence1", "sentence2"),
        labels=tuple(f"class_{i}" for i in range(8)),  # several classes: see data/planted.py
        hub_config=None,
        local_dir=None,
        train_split="train",
        eval_splits={"": "validation"},
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
