"""Local GLUE copies in every accepted layout (built from the real rows), the synthetic task, and the tokenization
cache."""

import csv
import shutil

import pytest
from datasets import ClassLabel, Dataset, DatasetDict
from glue_copies import (
    LAYOUT_WRITERS, NO_GOLD_EVERY, shared_rows, shared_task_rows, write_glue_tsv, write_hub_snapshot, write_task_layout,
)

from adalora_ablation.args import DataArguments
from adalora_ablation.data.loading import (
    MARKER_WORDS, data_fingerprint, load_raw, load_tokenized, synthetic_task, tokenize,
)
from adalora_ablation.errors import UsageError
from adalora_ablation.adalora.model import TINY_DEBERTA, tiny_tokenizer
from adalora_ablation.data.tasks import LOCAL_FILES, TASKS

SIZES = {"mnli": {"train": 300, "validation_matched": 80, "validation_mismatched": 80},
         "rte": {"train": 300, "validation": 80}}


def count_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_rte_local_tsv_matches_the_file(glue_dir):
    raw = load_raw(TASKS["rte"], str(glue_dir))
    assert len(raw["train"]) == count_rows(glue_dir / "RTE" / "train.tsv") == 2490
    assert len(raw["validation"]) == 277
    assert set(raw["train"]["label"]) == {0, 1}
    # QUOTE_NONE: a row starting with a double quote keeps it (csv's default quoting would merge rows).
    assert any(s.startswith('"') for s in raw["train"]["sentence1"])
    assert sum(raw["validation"]["label"]) == 131  # not_entailment count from the data README


def test_mnli_has_matched_and_mismatched(glue_dir):
    raw = load_raw(TASKS["mnli"], str(glue_dir))
    assert len(raw["validation_matched"]) == 9815 and len(raw["validation_mismatched"]) == 9832
    assert set(raw["train"].column_names) == {"premise", "hypothesis", "label"}
    assert set(raw["train"]["label"]) == {0, 1, 2}


def test_missing_data_dir_names_every_accepted_layout(tmp_path):
    with pytest.raises(UsageError, match=r"missing data files for GLUE rte in .*--data-dir takes a folder holding "
                                         r"RTE/\{train\.tsv,dev\.tsv\} .*rte/\{train,validation\}-\*\.parquet .*"
                                         r"save_to_disk"):
        load_raw(TASKS["rte"], str(tmp_path))


def test_unknown_label_is_a_usage_error(tmp_path):
    (tmp_path / "RTE").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "RTE" / name).write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(UsageError, match="unknown label 'maybe'"):
        load_raw(TASKS["rte"], str(tmp_path))


def test_synthetic_task_is_balanced_deterministic_and_follows_its_rule():
    a, b = synthetic_task(n_train=200, n_eval=50), synthetic_task(n_train=200, n_eval=50)
    assert a["train"]["sentence1"] == b["train"]["sentence1"]
    assert sum(a["train"]["label"]) == 100
    for s1, label in zip(a["train"]["sentence1"], a["train"]["label"]):
        assert (label == 0) == any(w in s1.split() for w in MARKER_WORDS)


def test_tokenized_data_is_cached_and_cut(tmp_path, glue_dir):
    tok = tiny_tokenizer()
    rows = shared_rows(glue_dir, TASKS["rte"], {"train": 40, "validation": 20})
    write_glue_tsv(tmp_path / "glue", TASKS["rte"], rows)
    args = DataArguments(data_dir=str(tmp_path / "glue"), max_seq_length=32, max_train_samples=10, max_eval_samples=5,
                         cache_dir=str(tmp_path / "cache"))
    messages = []
    first = load_tokenized(TASKS["rte"], args, tok, TINY_DEBERTA, log=messages.append)
    assert "GLUE rte from" in messages[0] and "cached in" in messages[1]
    second = load_tokenized(TASKS["rte"], args, tok, TINY_DEBERTA, log=messages.append)
    assert messages[2:] == [m for m in messages[2:] if "loaded from cache" in m] and len(messages) == 3
    assert len(first["train"]) == 10 and len(first["validation"]) == 5
    assert first["train"]["input_ids"] == second["train"]["input_ids"]
    assert max(len(ids) for ids in first["train"]["input_ids"]) <= 32
    # Another max length is another cache entry.
    args.max_seq_length = 16
    load_tokenized(TASKS["rte"], args, tok, TINY_DEBERTA, log=messages.append)
    assert "cached in" in messages[-1]


# -- local copies in the layouts users have ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def from_shared_files(glue_dir):
    """Per task: the shared files' first rows, tokenized (the reference for every layout)."""
    tok, out = tiny_tokenizer(), {}
    for name, sizes in SIZES.items():
        raw = load_raw(TASKS[name], str(glue_dir), log=lambda *a: None)
        first = DatasetDict({split: raw[split].select(range(n)) for split, n in sizes.items()})
        out[name] = tokenize(TASKS[name], first, tok, max_seq_length=64)
    return out


@pytest.mark.parametrize("task_name", ["mnli", "rte"])
@pytest.mark.parametrize("layout", list(LAYOUT_WRITERS))
def test_every_layout_gives_the_shared_files_tokenized_examples(tmp_path, glue_dir, from_shared_files, layout,
                                                                task_name):
    task = TASKS[task_name]
    LAYOUT_WRITERS[layout](tmp_path / "glue", task, shared_rows(glue_dir, task, SIZES[task_name]))
    messages = []
    args = DataArguments(data_dir=str(tmp_path / "glue"), max_seq_length=64, cache_dir=str(tmp_path / "cache"))
    got = load_tokenized(task, args, tiny_tokenizer(), TINY_DEBERTA, log=messages.append)
    expected = from_shared_files[task_name]
    assert set(got) == set(expected) == {task.train_split, *task.eval_splits.values()}
    for split in expected:
        assert len(got[split]) == SIZES[task_name][split]
        for column in ("input_ids", "token_type_ids", "attention_mask", "label"):
            assert got[split][column] == expected[split][column], (split, column)
    assert any(f"GLUE {task_name} from {tmp_path / 'glue'}" in m for m in messages), messages


def test_glue_mnli_rows_without_gold_label_are_skipped_and_counted(tmp_path, glue_dir):
    task = TASKS["mnli"]
    rows = shared_rows(glue_dir, task, SIZES["mnli"])
    inserted = write_glue_tsv(tmp_path, task, rows)
    header = (tmp_path / "MNLI" / "dev_matched.tsv").read_text().splitlines()[0].split("\t")
    assert header[-6:] == ["label1", "label2", "label3", "label4", "label5", "gold_label"]
    messages = []
    raw = load_raw(task, str(tmp_path), log=messages.append)
    assert inserted == {s: n // NO_GOLD_EVERY for s, n in SIZES["mnli"].items()} and inserted["train"] == 8
    assert {s: len(ds) for s, ds in raw.items()} == SIZES["mnli"]
    assert not any("no majority" in p for p in raw["train"]["premise"])
    assert (f"skipped {sum(inserted.values())} rows without a gold label, as GLUE does: train 8, "
            f"validation_matched 2, validation_mismatched 2") in messages[0]
    # The label is GLUE's gold_label, not the first annotator's label1.
    assert raw["validation_matched"]["label"] == [task.labels.index(r["label"]) for r in rows["validation_matched"]]


@pytest.mark.parametrize("layout", list(LAYOUT_WRITERS))
def test_cache_key_follows_the_files_of_every_layout(tmp_path, glue_dir, layout):
    task = TASKS["rte"]
    rows = shared_rows(glue_dir, task, {"train": 40, "validation": 10})
    LAYOUT_WRITERS[layout](tmp_path / "glue", task, rows)
    args = DataArguments(data_dir=str(tmp_path / "glue"), max_seq_length=32, cache_dir=str(tmp_path / "cache"))
    messages, tok = [], tiny_tokenizer()
    first = load_tokenized(task, args, tok, TINY_DEBERTA, log=messages.append)
    load_tokenized(task, args, tok, TINY_DEBERTA, log=messages.append)
    assert "loaded from cache" in messages[-1]
    before = data_fingerprint(task, args.data_dir)

    for folder in ("RTE", "rte"):
        shutil.rmtree(tmp_path / "glue" / folder, ignore_errors=True)
    LAYOUT_WRITERS[layout](tmp_path / "glue", task, {"train": rows["train"][:39], "validation": rows["validation"]})
    assert data_fingerprint(task, args.data_dir) != before
    second = load_tokenized(task, args, tok, TINY_DEBERTA, log=messages.append)
    assert "cached in" in messages[-1]
    assert len(first["train"]) == 40 and len(second["train"]) == 39


def test_a_tsv_with_other_columns_lists_them_and_the_accepted_layouts(tmp_path):
    (tmp_path / "MNLI").mkdir()
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        (tmp_path / "MNLI" / name).write_text("id\tpremise\thypothesis\tlabel\n0\ta\tb\tneutral\n")
    with pytest.raises(UsageError, match=r"MNLI/train\.tsv has the columns \['id', 'premise', 'hypothesis', 'label'\], "
                                         r"which match no accepted layout: GLUE TSV sentence1/sentence2 \+ gold_label "
                                         r"or label; hub parquet or save_to_disk premise/hypothesis \+ label"):
        load_raw(TASKS["mnli"], str(tmp_path))


def test_a_parquet_with_other_columns_lists_them(tmp_path):
    (tmp_path / "rte").mkdir()
    for split in ("train", "validation"):
        path = tmp_path / "rte" / f"{split}-00000-of-00001.parquet"
        Dataset.from_dict({"text": ["a"], "label": [0]}).to_parquet(path)
    with pytest.raises(UsageError, match=r"train-00000-of-00001\.parquet has the columns \['text', 'label'\]"):
        load_raw(TASKS["rte"], str(tmp_path))


def test_a_missing_split_is_named(tmp_path, glue_dir):
    task = TASKS["mnli"]
    write_hub_snapshot(tmp_path, task, shared_rows(glue_dir, task, {"train": 5, "validation_matched": 5}))
    with pytest.raises(UsageError, match=r"missing data file\(s\) for \['validation_mismatched'\] in .*mnli"):
        load_raw(task, str(tmp_path))


def test_saved_datasetdict_in_the_data_dir_itself_says_to_pass_the_folder_above(tmp_path):
    ds = Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [0]})
    DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(tmp_path / "my_rte"))
    with pytest.raises(UsageError, match=r"my_rte itself holds one task's files: pass the folder above it"):
        load_raw(TASKS["rte"], str(tmp_path / "my_rte"))


def test_saved_labels_in_another_order_are_refused(tmp_path):
    ds = Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [0]})
    ds = ds.cast_column("label", ClassLabel(names=["not_entailment", "entailment"]))
    DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(tmp_path / "rte"))
    with pytest.raises(UsageError, match=r"names its labels \['not_entailment', 'entailment'\], but GLUE rte has "
                                         r"\['entailment', 'not_entailment'\]"):
        load_raw(TASKS["rte"], str(tmp_path))


# -- the other GLUE tasks ----------------------------------------------------------------------------------------
NEW_TASK_ROWS = {"train": 60, "validation": 20}
FULL_ROWS = {"cola": (2000, 516), "sst2": (2000, 872), "stsb": (2000, 1500), "mrpc": (2168, 408)}  # data README


@pytest.mark.parametrize("task_name", list(FULL_ROWS))
def test_glue_tsv_of_each_new_task_reads_every_row_with_its_labels(glue_dir, task_name):
    task = TASKS[task_name]
    raw = load_raw(task, str(glue_dir), log=lambda *a: None)
    assert (len(raw["train"]), len(raw["validation"])) == FULL_ROWS[task_name]
    assert raw["train"].column_names == [*task.text_keys, "label"]
    expected = shared_task_rows(glue_dir, task, NEW_TASK_ROWS)
    for split, rows in expected.items():
        for i, k in enumerate(task.text_keys):
            assert raw[split][k][:len(rows)] == [r["texts"][i] for r in rows]
        got = raw[split]["label"][:len(rows)]
        if task.regression:  # STS-B: float scores in [0, 5], not class ids
            assert raw[split].features["label"].dtype == "float32"
            assert got == pytest.approx([r["label"] for r in rows])
        else:
            assert got == [r["label"] for r in rows]
    if task.regression:
        assert 0 <= min(raw["train"]["label"]) and max(raw["train"]["label"]) <= 5
        assert len(set(raw["train"]["label"])) > 10
    else:
        assert set(raw["train"]["label"]) == {0, 1}


@pytest.mark.parametrize("task_name", list(FULL_ROWS))
@pytest.mark.parametrize("layout", ["hub_parquet", "save_to_disk"])
def test_each_layout_of_the_new_tasks_gives_the_tsv_files_tokenized_examples(tmp_path, glue_dir, task_name, layout):
    task, tok = TASKS[task_name], tiny_tokenizer()
    rows = shared_task_rows(glue_dir, task, NEW_TASK_ROWS)
    raw = load_raw(task, str(glue_dir), log=lambda *a: None)
    expected = tokenize(task, DatasetDict({s: raw[s].select(range(n)) for s, n in NEW_TASK_ROWS.items()}), tok, 48)
    write_task_layout(tmp_path / "glue", task, rows, layout)
    args = DataArguments(data_dir=str(tmp_path / "glue"), max_seq_length=48, cache_dir=str(tmp_path / "cache"))
    got = load_tokenized(task, args, tok, TINY_DEBERTA, log=lambda *a: None)
    for split, n in NEW_TASK_ROWS.items():
        assert len(got[split]) == n
        for column in ("input_ids", "token_type_ids", "attention_mask", "label"):
            assert got[split][column] == expected[split][column], (split, column)
        # One sentence (CoLA, SST-2) is encoded alone, a pair as a pair: the tokenizer's own encoding of the text.
        first = tok(*rows[split][0]["texts"], truncation=True, max_length=48)["input_ids"]
        assert got[split]["input_ids"][0] == first
    assert (tok.sep_token_id in got["train"]["input_ids"][0][1:-1]) == (len(task.text_keys) == 2)


def test_a_cola_file_with_a_header_row_is_not_cola_s_layout(tmp_path):
    (tmp_path / "CoLA").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "CoLA" / name).write_text("index\tsource\tlabel\tjudgement\tsentence\n0\tx\t1\t\ta b\n")
    with pytest.raises(UsageError, match=r"CoLA/train\.tsv:1 has the columns .* \(no header row\)"):
        load_raw(TASKS["cola"], str(tmp_path))


def test_a_class_labelled_stsb_copy_is_refused(tmp_path):
    ds = Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [0]})
    ds = ds.cast_column("label", ClassLabel(names=["low", "high"]))
    DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(tmp_path / "stsb"))
    with pytest.raises(UsageError, match=r"has class labels \['low', 'high'\], but stsb is a regression task"):
        load_raw(TASKS["stsb"], str(tmp_path))


# QQP and QNLI have no shared rows: real MRPC and RTE pairs, rearranged into their GLUE download layouts.
STAND_INS = {"qqp": ("mrpc", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]),
             "qnli": ("rte", ["index", "question", "sentence", "label"])}


@pytest.mark.parametrize("task_name", list(STAND_INS))
@pytest.mark.parametrize("layout", ["glue_tsv", "hub_parquet", "save_to_disk"])
def test_qqp_and_qnli_layouts_give_the_same_tokenized_examples(tmp_path, glue_dir, task_name, layout):
    task, (source, header) = TASKS[task_name], STAND_INS[task_name]
    if source == "mrpc":
        rows = shared_task_rows(glue_dir, TASKS["mrpc"], NEW_TASK_ROWS)
    else:  # RTE's label names are QNLI's
        rows = {s: [{"texts": [r["sentence1"], r["sentence2"]], "label": task.labels.index(r["label"])} for r in rs]
                for s, rs in shared_rows(glue_dir, TASKS["rte"], NEW_TASK_ROWS).items()}
    if layout == "glue_tsv":
        (tmp_path / "glue" / task.local_dir).mkdir(parents=True)
        for split, split_rows in rows.items():
            lines = ["\t".join(header)]
            for i, r in enumerate(split_rows):
                label = str(r["label"]) if task_name == "qqp" else task.labels[r["label"]]  # as GLUE writes them
                lines.append("\t".join([str(i), *([str(2 * i), str(2 * i + 1)] if task_name == "qqp" else []),
                                        *r["texts"], label]))
            (tmp_path / "glue" / task.local_dir / LOCAL_FILES[split]).write_text("\n".join(lines) + "\n")
    else:
        write_task_layout(tmp_path / "glue", task, rows, layout)
    tok = tiny_tokenizer()
    args = DataArguments(data_dir=str(tmp_path / "glue"), max_seq_length=48, cache_dir=str(tmp_path / "cache"))
    got = load_tokenized(task, args, tok, TINY_DEBERTA, log=lambda *a: None)
    for split, split_rows in rows.items():
        assert got[split]["label"] == [r["label"] for r in split_rows]
        assert got[split]["input_ids"] == [tok(*r["texts"], truncation=True, max_length=48)["input_ids"]
                                           for r in split_rows]
