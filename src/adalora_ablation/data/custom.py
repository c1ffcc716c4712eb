"""A user's own classification or regression data (``--task custom``): CSV, TSV, JSON/JSONL or parquet files, as
transformers' run_glue.py accepts them. The labels are read from the data: strings or integers are classes (in
sorted order), a float column is a regression score. Every problem with a file is a one-line error naming the
file and the column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..files import file_sha256
from .metrics import CLASSIFICATION, REGRESSION
from .tasks import Task, custom_task

if TYPE_CHECKING:
    from datasets import DatasetDict

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
SPLIT_FLAGS = {"train": "--train-file", "validation": "--validation-file", "test": "--test-file"}


def read_columns(path: Path) -> dict[str, list]:
    """The file's columns as Python lists, by its suffix."""
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if path.suffix == ".parquet":
            table = pyarrow.parquet.read_table(path)
        elif path.suffix == ".tsv":  # GLUE-style: tabs, no quoting
            table = pyarrow.csv.read_csv(path, parse_options=pyarrow.csv.ParseOptions(delimiter="\t", quote_char=False))
        elif path.suffix == ".csv":
            table = pyarrow.csv.read_csv(path)
        else:  # JSON Lines (run_glue.py's .json files are JSON Lines too) or one JSON array of records; read by
            # Python's json so that a column mixing types reaches label_kind instead of failing in the parser
            text = path.read_text(encoding="utf-8")
            records = json.loads(text) if text.lstrip().startswith("[") else [
                json.loads(line) for line in text.splitlines() if line.strip()]
            if not all(isinstance(r, dict) for r in records):
                raise ValueError("expected one JSON object (a record) per line, or an array of records")
            return {k: [r.get(k) for r in records] for k in dict.fromkeys(k for r in records for k in r)}
    except (OSError, ValueError) as exc:  # pyarrow's parse errors are ValueErrors (ArrowInvalid), json's too
        raise UsageError(f"cannot read {path} ({str(exc).splitlines()[0]})") from None
    return {name: table.column(name).to_pylist() for name in table.column_names}


def label_kind(values: list, path: Path, column: str) -> str:
    """'names' (strings), 'ids' (integers) or 'scores' (floats: regression); anything else is an error."""
    if any(v is None for v in values):
        row = next(i for i, v in enumerate(values) if v is None)
        raise UsageError(f"{path} row {row}: the label column '{column}' is empty")
    kinds = {"names" if isinstance(v, str) else "ids" if isinstance(v, int) and not isinstance(v, bool)
             else "scores" if isinstance(v, float) else type(v).__name__ for v in values}
    if kinds == {"ids", "scores"}:
        kinds = {"scores"}  # a JSON column with 1 and 2.5: numbers, at least one not whole: a score
    if len(kinds) != 1 or not kinds <= {"names", "ids", "scores"}:
        raise UsageError(f"{path}: the label column '{column}' mixes label types ({', '.join(sorted(kinds))}); "
                         f"use class names, integer class ids, or float scores (regression) throughout")
    return kinds.pop()


def load_custom(data_args) -> Task:
    """The custom task (its name, text columns, labels, metrics, file digests), every file checked."""
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    files = {split: Path(p).expanduser() for split, p in files.items() if p}
    text_columns = list(data_args.text_columns or [])
    if not 1 <= len(text_columns) <= 2:
        raise UsageError("--task custom needs --text-columns with one or two column names (a sentence, or a pair)")
    label_column = data_args.label_column
    columns, kinds = {}, {}  # split -> {column: values}, split -> label kind
    for split, path in files.items():
        if not path.is_file():
            raise UsageError(f"{SPLIT_FLAGS[split]} {path} does not exist (or is not a file)")
        if path.suffix not in SUFFIXES:
            raise UsageError(f"{SPLIT_FLAGS[split]} {path}: unknown file type '{path.suffix}'; use one of "
                             f"{', '.join(SUFFIXES)}")
        found = read_columns(path)
        missing = [c for c in [*text_columns, label_column] if c not in found]
        if missing:
            raise UsageError(f"{path} has no column '{missing[0]}' (its columns: {', '.join(found)}); name the "
                             f"columns with --text-columns and --label-column")
        n = len(found[label_column])
        if n == 0:
            raise UsageError(f"{path} holds no rows ({split} split)")
        for column in text_columns:
            bad = next((i for i, v in enumerate(found[column]) if not isinstance(v, str)), None)
            if bad is not None:
                raise UsageError(f"{path} row {bad}: the text column '{column}' holds {found[column][bad]!r}, "
                                 f"not text")
        kinds[split] = label_kind(found[label_column], path, label_column)
        columns[split] = {**{c: found[c] for c in text_columns}, "label": found[label_column]}
    train_kind = kinds["train"]
    for split, kind in kinds.items():
        if kind != train_kind and not (train_kind == "scores" and kind == "ids"):  # whole scores are scores
            raise UsageError(f"{files[split]}: the label column '{label_column}' holds {kind} but the training file "
                             f"{files['train']} holds {train_kind}; use the same label type in every file")
    regression = train_kind == "scores"
    labels = () if regression else tuple(str(v) for v in sorted(set(columns["train"]["label"])))
    if not regression and len(labels) < 2:
        raise UsageError(f"{files['train']}: the label column '{label_column}' has one class ({labels[0]!r}); a "
                         f"classifier needs at least two (or float scores for regression)")
    for split, data in columns.items():
        unknown = None if regression else next((v for v in data["label"] if str(v) not in labels), None)
        if unknown is not None:
            raise UsageError(f"{files[split]}: label {unknown!r} does not occur in the training file "
                             f"{files['train']} (its classes: {', '.join(labels)})")
    metric = data_args.metric or ("pearson" if regression else "accuracy")
    allowed = REGRESSION if regression else CLASSIFICATION
    if metric not in allowed:
        kind = "a regression task (float labels)" if regression else "a classification task"
        raise UsageError(f"--metric {metric} does not apply to {kind}; choose one of {', '.join(allowed)}")
    if metric == "f1" and len(labels) != 2:
        raise UsageError(f"--metric f1 is binary F1 (class {labels[-1]!r} positive) but {files['train']} has "
                         f"{len(labels)} classes; use accuracy or matthews")
    others = [m for m in allowed if m != metric and not (m == "f1" and len(labels) != 2)]
    return custom_task(files["train"], tuple(text_columns), label_column, labels, (metric, *others),
                       {split: (str(path.resolve()), file_sha256(path)) for split, path in files.items()})


def custom_datasets(task: Task, log=print) -> DatasetDict:
    """Every split of the custom task's files with columns (text columns..., label): class values mapped to ids in
    the task's (sorted) order, scores as float32. The files were checked when the task was built."""
    import datasets

    features = datasets.Features({**{k: datasets.Value("string") for k in task.text_keys},
                                  "label": datasets.Value("float32" if task.regression else "int64")})
    out = {}
    for split, (path, _) in task.custom_files.items():
        found = read_columns(Path(path))
        labels = found[task.label_column]
        if task.regression:
            targets = [float(v) for v in labels]
        else:
            ids = {name: i for i, name in enumerate(task.labels)}
            unknown = next((v for v in labels if str(v) not in ids), None)
            if unknown is not None:
                raise UsageError(f"{path}: label {unknown!r} does not occur in the training file (its classes: "
                                 f"{', '.join(task.labels)})")
            targets = [ids[str(v)] for v in labels]
        out[split] = datasets.Dataset.from_dict({**{k: found[k] for k in task.text_keys}, "label": targets},
                                                features=features)
    kind = "regression" if task.regression else f"{len(task.labels)} classes"
    log(f"[data] {task.name} ({kind}): " + ", ".join(f"{s} {len(d):,} rows from {task.custom_files[s][0]}"
                                                      for s, d in out.items()))
    return datasets.DatasetDict(out)
