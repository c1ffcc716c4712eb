"""The callback's logs: every allocation's budget and ranks reach the Trainer's log stream (TensorBoard here), not
metrics.jsonl; our progress messages go to the package's logger."""

import logging

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from adalora_ablation.module_names import ranks_by_layer_and_type
from adalora_ablation.run.folder import read_jsonl
from adalora_ablation.train import train

TINY = ["--task", "synthetic", "--max-steps", "30", "--tinit", "5", "--tfinal", "10", "--deltaT", "5",
        "--save-strategy", "no", "--eval-strategy", "no", "--logging-steps", "5", "--signal", "importance_only"]


@pytest.fixture
def our_logs(caplog):
    """caplog for our records, even after a command line in this process has stopped them propagating to root."""
    logger = logging.getLogger("adalora_ablation")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.mark.slow
@pytest.mark.oldest_transformers  # 4.x reads TensorBoard's folder from TrainingArguments, 5.x at train time
def test_allocations_reach_tensorboard_and_stay_out_of_metrics_jsonl(tmp_path, our_logs):
    train([*TINY, "--output-root", str(tmp_path), "--report-to", "tensorboard"])
    run_dir = tmp_path / "synthetic" / "importance_only" / "42"
    (log_dir,) = {events.parent for events in run_dir.glob("runs/*/events.out.tfevents.*")}
    board = EventAccumulator(str(log_dir))
    board.Reload()

    def curve(tag):
        return {e.step: e.value for e in board.Scalars(f"train/adalora/{tag}")}

    allocations = read_jsonl(run_dir / "rank_pattern.jsonl")
    assert [a["step"] for a in allocations] == [10, 15, 20]
    assert curve("budget") == {a["step"]: a["budget"] for a in allocations}
    assert curve("total_rank") == {a["step"]: a["total_rank"] for a in allocations}
    for allocation in allocations:
        per_layer, per_type = ranks_by_layer_and_type(allocation["ranks"])
        assert set(per_layer) == {0, 1} and len(per_type) == 6
        for layer, rank in per_layer.items():
            assert curve(f"rank_layer_{layer}")[allocation["step"]] == rank
        for kind, rank in per_type.items():
            assert curve(f"rank_{kind}")[allocation["step"]] == rank
    assert "train/loss" in board.Tags()["scalars"]  # the Trainer's own logs are still there

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics if "loss" in m] == [5, 10, 15, 20, 25, 30]
    assert not any(key.startswith("adalora/") for m in metrics for key in m)
    assert any(r.levelno == logging.INFO and r.getMessage().startswith("[AdaLoRA schedule]") for r in our_logs.records)



@pytest.mark.slow
def test_without_a_report_integration_the_console_shows_no_raw_allocation_dicts(tmp_path, our_logs, capsys):
    """--report-to none: the Trainer has nowhere to send the allocation scalars, so they are not logged to it (it
    would print them as raw dicts); the readable [AdaLoRA Update] lines and the Trainer's loss lines stay."""
    train([*TINY, "--output-root", str(tmp_path), "--report-to", "none"])
    printed = capsys.readouterr()
    console = printed.out + printed.err
    assert "adalora/" not in console and "'loss'" not in console
    messages = [r.getMessage() for r in our_logs.records]
    # the Trainer's own log lines, readably (run/console.py; tests/test_logs.py checks them in full)
    assert {m.split("  ")[0] for m in messages if m.startswith("[train] step")} == {
        f"[train] step {step}/30" for step in (5, 10, 15, 20, 25, 30)}
    updates = {m.split(":")[0] for m in messages if m.startswith("[AdaLoRA Update] Step")}
    assert updates == {f"[AdaLoRA Update] Step {step}" for step in (10, 15, 20)}
    run_dir = tmp_path / "synthetic" / "importance_only" / "42"
    assert [a["step"] for a in read_jsonl(run_dir / "rank_pattern.jsonl")] == [10, 15, 20]
