"""Local GLUE copies in the layouts users have, built from the shared real rows: the GLUE download's TSVs (MNLI with
its full header: parses, label1..label5, gold_label), a hub dataset snapshot (parquet shards, as `huggingface-cli
download nyu-mll/glue --repo-type dataset` leaves them), jsonl files in the same places, and a `save_to_disk`
DatasetDict."""

from __future__ import annotations

import csv
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from adalora_ablation.data.tasks import LOCAL_FILES, Task

MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = [*MNLI_TRAIN_HEADER[:-2], "label1", "label2", "label3", "label4", "label5", "gold_label"]
RTE_HEADER = ["index", "sentence1", "sentence2", "label"]
NO_GOLD_EVERY = 37  # the GLUE-TSV MNLI copy gets a pair without a gold label ("-") after every 37th row


def shared_rows(glue_dir: Path, task: Task, sizes: dict[str, int]) -> dict[str, list[dict]]:
    """The first rows of each split of the shared files: {"sentence1", "sentence2", "label" (a name)} each."""
    rows = {}
    for split, n in sizes.items():
        with open(glue_dir / task.local_dir / LOCAL_FILES[split], newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            rows[split] = [{k: row[k] for k in ("sentence1", "sentence2", "label")} for _, row in zip(range(n), reader)]
    return rows


def _binary_parse(text: str) -> str:
    return "( " + " ".join(text.split()) + " )"


def _parse(text: str) -> str:
    return "(ROOT (S " + " ".join(f"(X {w})" for w in text.split()) + "))"


def write_glue_tsv(root: Path, task: Task, rows: dict[str, list[dict]]) -> dict[str, int]:
    """The GLUE download's files; for MNLI with pairs whose gold label is "-" mixed in. Returns those counts."""
    folder = root / task.local_dir
    folder.mkdir(parents=True, exist_ok=True)
    inserted = {}
    for split, split_rows in rows.items():
        mnli = task.name == "mnli"
        header = (MNLI_TRAIN_HEADER if split == "train" else MNLI_DEV_HEADER) if mnli else RTE_HEADER
        lines, inserted[split] = ["\t".join(header)], 0
        for i, row in enumerate(split_rows):
            lines.append(_tsv_line(header, i, row["sentence1"], row["sentence2"], row["label"], mnli))
            if mnli and i % NO_GOLD_EVERY == NO_GOLD_EVERY - 1:
                lines.append(_tsv_line(header, i, f"Pair {i} had no majority.", "So it has no gold label.", "-", mnli))
                inserted[split] += 1
        (folder / LOCAL_FILES[split]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return inserted


def _tsv_line(header, i, s1, s2, gold, mnli) -> str:
    if not mnli:
        return "\t".join([str(i), s1, s2, gold])
    # Annotator labels: gold (or a split vote for "-") in label1..label5 where the header has them.
    votes = [gold] * 5 if gold != "-" else ["neutral", "contradiction", "entailment", "neutral", "contradiction"]
    n_votes = len(header) - 11
    fields = [str(i), str(1000 + i), f"{1000 + i}e", "fiction", _binary_parse(s1), _binary_parse(s2), _parse(s1),
              _parse(s2), s1, s2, *votes[:n_votes], gold]
    assert len(fields) == len(header)
    return "\t".join(fields)


def _hub_dataset(task: Task, split_rows: list[dict]) -> Dataset:
    features = Features({task.text_keys[0]: Value("string"), task.text_keys[1]: Value("string"),
                         "label": ClassLabel(names=list(task.labels)), "idx": Value("int32")})
    return Dataset.from_dict({
        task.text_keys[0]: [r["sentence1"] for r in split_rows],
        task.text_keys[1]: [r["sentence2"] for r in split_rows],
        "label": [task.labels.index(r["label"]) for r in split_rows],
        "idx": list(range(len(split_rows))),
    }, features=features)


def _unlabelled_test_split(task: Task) -> Dataset:
    """The hub's test splits carry label -1; a copy has them beside the labelled splits."""
    return Dataset.from_dict({task.text_keys[0]: ["a"], task.text_keys[1]: ["b"], "label": [-1], "idx": [0]})


def write_hub_snapshot(root: Path, task: Task, rows: dict[str, list[dict]], shards: int = 2,
                       suffix: str = ".parquet") -> None:
    """DIR/<config>/<split>-0000k-of-0000n.parquet as in the hub's dataset repository
    (jsonl: DIR/<config>/<split>.jsonl)."""
    folder = root / task.hub_config
    folder.mkdir(parents=True, exist_ok=True)
    parts = {**{s: _hub_dataset(task, r) for s, r in rows.items()}, "test": _unlabelled_test_split(task)}
    for split, ds in parts.items():
        if suffix == ".jsonl":
            ds.to_json(folder / f"{split}.jsonl", lines=True)
            continue
        n = shards if split == task.train_split else 1
        for k in range(n):
            ds.shard(n, k, contiguous=True).to_parquet(folder / f"{split}-{k:05d}-of-{n:05d}.parquet")


def write_saved(root: Path, task: Task, rows: dict[str, list[dict]]) -> None:
    """load_dataset("nyu-mll/glue", config).save_to_disk(DIR/<config>), test split included."""
    parts = {s: _hub_dataset(task, r) for s, r in rows.items()}
    parts["test"] = _unlabelled_test_split(task).cast(parts[task.train_split].features)
    DatasetDict(parts).save_to_disk(str(root / task.hub_config))


LAYOUT_WRITERS = {
    "glue_tsv": write_glue_tsv,
    "hub_parquet": write_hub_snapshot,
    "hub_jsonl": lambda root, task, rows: write_hub_snapshot(root, task, rows, suffix=".jsonl"),
    "save_to_disk": write_saved,
}


# -- the other GLUE tasks: CoLA (no header), SST-2 (one sentence), STS-B (scores), MRPC (byte-order mark) ----------
# Where each shared TSV keeps its texts and label, read here with plain csv, independently of the tool's reader.
TSV_FIELDS = {"cola": ((3,), 1), "sst2": (("sentence",), "label"), "stsb": (("sentence1", "sentence2"), "score"),
              "mrpc": (("#1 String", "#2 String"), "Quality")}


def shared_task_rows(glue_dir: Path, task: Task, sizes: dict[str, int]) -> dict[str, list[dict]]:
    """The first rows of each split: {"texts": [...], "label": the hub's label (id, or float score)}."""
    text_fields, label_field = TSV_FIELDS[task.name]
    rows = {}
    for split, n in sizes.items():
        with open(glue_dir / task.local_dir / LOCAL_FILES[split], newline="", encoding="utf-8-sig") as f:
            reader = (csv.reader if task.tsv_columns else csv.DictReader)(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            rows[split] = [{"texts": [row[k] for k in text_fields],
                            "label": float(row[label_field]) if task.regression else int(row[label_field])}
                           for _, row in zip(range(n), reader)]
    return rows


def task_dataset(task: Task, split_rows: list[dict]) -> Dataset:
    """A split as the hub has it: the task's text columns, label (ClassLabel, or float32 for STS-B), idx."""
    label = Value("float32") if task.regression else ClassLabel(names=list(task.labels))
    features = Features({**{k: Value("string") for k in task.text_keys}, "label": label, "idx": Value("int32")})
    data = {k: [r["texts"][i] for r in split_rows] for i, k in enumerate(task.text_keys)}
    return Dataset.from_dict({**data, "label": [r["label"] for r in split_rows], "idx": list(range(len(split_rows)))},
                             features=features)


def write_task_layout(root: Path, task: Task, rows: dict[str, list[dict]], layout: str) -> None:
    """DIR/<config>/<split>-00000-of-00001.parquet (hub snapshot) or DIR/<config>/ (save_to_disk)."""
    parts = DatasetDict({s: task_dataset(task, r) for s, r in rows.items()})
    if layout == "save_to_disk":
        parts.save_to_disk(str(root / task.hub_config))
        return
    (root / task.hub_config).mkdir(parents=True, exist_ok=True)
    for split, ds in parts.items():
        ds.to_parquet(root / task.hub_config / f"{split}-00000-of-00001.parquet")
