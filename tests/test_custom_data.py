"""--task custom: a user's own files in every accepted format, labels read from the data, one-line errors for bad
files, and a custom CSV end to end through ablate and report."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
from cli_in_process import run_cli
from datasets import Dataset

from adalora_ablation.adalora.model import TINY_DEBERTA, tiny_tokenizer
from adalora_ablation.args import DataArguments
from adalora_ablation.cli import main
from adalora_ablation.data.custom import load_custom
from adalora_ablation.data.loading import load_tokenized
from adalora_ablation.data.tasks import custom_task_name
from adalora_ablation.errors import UsageError
from adalora_ablation.run.folder import read_summary


def sst2_rows(glue_dir, n):
    """Real SST-2 sentences with their labels as names."""
    with open(glue_dir / "SST-2" / "train.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]
    return [{"text": r["sentence"], "sentiment": ("negative", "positive")[int(r["label"])]} for r in rows]


def write(path, rows):
    """rows (a list of dicts) in the format of path's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            tsv = path.suffix == ".tsv"
            writer = csv.DictWriter(f, list(rows[0]), delimiter="\t" if tsv else ",",
                                    quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, escapechar="\\")
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        Dataset.from_list(rows).to_parquet(path)
    return path


def args_for(train, dev, **kw):
    options = dict(train_file=str(train), validation_file=str(dev), text_columns=["text"], label_column="sentiment",
                   max_seq_length=32)
    return DataArguments(**{**options, **kw})


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_format_gives_the_same_tokenized_examples(tmp_path, glue_dir, suffix):
    rows = sst2_rows(glue_dir, 50)
    train = write(tmp_path / f"reviews_train{suffix}", rows[:40])
    dev = write(tmp_path / f"reviews_dev{suffix}", rows[40:])
    task = load_custom(args_for(train, dev))
    assert task.name == "custom-reviews" and task.labels == ("negative", "positive") and task.metrics[0] == "accuracy"
    assert task.custom_files["train"][1] == hashlib.sha256(train.read_bytes()).hexdigest()
    tok = tiny_tokenizer()
    data = load_tokenized(task, args_for(train, dev, cache_dir=str(tmp_path / "cache")), tok, TINY_DEBERTA,
                          log=lambda *a: None)
    assert len(data["train"]) == 40 and len(data["validation"]) == 10
    assert data["train"]["label"] == [("negative", "positive").index(r["sentiment"]) for r in rows[:40]]
    assert data["validation"]["input_ids"] == [tok(r["text"], truncation=True, max_length=32)["input_ids"]
                                               for r in rows[40:]]


def test_integer_and_float_labels(tmp_path):
    ints = [{"text": f"row {i}", "y": i % 3 + 1} for i in range(12)]
    task = load_custom(DataArguments(train_file=str(write(tmp_path / "a" / "train.jsonl", ints)),
                                     validation_file=str(write(tmp_path / "a" / "dev.jsonl", ints)),
                                     text_columns=["text"], label_column="y", metric="matthews"))
    assert task.name == "custom-a" and task.labels == ("1", "2", "3") and not task.regression
    assert task.metrics == ("matthews", "accuracy")  # binary F1 does not apply to three classes
    floats = [{"a": f"x {i}", "b": f"y {i}", "score": i / 4} for i in range(12)]
    task = load_custom(DataArguments(train_file=str(write(tmp_path / "sim_train.parquet", floats)),
                                     validation_file=str(write(tmp_path / "sim_dev.parquet", floats)),
                                     text_columns=["a", "b"], label_column="score"))
    assert task.regression and task.num_labels == 1 and task.metrics == ("pearson", "spearman")
    assert custom_task_name("/data/my reviews/Train.CSV") == "custom-my-reviews"


BAD = [
    ({"text": "x", "sentiment": "positive"}, {"label_column": "stars"},
     r"reviews_train\.csv has no column 'stars' \(its columns: text, sentiment\)"),
    (None, {"text_columns": ["body"]}, r"reviews_train\.csv has no column 'body'"),
    ("one class", {}, r"reviews_train\.csv: the label column 'sentiment' has one class \('positive'\)"),
    ("empty", {}, r"reviews_dev\.csv holds no rows \(validation split\)"),
    ("mixed", {}, r"reviews_train\.jsonl: the label column 'sentiment' mixes label types \(ids, names\)"),
    ("unseen", {}, r"reviews_dev\.csv: label 'neutral' does not occur in the training file"),
    (None, {"metric": "f1"}, None),  # binary: fine
    (None, {"metric": "pearson"}, r"--metric pearson does not apply to a classification task"),
]


@pytest.mark.parametrize("case, flags, error", BAD)
def test_bad_files_are_one_line_errors_naming_file_and_column(tmp_path, case, flags, error):
    rows = [{"text": f"review {i}", "sentiment": ("negative", "positive")[i % 2]} for i in range(10)]
    train_rows, dev_rows, suffix = rows, rows, ".csv"
    if case == "one class":
        train_rows = [{**r, "sentiment": "positive"} for r in rows]
    elif case == "empty":
        dev = tmp_path / "reviews_dev.csv"
        dev.write_text("text,sentiment\n")
    elif case == "mixed":
        suffix, train_rows = ".jsonl", [{**r, "sentiment": 1 if i == 3 else r["sentiment"]} for i, r in enumerate(rows)]
    elif case == "unseen":
        dev_rows = [*rows, {"text": "meh", "sentiment": "neutral"}]
    train = write(tmp_path / f"reviews_train{suffix}", train_rows)
    dev = tmp_path / "reviews_dev.csv" if case == "empty" else write(tmp_path / f"reviews_dev{suffix}", dev_rows)
    if error is None:
        assert load_custom(args_for(train, dev, **flags)).metrics == ("f1", "accuracy", "matthews")
        return
    with pytest.raises(UsageError, match=error) as info:
        load_custom(args_for(train, dev, **flags))
    assert "\n" not in str(info.value)


def test_a_bad_file_stops_train_with_exit_2_and_writes_nothing(tmp_path, capsys):
    train = write(tmp_path / "reviews_train.csv", [{"text": "a", "sentiment": "positive"}] * 3)
    code = main(["train", "--task", "custom", "--train-file", str(train), "--validation-file", str(train),
                 "--text-columns", "text", "--label-column", "sentiment", "--model", TINY_DEBERTA,
                 "--output-root", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has one class" in err[0]
    assert main(["train", "--task", "rte", "--train-file", str(train), "--output-root", str(tmp_path / "o")]) == 2
    assert "--train-file is for --task custom" in capsys.readouterr().err


TRAIN = ["--model", TINY_DEBERTA, "--max-steps", "12", "--tinit", "2", "--tfinal", "4", "--deltaT", "2",
         "--per-device-train-batch-size", "8", "--max-seq-length", "32", "--save-strategy", "no",
         "--eval-strategy", "no", "--warmup-steps", "0", "--learning-rate", "5e-3"]


@pytest.mark.slow
def test_custom_csv_end_to_end_through_ablate_and_report(tmp_path, glue_dir, capsys):
    rows = sst2_rows(glue_dir, 140)
    train, dev = write(tmp_path / "reviews_train.csv", rows[:80]), write(tmp_path / "reviews_dev.csv", rows[80:120])
    test = write(tmp_path / "reviews_test.csv", rows[120:])
    custom = ["--train-file", str(train), "--validation-file", str(dev), "--test-file", str(test), "--text-columns",
              "text", "--label-column", "sentiment", "--metric", "f1"]
    root = tmp_path / "out"
    result = run_cli(capsys, "ablate", "--task", "custom", "--signals", "baseline_adalora", "--seeds", "1",
                     "--output-root", str(root), *custom, *TRAIN)
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = {s: read_summary(root / "custom-reviews" / s / "1") for s in ("baseline_adalora",)}
    for signal, summary in summaries.items():
        assert summary["task"] == "custom-reviews" and summary["budget_check_passed"]
        assert {"eval_f1", "eval_accuracy", "eval_matthews", "adapter_effect"} <= set(summary)
        assert {"test_f1", "test_accuracy", "test_matthews"} <= set(summary["test_metrics"])  # --test-file
        assert f"| custom | {signal} | 1 | finished | F1 {summary['eval_f1']:.4f} |" in result.stdout
    assert "## Report: custom-reviews" in result.stdout
    spec = json.loads((root / "custom-reviews" / "task.json").read_text())
    assert spec["files"]["train"][1] == hashlib.sha256(train.read_bytes()).hexdigest()

    assert main(["report", "--task", "custom-reviews", "--output-root", str(root), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"] == {"eval_f1": "F1"}
    rows_by_signal = {r["signal"]: r for r in report["signals"]}
    assert rows_by_signal["baseline_adalora"]["eval_f1"]["mean"] == summaries["baseline_adalora"]["eval_f1"]
    assert report["secondary_metrics"]["eval_accuracy"]["signals"]["baseline_adalora"]["mean"] == \
        summaries["baseline_adalora"]["eval_accuracy"]

    # Other contents under the same name would mix two data sets in one report: refused before anything is written.
    write(train, rows[1:81])
    code = main(["train", "--task", "custom", "--signal", "combo", "--output-root", str(root), *custom, *TRAIN])
    assert code == 2 and "records other data for custom-reviews" in capsys.readouterr().err
    assert not (root / "custom-reviews" / "combo").exists()
