"""The training flow: total_step, schedule checks, and end-to-end runs whose output files we check."""

import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from adalora_ablation.errors import UsageError
from adalora_ablation.run.folder import read_jsonl
from adalora_ablation.train import check_peft_version, check_schedule, compute_total_step, train


@pytest.mark.parametrize("kw", [
    dict(num_train_epochs=3, per_device_train_batch_size=8),
    dict(num_train_epochs=2, per_device_train_batch_size=8, gradient_accumulation_steps=3),
    dict(num_train_epochs=1.5, per_device_train_batch_size=16, gradient_accumulation_steps=2),
    dict(num_train_epochs=2, per_device_train_batch_size=16, dataloader_drop_last=True),
    dict(max_steps=17, per_device_train_batch_size=4),
])
def test_total_step_equals_the_trainers_own_max_steps(kw, tmp_path):
    rows = 101
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", remove_unused_columns=False, **kw)
    data = Dataset.from_dict({"input_ids": [[1, 2]] * rows, "labels": [0] * rows})

    class MaxSteps(Exception):
        pass

    class Read(TrainerCallback):  # the number of steps the Trainer plans, read where every version shows it
        def on_train_begin(self, args, state, control, **kwargs):
            raise MaxSteps(state.max_steps)

    trainer = Trainer(model=torch.nn.Linear(1, 1), args=args, train_dataset=data, callbacks=[Read()])
    with pytest.raises(MaxSteps) as planned:
        trainer.train()
    assert compute_total_step(rows, args) == planned.value.args[0]


def test_impossible_schedule_says_what_total_step_was_and_what_works():
    with pytest.raises(UsageError, match=r"total_step came out as 50 .* --tinit 5 --tfinal 10"):
        check_schedule(tinit=40, tfinal=20, total_step=50)
    check_schedule(tinit=5, tfinal=10, total_step=50)


def test_wrong_peft_version_names_the_pip_command():
    with pytest.raises(UsageError, match=r"pip install peft==0\.18\.1"):
        check_peft_version("0.17.0")


def allocation_steps(tinit, tfinal, total, delta_t):
    return [s for s in range(tinit + 1, total - tfinal + 1) if s % delta_t == 0 or s == total - tfinal]


@pytest.fixture(scope="module")
def minilm_rte_run(tmp_path_factory, minilm_path, glue_head):
    """A real run: the pretrained MiniLM on real RTE rows, combo signal, schedule scaled down, grad accumulation 2
    (96 rows of 32 tokens in micro-batches of 4: a fourth of the tokens of 192 rows of 64 in batches of 8, the
    same 24 optimizer steps)."""
    root = tmp_path_factory.mktemp("runs")
    argv = ["--task", "rte", "--signal", "combo", "--seed", "7", "--model", minilm_path, "--data-dir", str(glue_head),
            "--output-root", str(root), "--max-train-samples", "96", "--max-eval-samples", "48",
            "--max-seq-length", "32", "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2",
            "--num-train-epochs", "2", "--tinit", "4", "--tfinal", "6", "--deltaT", "2", "--init-r", "6",
            "--target-r", "2", "--learning-rate", "1e-3", "--logging-steps", "4", "--eval-strategy", "steps",
            "--eval-steps", "12", "--save-strategy", "steps", "--save-steps", "12"]
    summary = train(argv)
    return root / "rte" / "combo" / "7", summary


@pytest.mark.slow
def test_minilm_rte_run_writes_every_output_with_its_schema(minilm_rte_run):
    run_dir, summary = minilm_rte_run
    total = math.ceil(math.ceil(96 / 4) / 2) * 2  # 12 optimizer steps per epoch (2 micro-batches each), 2 epochs
    assert summary["total_step"] == total == 24
    on_disk = json.loads((run_dir / "final_summary.json").read_text())
    assert on_disk["eval_accuracy"] == summary["eval_accuracy"] and 0 <= on_disk["eval_accuracy"] <= 1
    for key in ("task", "signal", "seed", "total_rank", "target_budget", "final_ranks", "trainable_parameters",
                "config", "versions", "wall_time_s"):
        assert key in on_disk
    assert on_disk["config"]["adalora"]["tinit"] == 4 and on_disk["versions"]["peft"] == "0.18.1"
    assert on_disk["modules_to_save"] == ["pooler", "classifier"]
    assert len(on_disk["final_ranks"]) == 36 and sum(on_disk["final_ranks"].values()) == on_disk["total_rank"] == 72
    assert on_disk["budget_check_passed"] is True

    ranks = read_jsonl(run_dir / "rank_pattern.jsonl")
    # One allocation per optimizer step that PEFT's schedule names, despite 2 micro-batches per step.
    assert [r["step"] for r in ranks] == allocation_steps(4, 6, total, 2)
    assert all(r["budget_ok"] and r["total_rank"] == r["budget"] == sum(r["ranks"].values()) for r in ranks)
    assert ranks[0]["budget"] < 36 * 6 and ranks[-1]["budget"] == 72
    assert sorted(ranks[-1]["ranks"]) == sorted(on_disk["final_ranks"])
    assert len(set(ranks[-1]["ranks"].values())) > 1, "ranks did not move away from uniform"
    assert all(k.startswith("layer.") for k in ranks[-1]["ranks"])

    scores = read_jsonl(run_dir / "signal_scores.jsonl")
    assert [s["step"] for s in scores] == [r["step"] for r in ranks]
    module = scores[0]["modules"]["layer.0.attention.self.query"]
    assert set(module) >= {"sum", "mean"} and math.isclose(module["sum"], 6 * module["mean"], rel_tol=1e-9)
    assert set(scores[0]["parts"]) == {"importance", "plasticity"}

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    train_lines = [m for m in metrics if "loss" in m]
    assert train_lines and all({"step", "epoch", "learning_rate", "grad_norm"} <= set(m) for m in train_lines)
    assert [m["step"] for m in metrics if "eval_accuracy" in m][:2] == [12, 24]
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-24"]


@pytest.mark.slow
def test_tiny_mnli_reports_matched_and_mismatched(tmp_path, glue_head):
    summary = train(["--task", "mnli", "--signal", "importance_only", "--model", "tiny-deberta", "--data-dir",
                     str(glue_head), "--output-root", str(tmp_path), "--max-train-samples", "64",
                     "--max-eval-samples", "32", "--max-seq-length", "32", "--per-device-train-batch-size", "8",
                     "--max-steps", "16", "--tinit", "2", "--tfinal", "4", "--deltaT", "2", "--eval-strategy", "no",
                     "--save-strategy", "no"])
    assert {"eval_accuracy", "eval_accuracy_mm"} <= set(summary)
    assert summary["eval_metrics"]["eval_matched_accuracy"] == summary["eval_accuracy"]
    assert summary["eval_metrics"]["eval_mismatched_accuracy"] == summary["eval_accuracy_mm"]
    assert summary["total_rank"] == summary["target_budget"] == 4 * 12


@pytest.mark.parametrize("version, world_size, device, refused", [
    ("4.57.6", 2, "cpu", True),    # transformers 4.x loads the optimizer state to "cpu:<rank>": torch cannot
    ("4.57.6", 1, "cpu", False),   # one process loads to "cpu"
    ("4.57.6", 2, "cuda", False),  # GPUs: "cuda:<rank>" restores
    ("5.25.0", 2, "cpu", False),   # fixed in transformers 5
])
def test_a_multiprocess_cpu_resume_is_refused_only_where_transformers_cannot_do_it(
        monkeypatch, version, world_size, device, refused):
    from types import SimpleNamespace

    from adalora_ablation import train as train_module

    monkeypatch.setattr(train_module.transformers, "__version__", version)
    args = SimpleNamespace(world_size=world_size, device=torch.device(device))
    if refused:
        with pytest.raises(UsageError, match=f"transformers {version} .* resume it with transformers >= 5.4"):
            train_module.refuse_cpu_multiprocess_resume(args)
    else:
        train_module.refuse_cpu_multiprocess_resume(args)
