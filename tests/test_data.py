"""GLUE TSV reading (real rows), the synthetic task, and the tokenization cache."""

import csv

import pytest

from adalora_ablation.args import DataArguments
from adalora_ablation.data import MARKER_WORDS, load_raw, load_tokenized, synthetic_task
from adalora_ablation.errors import UsageError
from adalora_ablation.model import TINY_DEBERTA, tiny_tokenizer
from adalora_ablation.tasks import TASKS


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


def test_missing_data_dir_names_the_files(tmp_path):
    with pytest.raises(UsageError, match=r"missing data file.*RTE/train\.tsv.*--data-dir"):
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
    args = DataArguments(data_dir=str(glue_dir), max_seq_length=32, max_train_samples=10, max_eval_samples=5,
                         cache_dir=str(tmp_path))
    messages = []
    first = load_tokenized(TASKS["rte"], args, tok, TINY_DEBERTA, log=messages.append)
    second = load_tokenized(TASKS["rte"], args, tok, TINY_DEBERTA, log=messages.append)
    assert "cached in" in messages[0] and "loaded from cache" in messages[1]
    assert len(first["train"]) == 10 and len(first["validation"]) == 5
    assert first["train"]["input_ids"] == second["train"]["input_ids"]
    assert max(len(ids) for ids in first["train"]["input_ids"]) <= 32
    # Another max length is another cache entry.
    args.max_seq_length = 16
    load_tokenized(TASKS["rte"], args, tok, TINY_DEBERTA, log=messages.append)
    assert "cached in" in messages[2]
