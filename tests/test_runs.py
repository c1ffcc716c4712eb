"""The run folder: layout, the summary's accuracy fields from the task table, atomic writes, reading and finding
runs, log rewinding."""

import json
import os
import stat

import pytest

from adalora_ablation.run import folder as runs
from adalora_ablation.run.folder import (
    Run, accuracies, accuracy_fields, append_jsonl, atomic_write, discover, latest_complete_checkpoint, read_jsonl,
    rewind_logs, run_dir_for, write_json_atomic, write_summary,
)


def test_layout():
    assert run_dir_for("out", "mnli", "combo", 7).as_posix() == "out/mnli/combo/7"
    assert runs.compare_dir("out", "rte").as_posix() == "out/rte/compare"
    assert runs.grid_dir("out").as_posix() == "out/grid"


def test_accuracy_fields_come_from_the_task_table():
    assert [(a.field, a.metric, a.eval_set) for a in accuracies("mnli")] == [
        ("eval_accuracy", "eval_matched_accuracy", "matched"),
        ("eval_accuracy_mm", "eval_mismatched_accuracy", "mismatched")]
    assert [(a.field, a.metric) for a in accuracies("rte")] == [("eval_accuracy", "eval_accuracy")]
    assert [a.field for a in accuracies("not-a-task")] == ["eval_accuracy"]
    metrics = {"eval_matched_accuracy": 0.8, "eval_mismatched_accuracy": 0.7, "eval_loss": 1.0}
    assert accuracy_fields("mnli", metrics) == {"eval_accuracy": 0.8, "eval_accuracy_mm": 0.7}


def test_atomic_write_leaves_the_old_file_and_no_temp_file_on_failure(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"a": 1, "bad": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1, "bad": None}

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"a": 1, "bad": None}
    assert os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_results_get_the_mode_the_umask_gives_new_files(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_summary(tmp_path, {"a": 1})
        append_jsonl(tmp_path / runs.METRICS, {"step": 1})
        append_jsonl(tmp_path / runs.METRICS, {"step": 2})
        rewind_logs(tmp_path, 1)  # rewritten atomically, like the summary
    finally:
        os.umask(previous)
    assert read_jsonl(tmp_path / runs.METRICS) == [{"step": 1}]
    for name in (runs.SUMMARY, runs.METRICS):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_rewind_keeps_what_a_checkpoint_had_seen(tmp_path):
    for step in (8, 9, 10, 11):  # allocations run at 0-based steps
        append_jsonl(tmp_path / runs.RANK_PATTERN, {"step": step})
        append_jsonl(tmp_path / runs.SIGNAL_SCORES, {"step": step})
    for record in ({"step": 5, "loss": 1}, {"step": 10, "loss": 1}, {"step": 10, "eval_accuracy": 0.5},
                   {"step": 15, "loss": 1}, {"step": 10, "train_runtime": 3}):
        append_jsonl(tmp_path / runs.METRICS, record)
    rewind_logs(tmp_path, 10)  # checkpoint-10: written after the log and eval of global step 10
    assert [r["step"] for r in read_jsonl(tmp_path / runs.RANK_PATTERN)] == [8, 9]
    assert [r["step"] for r in read_jsonl(tmp_path / runs.SIGNAL_SCORES)] == [8, 9]
    assert read_jsonl(tmp_path / runs.METRICS) == [{"step": 5, "loss": 1}, {"step": 10, "loss": 1},
                                                   {"step": 10, "eval_accuracy": 0.5}]
    assert sorted(os.listdir(tmp_path)) == sorted([runs.RANK_PATTERN, runs.SIGNAL_SCORES, runs.METRICS])


def test_latest_complete_checkpoint_ignores_incomplete_ones(tmp_path):
    assert latest_complete_checkpoint(tmp_path / "absent") is None
    for step, complete in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        (folder / runs.ALLOCATOR_STATE).write_bytes(b"")
        if complete:  # the manifest is written last
            runs.write_manifest(folder)
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-20"
    runs.verify_manifest(tmp_path / "checkpoint-20")
    (tmp_path / "checkpoint-20" / "trainer_state.json").write_text("{} ")
    with pytest.raises(ValueError, match="has 3 bytes, the manifest says 2"):
        runs.verify_manifest(tmp_path / "checkpoint-20")
    assert runs.checkpoint_step(latest_complete_checkpoint(tmp_path)) == 20


def test_discover_and_read_runs(tmp_path):
    summary = {"eval_accuracy": 0.9, "eval_accuracy_mm": None, "total_rank": 4, "target_budget": 4,
               "budget_check_passed": True, "final_ranks": {"layer.0.output.dense": 4}}
    for signal, seed in (("combo", 1), ("combo", 2), ("random", 1)):
        run_dir_for(tmp_path, "mnli", signal, seed).mkdir(parents=True)
    write_json_atomic(run_dir_for(tmp_path, "mnli", "combo", 1) / runs.SUMMARY, summary)
    write_json_atomic(run_dir_for(tmp_path, "mnli", "random", 1) / runs.SUMMARY, {**summary, "eval_accuracy_mm": 0.8})
    append_jsonl(run_dir_for(tmp_path, "mnli", "combo", 2) / runs.RANK_PATTERN, {"step": 3, "ranks": {"m": 2}})
    runs.compare_dir(tmp_path, "mnli").mkdir()
    (tmp_path / "mnli" / "combo" / "notes").mkdir()

    found = {(r.signal, r.seed): r for r in discover(tmp_path, "mnli")}
    assert set(found) == {("combo", 1), ("combo", 2), ("random", 1)}  # not compare/, not a non-seed folder
    assert found["combo", 1].problem == "final_summary.json has no value for eval_accuracy_mm"
    assert found["combo", 2].problem.startswith("no valid final_summary.json")
    assert found["combo", 2].final_ranks == {"m": 2}  # unfinished: its last allocation
    assert found["random", 1].problem is None and found["random", 1].final_ranks == summary["final_ranks"]
    assert Run.at(tmp_path, "mnli", "combo", 9).problem == "no run folder"
    assert Run.from_dir(run_dir_for(tmp_path, "mnli", "combo", 2)).name == "mnli/combo/2"
    assert discover(tmp_path, "rte") == []
