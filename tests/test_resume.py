"""Exact resume and crash safety: a run killed with SIGKILL and resumed equals the same run uninterrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from peft import PeftModel
from transformers import set_seed

from adalora_ablation.model import TINY_DEBERTA, load_model_and_tokenizer
from adalora_ablation.runs import latest_complete_checkpoint, truncate_jsonl
from adalora_ablation.train import train

ARGS = ["--task", "synthetic", "--seed", "3", "--max-steps", "240", "--tinit", "30", "--tfinal", "60", "--deltaT", "5",
        "--save-strategy", "steps", "--save-steps", "40", "--logging-steps", "10", "--eval-strategy", "steps",
        "--eval-steps", "80"]


def lines(path):
    return path.read_text().splitlines()


def run_folder(root, signal_name):
    return root / "synthetic" / signal_name / "3"


@pytest.mark.parametrize("signal_name", ["combo", "random"])
def test_killed_then_resumed_run_equals_uninterrupted_run(tmp_path, signal_name):
    straight_root, killed_root = tmp_path / "straight", tmp_path / "killed"
    straight = train([*ARGS, "--signal", signal_name, "--output-root", str(straight_root)])

    proc = subprocess.Popen([sys.executable, "-m", "adalora_ablation", "train", *ARGS, "--signal", signal_name,
                             "--output-root", str(killed_root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    run_dir = run_folder(killed_root, signal_name)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        checkpoint = latest_complete_checkpoint(run_dir) if run_dir.exists() else None
        if checkpoint is not None and checkpoint.name != "checkpoint-240":
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "final_summary.json").exists(), "the run finished before it could be killed"
    for name in ("metrics.jsonl", "rank_pattern.jsonl", "signal_scores.jsonl"):
        for line in lines(run_dir / name):
            json.loads(line)  # a SIGKILL leaves only whole lines

    resumed = train([*ARGS, "--signal", signal_name, "--output-root", str(killed_root), "--resume", "True"])
    assert resumed["resumed_from"] is not None and resumed["resumed_from"] != "checkpoint-240"
    straight_dir = run_folder(straight_root, signal_name)
    for name in ("rank_pattern.jsonl", "signal_scores.jsonl"):
        assert lines(run_dir / name) == lines(straight_dir / name), name
    assert resumed["eval_accuracy"] == straight["eval_accuracy"]
    assert resumed["final_ranks"] == straight["final_ranks"]
    assert resumed["eval_metrics"]["eval_loss"] == straight["eval_metrics"]["eval_loss"]
    steps = [json.loads(line)["step"] for line in lines(run_dir / "metrics.jsonl") if '"loss"' in line]
    assert steps == sorted(set(steps)) == list(range(10, 241, 10))  # no duplicated or missing log line


def test_final_adapter_is_pruned_and_reloads_with_the_same_accuracy(tmp_path):
    summary = train([*ARGS, "--signal", "importance_only", "--output-root", str(tmp_path), "--save-strategy", "no"])
    adapter_dir = run_folder(tmp_path, "importance_only") / "final_adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert sum(sum(v) for v in config["rank_pattern"].values()) == summary["total_rank"]

    set_seed(3)  # tiny-deberta's random base weights come from the run's seed, as in train()
    base, tokenizer = load_model_and_tokenizer(TINY_DEBERTA, ("entailment", "not_entailment"))
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    lora_e = [p for n, p in model.named_parameters() if "lora_E" in n]
    assert sum(p.shape[0] for p in lora_e) == summary["total_rank"]  # really pruned, not masked
    from adalora_ablation.data import synthetic_task

    dev = synthetic_task()["validation"]
    with torch.no_grad():
        enc = tokenizer(list(dev["sentence1"]), list(dev["sentence2"]), padding=True, truncation=True, max_length=16,
                        return_tensors="pt")
        predictions = model(**enc).logits.argmax(-1)
    accuracy = (predictions == torch.tensor(list(dev["label"]))).float().mean().item()
    assert accuracy == pytest.approx(summary["eval_accuracy"], abs=1e-9)


def test_resume_without_checkpoint_starts_fresh_and_truncation_drops_torn_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "tor')
    assert truncate_jsonl(path, lambda r: r["step"] < 3) == 2
    assert lines(path) == ['{"step": 1}', '{"step": 2}']
