"""A run's identity: which settings decide its result, their fingerprint, the one-line difference, variant names."""

import subprocess
import sys

import pytest

from adalora_ablation.grid.sweeps import Variant, parse_sweep, variants
from adalora_ablation.run.folder import Run, discover, run_dir_for, write_summary
from adalora_ablation.run.identity import (
    canonical_value, difference, fingerprint, identity, parse_variant, result_settings, summary_settings,
    variant_mismatch, variant_name, variant_sort_key,
)


def config(**changes):
    groups = {
        "run": {"task": "rte", "signal": "combo", "output_root": "outputs", "overwrite": False, "resume": True,
                "variant": "", "preset": "default"},
        "model": {"model": "tiny-deberta", "target_modules": None},
        "data": {"data_dir": None, "max_seq_length": 128, "cache_dir": "/tmp/cache"},
        "adalora": {"init_r": 12, "target_r": 4, "combo_lambda": 1.0, "plasticity_norm": "l2"},
        "training": {"seed": 1, "learning_rate": 0.01, "output_dir": "outputs/rte/combo/1", "logging_steps": 10,
                     "save_steps": 500, "eval_steps": 100, "report_to": [], "use_cpu": True, "local_rank": -1,
                     "a_field_a_newer_transformers_adds": 3},
    }
    for key, value in changes.items():
        group = next(g for g in groups.values() if key in g)
        group[key] = value
    return groups


def test_settings_keep_what_decides_the_result_and_drop_where_and_what_a_run_writes():
    settings = result_settings(config())
    assert {"task", "signal", "model", "max_seq_length", "init_r", "target_r", "combo_lambda", "plasticity_norm",
            "seed", "learning_rate", "a_field_a_newer_transformers_adds"} <= set(settings)
    dropped = {"output_root", "overwrite", "resume", "variant", "preset", "cache_dir", "output_dir", "logging_steps",
               "save_steps", "eval_steps", "report_to", "use_cpu", "local_rank"}
    assert dropped.isdisjoint(settings)
    same = identity(config(output_root="elsewhere", output_dir="x", logging_steps=1, resume=False, use_cpu=False))
    assert same["fingerprint"] == identity(config())["fingerprint"]
    for key, value in [("target_r", 2), ("learning_rate", 1e-3), ("plasticity_norm", "rms"), ("seed", 2),
                       ("a_field_a_newer_transformers_adds", 4)]:
        assert fingerprint(result_settings(config(**{key: value}))) != identity(config())["fingerprint"], key


def test_the_difference_is_one_line_naming_each_setting():
    folder, asked = result_settings(config()), result_settings(config(target_r=2, plasticity_norm="rms"))
    assert difference(folder, asked) == ("plasticity_norm: l2 in the folder, rms asked; "
                                         "target_r: 4 in the folder, 2 asked")
    assert difference(folder, result_settings(config())) is None
    older = {k: v for k, v in folder.items() if k != "a_field_a_newer_transformers_adds"}
    assert difference(older, result_settings(config(a_field_a_newer_transformers_adds=9))) is None  # not compared


def test_a_summary_from_before_recorded_settings_is_read_from_its_config():
    assert summary_settings({"config": config()}) == result_settings(config())
    assert summary_settings({"settings": {"target_r": 2}, "config": config()}) == {"target_r": 2}
    assert summary_settings({"eval_accuracy": 0.5}) is None


def test_variant_names_are_sorted_canonical_and_checked_against_the_settings():
    assert variant_name({"target_r": "2", "combo_lambda": "5e-1"}) == "combo_lambda=0.5,target_r=2"
    assert parse_variant("target-r=2,combo_lambda=0.5") == {"target_r": "2", "combo_lambda": "0.5"}
    assert canonical_value("1e-4") == canonical_value("0.0001") and canonical_value("4.0") == "4"
    with pytest.raises(ValueError):
        parse_variant("target_r")
    settings = result_settings(config(learning_rate=1e-4))
    assert variant_mismatch({"target_r": "4", "learning_rate": "1e-4"}, settings) is None
    assert "the run's target_r is 4 (add --target-r 2)" in variant_mismatch({"target_r": "2"}, settings)
    assert sorted(["target_r=12", "target_r=2", "target_r=4"], key=variant_sort_key) == [
        "target_r=2", "target_r=4", "target_r=12"]


def test_sweeps_multiply_and_a_sweep_of_one_value_is_the_plain_flag():
    assert variants([]) == [Variant("", [])]
    assert variants([parse_sweep("target_r=2")]) == [Variant("", ["--target-r", "2"])]
    found = variants([parse_sweep("target-r=2,4"), parse_sweep("combo_lambda=0.5,1"), parse_sweep("ema_decay=0.8")])
    assert [v.name for v in found] == ["combo_lambda=0.5,target_r=2", "combo_lambda=1,target_r=2",
                                       "combo_lambda=0.5,target_r=4", "combo_lambda=1,target_r=4"]
    assert found[0].flags == ["--ema-decay", "0.8", "--target-r", "2", "--combo-lambda", "0.5",
                              "--variant", "combo_lambda=0.5,target_r=2"]
    for bad in ("target_r", "target_r=2,2.0", "=2,4", "target_r=2,"):
        with pytest.raises(ValueError):
            parse_sweep(bad)


def test_variant_folders_are_found_beside_todays_and_keep_their_variant(tmp_path):
    plain = run_dir_for(tmp_path, "rte", "combo", 1)
    swept = run_dir_for(tmp_path, "rte", "combo", 1, "target_r=2")
    assert swept == tmp_path / "rte" / "combo" / "target_r=2" / "1"
    for folder in (plain, swept):
        folder.mkdir(parents=True)
        write_summary(folder, {"eval_accuracy": 0.5})
    found = {(r.signal, r.variant, r.seed): r for r in discover(tmp_path, "rte")}
    assert set(found) == {("combo", "", 1), ("combo", "target_r=2", 1)}
    assert found["combo", "target_r=2", 1].name == "rte/combo/target_r=2/1"
    again = Run.from_dir(swept)
    assert (again.task, again.signal, again.variant, again.seed) == ("rte", "combo", "target_r=2", 1)
    assert Run.from_dir(plain).variant == ""


HOLD_LOCK = """
import sys, time
from adalora_ablation.run.lock import RunLock
RunLock(sys.argv[1], lambda *a: None).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_run_in_progress_with_other_settings_is_never_taken_as_the_grids(tmp_path):
    from adalora_ablation.args import parse_train_args, run_config
    from adalora_ablation.grid.ablate import GridRun
    from adalora_ablation.grid.sweeps import mark_other_settings
    from adalora_ablation.run.folder import write_json_atomic
    from adalora_ablation.run.identity import IDENTITY_FILE

    def argv(target_r):
        return ["--task", "synthetic", "--signal", "combo", "--seed", "1", "--output-root", str(tmp_path),
                "--target-r", str(target_r)]

    folder = run_dir_for(tmp_path, "synthetic", "combo", 1)
    # a live owner in another process, as another train would be (this process's own lock is not "elsewhere")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        write_json_atomic(folder / IDENTITY_FILE, identity(run_config(*parse_train_args(argv(4)))))
        for target_r, expected in [(4, None), (2, "target_r: 4 in the run in progress, 2 asked")]:
            run = GridRun("synthetic", "combo", 1, folder)
            rest = mark_other_settings([run], lambda r, t=target_r: argv(t))
            assert (run.detail if run.status == "other settings" else None) == expected
            assert rest == ([] if expected else [run])
    finally:
        holder.kill()
        holder.wait()
    (folder / "run.lock").unlink()  # what a dead owner leaves
    run = GridRun("synthetic", "combo", 1, folder)  # nobody holds it and it has no checkpoint: it starts over
    assert mark_other_settings([run], lambda r: argv(2)) == [run]
