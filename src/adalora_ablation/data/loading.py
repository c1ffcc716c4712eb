"""Data side: GLUE from the hub or a local copy (GLUE TSVs, a hub snapshot, a save_to_disk folder), the synthetic
demo task, and cached tokenization."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict

from ..errors import UsageError, first_line
from ..files import default_cache_dir
from .tasks import LOCAL_FILES, Task

# -- the synthetic task ----------------------------------------------------------------------------------------
SYNTHETIC_WORDS = [
    "red", "blue", "green", "gold", "gray", "pink", "teal", "navy", "cat", "dog", "fox", "owl", "elk", "bee", "cow",
    "yak", "sun", "moon", "star", "rain", "snow", "wind", "fog", "ice", "oak", "elm", "fir", "ash", "rose", "lily",
    "fern", "moss",
]


MARKER_WORDS = SYNTHETIC_WORDS[:4]


def synthetic_task(n_train: int = 2000, n_eval: int = 400, seed: int = 0, premise_len: int = 6) -> DatasetDict:
    """SYNTHETIC keyword task: label 0 ("entailment") iff the premise contains one of the MARKER_WORDS.

    Balanced, deterministic for a seed, and learnable by tiny-deberta in about a hundred steps. It exists so that
    the whole pipeline runs offline; its numbers say nothing about GLUE.
    """
    rng = random.Random(seed)
    fillers = [w for w in SYNTHETIC_WORDS if w not in MARKER_WORDS]

    def rows(n):
        out = {"sentence1": [], "sentence2": [], "label": []}
        for i in range(n):
            premise = rng.sample(fillers, premise_len)
            positive = i % 2 == 0
            if positive:
                premise[rng.randrange(premise_len)] = rng.choice(MARKER_WORDS)
            out["sentence1"].append(" ".join(premise))
            out["sentence2"].append(rng.choice(fillers))
            out["label"].append(0 if positive else 1)
        return Dataset.from_dict(out)

    return DatasetDict({"train": rows(n_train), "validation": rows(n_eval)})


# -- GLUE from a local copy -------------------------------------------------------------------------------------
# Gold labels that mean "no gold label": MultiNLI's "-" (the annotators did not agree; GLUE leaves these pairs out)
# and the hub's -1 (an unlabelled row). Such rows are skipped and counted.
NO_GOLD_LABEL = ("-", -1)
LAYOUT_NAMES = {"tsv": "GLUE TSV files", "hub": "hub dataset snapshot", "saved": "datasets save_to_disk folder"}
TABLE_SUFFIXES = (".parquet", ".jsonl")


@dataclass(frozen=True)
class LocalCopy:
    """Where a task's splits lie under --data-dir, and in which layout (a key of LAYOUT_NAMES)."""

    layout: str
    folder: Path
    files: dict[str, list[Path]]  # split -> the files that hold it (what is read, and what the cache key covers)


def task_splits(task: Task) -> list[str]:
    return [task.train_split, *task.eval_splits.values()]


def accepted_layouts(task: Task) -> str:
    splits = task_splits(task)
    return (f"{task.local_dir}/{{{','.join(LOCAL_FILES[s] for s in splits)}}} (the GLUE download), "
            f"{task.hub_config}/{{{','.join(splits)}}}-*.parquet (huggingface-cli download nyu-mll/glue "
            f"--repo-type dataset), or {task.hub_config}/ holding a DatasetDict (datasets save_to_disk)")


def find_local(task: Task, data_dir: str) -> LocalCopy:
    """Detect the layout of the task's local copy from the files present; missing files are a usage error."""
    root = Path(data_dir).expanduser()
    splits = task_splits(task)
    tsv_folder, hub_folder = root / task.local_dir, root / task.hub_config
    if (tsv_folder / LOCAL_FILES[task.train_split]).is_file():
        copy = LocalCopy("tsv", tsv_folder, {s: [tsv_folder / LOCAL_FILES[s]] for s in splits})
        absent = [str(files[0]) for files in copy.files.values() if not files[0].is_file()]
        if absent:
            raise UsageError(f"missing data file(s) {', '.join(absent)}; the GLUE download's "
                             f"{task.local_dir}/ holds {', '.join(LOCAL_FILES[s] for s in splits)}")
        return copy
    if (hub_folder / "dataset_dict.json").is_file():
        saved = json.loads((hub_folder / "dataset_dict.json").read_text()).get("splits", [])
        absent = [s for s in splits if s not in saved]
        if absent:
            raise UsageError(f"the DatasetDict in {hub_folder} has the splits {saved} but lacks {absent}; save all of "
                             f"{splits} (load_dataset('nyu-mll/glue', '{task.hub_config}').save_to_disk(...))")
        files = {s: sorted(p for p in (hub_folder / s).rglob("*") if p.is_file()) for s in splits}
        return LocalCopy("saved", hub_folder, files)
    if _table_files(hub_folder, task.train_split):
        files = {s: _table_files(hub_folder, s) for s in splits}
        absent = [s for s, found in files.items() if not found]
        if absent:
            raise UsageError(f"missing data file(s) for {absent} in {hub_folder}: expected "
                             f"{', '.join(f'{s}-*.parquet' for s in absent)} beside the train split's files")
        return LocalCopy("hub", hub_folder, files)
    hint = ""
    if (root / "dataset_dict.json").is_file() or (root / LOCAL_FILES[task.train_split]).is_file() or \
            _table_files(root, task.train_split):
        hint = f" ({root} itself holds one task's files: pass the folder above it)"
    raise UsageError(f"missing data files for GLUE {task.name} in {root}{hint}; --data-dir takes a folder holding "
                     f"{accepted_layouts(task)}")


def _table_files(folder: Path, split: str) -> list[Path]:
    """A split's shards in a hub snapshot (train-00000-of-00001.parquet, ...), or one train.parquet/train.jsonl."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in TABLE_SUFFIXES
                  and (p.stem == split or p.stem.startswith(f"{split}-")))


def read_local(task: Task, copy: LocalCopy, log=print) -> DatasetDict:
    """Every split of a local copy as a Dataset with columns (text_keys..., label), label ids in the hub's order."""
    if copy.layout == "saved":
        saved = datasets.load_from_disk(str(copy.folder))
        columns = {s: _saved_columns(saved[s], task, copy.folder / s) for s in copy.files}
    else:
        reader = _tsv_columns if copy.layout == "tsv" else _table_columns
        columns = {s: reader(files, task) for s, files in copy.files.items()}
    out, skipped = {}, {}
    for split, (texts, labels, where) in columns.items():
        out[split], skipped[split] = _to_dataset(task, texts, labels, where)
    sizes = ", ".join(f"{s} {len(ds):,}" for s, ds in out.items())
    note = ""
    if any(skipped.values()):
        note = (f"; skipped {sum(skipped.values()):,} rows without a gold label, as GLUE does: "
                + ", ".join(f"{s} {n:,}" for s, n in skipped.items()))
    log(f"[data] GLUE {task.name} from {copy.folder} ({LAYOUT_NAMES[copy.layout]}): {sizes} rows{note}")
    return DatasetDict(out)


def _unknown_columns(where, found, task: Task) -> UsageError:
    return UsageError(
        f"{where} has the columns {list(found)}, which match no accepted layout: GLUE TSV "
        f"{'/'.join(task.tsv_text_columns)} + {' or '.join(task.tsv_label_columns)}"
        f"{' (no header row)' if task.tsv_columns else ''}; hub parquet or save_to_disk "
        f"{'/'.join(task.text_keys)} + label"
    )


def _tsv_columns(files: list[Path], task: Task):
    """A GLUE TSV (tab separated, no quoting; a header row, or CoLA's fixed columns without one): the text columns
    and the label column. utf-8-sig: the GLUE download's MRPC files start with a byte-order mark."""
    (path,) = files
    texts, labels, lines = [[] for _ in task.tsv_text_columns], [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, fieldnames=task.tsv_columns, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = reader.fieldnames or []
        label_column = next((c for c in task.tsv_label_columns if c in header), None)
        if any(c not in header for c in task.tsv_text_columns) or label_column is None:
            raise _unknown_columns(path, header, task)
        for row in reader:
            if task.tsv_columns and None in row:  # more fields than a header-less layout has: not that layout
                raise _unknown_columns(f"{path}:{reader.line_num}", [*task.tsv_columns, *row[None]], task)
            for column, values in zip(task.tsv_text_columns, texts):
                values.append(row[column])
            labels.append(row[label_column])
            lines.append(reader.line_num)
    return texts, labels, lambda i: f"{path}:{lines[i]}"


def _table_columns(files: list[Path], task: Task):
    """Parquet shards (or jsonl) with the hub's columns and integer labels."""
    import pyarrow as pa
    import pyarrow.json
    import pyarrow.parquet

    tables = []
    for path in files:
        table = pyarrow.parquet.read_table(path) if path.suffix == ".parquet" else pyarrow.json.read_json(path)
        if not {*task.text_keys, "label"} <= set(table.column_names):
            raise _unknown_columns(path, table.column_names, task)
        _check_label_names(datasets.Features.from_arrow_schema(table.schema)["label"], task, path)
        tables.append(table.select([*task.text_keys, "label"]))
    table = pa.concat_tables(tables)
    offsets = [0]
    for t in tables:
        offsets.append(offsets[-1] + len(t))

    def where(i):
        k = next(k for k in range(len(files)) if i < offsets[k + 1])
        return f"{files[k]} row {i - offsets[k]}"

    return [table.column(k).to_pylist() for k in task.text_keys], table.column("label").to_pylist(), where


def _saved_columns(ds: Dataset, task: Task, folder: Path):
    if not {*task.text_keys, "label"} <= set(ds.column_names):
        raise _unknown_columns(folder, ds.column_names, task)
    _check_label_names(ds.features["label"], task, folder)
    columns = ds.select_columns([*task.text_keys, "label"]).to_dict()
    return [columns[k] for k in task.text_keys], columns["label"], lambda i: f"{folder} row {i}"


def _check_label_names(feature, task: Task, where) -> None:
    """Integer labels are taken in the hub's order; a copy that names its labels must name them in that order."""
    names = getattr(feature, "names", None)
    if task.regression and names is not None:
        raise UsageError(f"{where} has class labels {names}, but {task.name} is a regression task (a score per "
                         f"row); re-export the split with its float scores")
    if names is not None and tuple(names) != task.labels:
        raise UsageError(f"{where} names its labels {names}, but GLUE {task.name} has {list(task.labels)} in this "
                         f"order; re-export the split with the hub's label ids")


def _to_dataset(task: Task, texts: list[list], labels: list, where) -> tuple[Dataset, int]:
    """Map labels (names or hub ids; scores for regression) to the model's targets, skip classification rows
    without a gold label; returns (dataset, skipped)."""
    keep, targets = [], []
    for i, label in enumerate(labels):
        if not task.regression and label in NO_GOLD_LABEL:
            continue
        target = _regression_target(label) if task.regression else _class_id(task, label)
        if target is None:
            expected = ("a number (the regression score)" if task.regression else
                        f"one of {list(task.labels)} (or their ids 0..{len(task.labels) - 1})")
            raise UsageError(f"{where(i)}: unknown label {label!r}; expected {expected}")
        if any(column[i] is None for column in texts):
            raise UsageError(f"{where(i)}: a text field is missing")
        keep.append(i)
        targets.append(target)
    data = {k: [column[i] for i in keep] for k, column in zip(task.text_keys, texts)}
    data["label"] = targets
    features = datasets.Features({**{k: datasets.Value("string") for k in task.text_keys},
                                  "label": datasets.Value("float32" if task.regression else "int64")})
    return Dataset.from_dict(data, features=features), len(labels) - len(keep)


def _class_id(task: Task, label) -> int | None:
    if isinstance(label, bool):
        return None
    if isinstance(label, str) and label in task.labels:
        return task.labels.index(label)
    if isinstance(label, str) and label.strip().isdigit():  # the GLUE TSVs of CoLA, SST-2, MRPC, QQP: 0/1
        label = int(label)
    return label if isinstance(label, int) and 0 <= label < len(task.labels) else None


def _regression_target(label) -> float | None:
    if isinstance(label, bool):
        return None
    try:
        value = float(label)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# -- GLUE from the hub or a local copy ---------------------------------------------------------------------------
def load_raw(task: Task, data_dir: str | None, log=print) -> DatasetDict:
    """Train split plus every eval split of the task, with columns (text_keys..., label)."""
    if task.synthetic:
        return synthetic_task(seed=0)  # one fixed dataset for every run, so signals and seeds share it
    if task.custom_files:
        from .custom import custom_datasets

        return custom_datasets(task, log=log)
    if data_dir is not None:
        return read_local(task, find_local(task, data_dir), log=log)
    try:
        raw = datasets.load_dataset("nyu-mll/glue", task.hub_config)
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        first = first_line(exc)
        raise UsageError(f"cannot load GLUE {task.name} from the hub ({first}); offline, pass --data-dir with a local "
                         f"copy ({accepted_layouts(task)})") from None
    columns = [*task.text_keys, "label"]
    out = DatasetDict({s: raw[s].select_columns(columns) for s in task_splits(task)})
    if task.regression:  # the hub's STS-B scores are float32 already; MSE needs float targets in any case
        out = out.cast_column("label", datasets.Value("float32"))
    return out


def data_fingerprint(task: Task, data_dir: str | None) -> str:
    """What the tokenization cache key says about the data: the files read, with their sizes and times."""
    if task.synthetic:
        return "synthetic-v2"
    if task.custom_files:  # the files' contents (sha256), and how they are read
        return json.dumps({"custom": task.custom_files, "text": task.text_keys, "label": task.label_column,
                           "labels": task.labels}, sort_keys=True)
    if data_dir is None:
        return f"hub:nyu-mll/glue/{task.hub_config}"
    copy = find_local(task, data_dir)
    parts = [copy.layout]
    for files in copy.files.values():
        for p in files:
            st = p.stat()
            parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of what decides the token ids: vocabulary, normalizer, pre-tokenizer, post-processor, added tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        state = {"vocab": tokenizer.get_vocab()}
    else:  # truncation and padding are per call and change as it tokenizes; they are not part of the tokenizer
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def tokenize(task: Task, raw: DatasetDict, tokenizer, max_seq_length: int) -> DatasetDict:
    keys = task.text_keys

    def encode(batch):  # one text column (CoLA, SST-2) or a pair
        return tokenizer(*(batch[k] for k in keys), truncation=True, max_length=max_seq_length)

    return DatasetDict({
        split: ds.map(encode, batched=True, remove_columns=list(keys), desc=f"tokenizing {split}")
        for split, ds in raw.items()
    })


def load_tokenized(task: Task, data_args, tokenizer, tokenizer_id: str, log=print, build=None,
                   build_key=None) -> DatasetDict:
    """Tokenized train + eval splits, cut to --max-*-samples; cached on disk per task/data/tokenizer/length.
    ``build`` (with ``build_key``, what decides its rows) makes the tokenized splits of a task whose rows are not
    read from files (the planted task)."""
    data_key = build_key if build is not None else data_fingerprint(task, data_args.data_dir)
    key = json.dumps({
        "task": task.name, "data": data_key, "tokenizer": tokenizer_id,
        "tokenizer_digest": tokenizer_fingerprint(tokenizer), "max_seq_length": data_args.max_seq_length, "v": 2,
    }, sort_keys=True)
    cache_root = Path(data_args.cache_dir) if data_args.cache_dir else default_cache_dir()
    folder = cache_root / "tokenized" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (folder / "dataset_dict.json").exists():
        log(f"[data] tokenized {task.name} loaded from cache {folder}")
        tokenized = datasets.load_from_disk(str(folder))
    else:
        tokenized = build() if build is not None else \
            tokenize(task, load_raw(task, data_args.data_dir, log=log), tokenizer, data_args.max_seq_length)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        try:
            tokenized.save_to_disk(str(tmp))
            (tmp / "cache_key.json").write_text(key)
            os.replace(tmp, folder)
            log(f"[data] tokenized {task.name} cached in {folder}")
        except OSError as exc:  # a read-only or full disk must not stop the run; the next run tokenizes again
            log(f"[data] could not cache tokenized data ({exc}); continuing without cache")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return DatasetDict({
        split: _first(ds, data_args.max_train_samples if split == task.train_split else data_args.max_eval_samples)
        for split, ds in tokenized.items()
    })


def _first(ds: Dataset, n: int | None) -> Dataset:
    return ds.select(range(min(n, len(ds)))) if n is not None else ds
