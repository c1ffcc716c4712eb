"""Data side: GLUE from the hub or a local GLUE folder, the synthetic demo task, and cached tokenization."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict

from .errors import UsageError
from .tasks import LOCAL_FILES, Task

# Column names in local GLUE TSVs that hold the two texts, per task folder.
_LOCAL_TEXT_COLUMNS = {"MNLI": ("sentence1", "sentence2"), "RTE": ("sentence1", "sentence2")}

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


# -- GLUE --------------------------------------------------------------------------------------------------------
def read_glue_tsv(path: Path, task: Task) -> Dataset:
    """A GLUE TSV (header row, tab separated, no quoting) as a Dataset with the hub's column names and label ids."""
    s1, s2 = _LOCAL_TEXT_COLUMNS[task.local_dir]
    label_ids = {name: i for i, name in enumerate(task.labels)}
    columns = {task.text_keys[0]: [], task.text_keys[1]: [], "label": []}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {s1, s2, "label"} - set(reader.fieldnames or [])
        if missing:
            raise UsageError(f"{path} lacks the column(s) {sorted(missing)}; expected a GLUE TSV with a header row")
        for line_no, row in enumerate(reader, start=2):
            if row["label"] not in label_ids:
                raise UsageError(f"{path}:{line_no}: unknown label {row['label']!r}; expected one of {task.labels}")
            columns[task.text_keys[0]].append(row[s1])
            columns[task.text_keys[1]].append(row[s2])
            columns["label"].append(label_ids[row["label"]])
    return Dataset.from_dict(columns)


def local_split_path(data_dir: str, task: Task, split: str) -> Path:
    return Path(data_dir).expanduser() / task.local_dir / LOCAL_FILES[split]


def local_files(task: Task, data_dir: str) -> dict[str, Path]:
    """The task's local TSV per split; a missing one is a usage error naming the expected layout."""
    splits = [task.train_split, *task.eval_splits.values()]
    paths = {s: local_split_path(data_dir, task, s) for s in splits}
    absent = [str(p) for p in paths.values() if not p.is_file()]
    if absent:
        raise UsageError(f"missing data file(s) {', '.join(absent)}; pass --data-dir with a GLUE folder holding "
                         f"{task.local_dir}/{{{','.join(LOCAL_FILES[s] for s in splits)}}}")
    return paths


def load_raw(task: Task, data_dir: str | None) -> DatasetDict:
    """Train split plus every eval split of the task, with columns (text_keys..., label)."""
    if task.synthetic:
        return synthetic_task(seed=0)  # one fixed dataset for every run, so signals and seeds share it
    if data_dir is not None:
        return DatasetDict({s: read_glue_tsv(p, task) for s, p in local_files(task, data_dir).items()})
    try:
        raw = datasets.load_dataset("nyu-mll/glue", task.hub_config)
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load GLUE {task.name} from the hub ({first}); offline, pass --data-dir with a local "
                         f"GLUE folder") from None
    splits = [task.train_split, *task.eval_splits.values()]
    return DatasetDict({s: raw[s].select_columns([*task.text_keys, "label"]) for s in splits})


def data_fingerprint(task: Task, data_dir: str | None) -> str:
    if task.synthetic:
        return "synthetic-v2"
    if data_dir is None:
        return f"hub:nyu-mll/glue/{task.hub_config}"
    parts = []
    for p in local_files(task, data_dir).values():
        st = p.stat()
        parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ADALORA_CACHE", Path.home() / ".cache" / "adalora_ablation"))


def tokenize(task: Task, raw: DatasetDict, tokenizer, max_seq_length: int) -> DatasetDict:
    keys = task.text_keys

    def encode(batch):
        return tokenizer(batch[keys[0]], batch[keys[1]], truncation=True, max_length=max_seq_length)

    return DatasetDict({
        split: ds.map(encode, batched=True, remove_columns=list(keys), desc=f"tokenizing {split}")
        for split, ds in raw.items()
    })


def load_tokenized(task: Task, data_args, tokenizer, tokenizer_id: str, log=print) -> DatasetDict:
    """Tokenized train + eval splits, cut to --max-*-samples; cached on disk per task/data/tokenizer/length."""
    key = json.dumps({
        "task": task.name, "data": data_fingerprint(task, data_args.data_dir), "tokenizer": tokenizer_id,
        "vocab": len(tokenizer), "max_seq_length": data_args.max_seq_length, "v": 1,
    }, sort_keys=True)
    cache_root = Path(data_args.cache_dir) if data_args.cache_dir else default_cache_dir()
    folder = cache_root / "tokenized" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (folder / "dataset_dict.json").exists():
        log(f"[data] tokenized {task.name} loaded from cache {folder}")
        tokenized = datasets.load_from_disk(str(folder))
    else:
        tokenized = tokenize(task, load_raw(task, data_args.data_dir), tokenizer, data_args.max_seq_length)
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
