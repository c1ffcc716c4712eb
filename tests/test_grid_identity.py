"""One identity per run in a grid: ``ablate CONFIG.yaml`` runs what ``train CONFIG.yaml`` runs, under every launcher,
and a shared warm-up is keyed on the runs' resolved settings (preset, config file, model path), records them, and
never seeds a run whose settings differ."""

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_in_process import run_cli

from adalora_ablation.args import CONFIG_DIR, parse_settings, run_identity
from adalora_ablation.errors import UsageError
from adalora_ablation.grid.ablate import ablate_main
from adalora_ablation.grid.launchers import TrainJob, train_argv, train_command
from adalora_ablation.grid.warmup import DONE, PLAN, WarmupGroup, warmup_identity, warmup_key, write_plan
from adalora_ablation.grid.warmup_run import run_warmup
from adalora_ablation.run.folder import read_jsonl, read_summary, run_dir_for

# A short synthetic grid: 24 steps, the warm-up's 6 shared, no evaluation or checkpoint but the warm-up's.
CONFIG = {"task": "synthetic", "seed": 1, "max_steps": 24, "tinit": 6, "tfinal": 6, "deltaT": 3, "logging_steps": 4,
          "eval_strategy": "no", "save_strategy": "no", "max_train_samples": 128, "max_eval_samples": 32,
          "adapter_effect": False}
SIGNALS = ("importance_only", "random")


def write_config(path: Path, **changes) -> Path:
    path.write_text(json.dumps({**CONFIG, **changes}))
    return path


def test_ablate_puts_the_config_file_first_in_every_train_it_builds(tmp_path):
    config = str(write_config(tmp_path / "cfg.json"))
    run = SimpleNamespace(task="synthetic", signal="combo", seed=1, variant="target_r=2",
                          train_flags=["--target-r", "2", "--variant", "target_r=2"])
    argv = train_argv(run, tmp_path, [config, "--max_steps", "8"])
    assert argv[0] == config and argv[-4:] == ["--target-r", "2", "--variant", "target_r=2"]
    assert argv[argv.index("--max_steps") + 1] == "8"
    # local and --gpus: the command each run's process is started with; Slurm and submitit-local: the job's argv
    assert train_command(run, tmp_path, [config])[3:5] == ["train", config]
    assert TrainJob(train_argv(run, tmp_path, [config]), tmp_path).argv[0] == config
    settings = parse_settings(argv)  # as train reads it: the file below every flag
    assert settings.run.task == "synthetic" and settings.adalora.tinit == 6 and settings.adalora.target_r == 2
    assert train_argv(run, tmp_path, ["--max_steps", "8"])[0] == "--task"  # no file, nothing in front


def test_the_config_files_task_seed_and_root_are_the_grids_defaults(tmp_path, capsys):
    config = write_config(tmp_path / "cfg.yaml", seed=3, output_root=str(tmp_path / "root"))
    assert ablate_main([str(config), "--signals", *SIGNALS, "--dry-run", "--no-share-warmup"]) == 0
    out = capsys.readouterr().out
    assert "| synthetic | importance_only | 3 | would run |" in out and "| synthetic | random | 3 | would run |" in out
    assert f"config file: {config.resolve()}" in out
    assert ablate_main([str(config), "--signals", "random", "--seeds", "5", "--dry-run", "--no-share-warmup"]) == 0
    assert "| synthetic | random | 5 | would run |" in capsys.readouterr().out  # a flag still wins
    assert not (tmp_path / "root").exists()


def test_a_changed_preset_or_model_path_is_another_warmup(monkeypatch):
    """The key is the resolved settings': a preset's contents and ADALORA_MODEL_PATH count, not only the flags."""
    preset = CONFIG_DIR / "synthetic_identitytest.yaml"  # a preset of its own, which does not name the model
    argv = ["--task", "synthetic", "--preset", "identitytest", "--signal", "combo", "--seed", "1"]
    try:
        preset.write_text("learning_rate: 1.0e-2\ntinit: 5\n")
        monkeypatch.setenv("ADALORA_MODEL_PATH", "/models/a")
        first = warmup_key(argv)
        assert run_identity(argv)["settings"]["model"] == "/models/a"
        assert warmup_key([*argv, "--signal", "random", "--target-r", "2"]) == first  # same weights until tinit
        preset.write_text("learning_rate: 2.0e-2\ntinit: 5\n")
        changed_preset = warmup_key(argv)
        monkeypatch.setenv("ADALORA_MODEL_PATH", "/models/b")
        changed_model = warmup_key(argv)
    finally:
        preset.unlink()
    assert len({first, changed_preset, changed_model}) == 3


def _finished_warmup(tmp_path, recorded: dict | None):
    """A warm-up folder as a grid leaves it after training: plan.json and done.json (with ``recorded`` settings)."""
    runs = [SimpleNamespace(task="synthetic", signal=s, seed=1, run_dir=run_dir_for(tmp_path, "synthetic", s, 1))
            for s in SIGNALS]
    argvs = [["--task", "synthetic", "--signal", s, "--seed", "1", "--tinit", "6", "--output-root", str(tmp_path)]
             for s in SIGNALS]
    group = WarmupGroup(warmup_key(argvs[0]), tmp_path / "grid" / "warmup" / "w", 6, runs, argvs)
    write_plan(group)
    done = {"step": 6, "variants": list(SIGNALS)}
    if recorded is not None:
        done.update(recorded)
    (group.folder / DONE).write_text(json.dumps(done))
    return group


@pytest.mark.parametrize("how", ["other settings", "none recorded"])
def test_a_finished_warmup_never_seeds_runs_with_other_settings(tmp_path, how):
    argv = ["--task", "synthetic", "--signal", "random", "--seed", "1", "--tinit", "6"]
    shared = warmup_identity(run_identity(argv)["settings"])
    if how == "other settings":  # trained with another learning rate (another preset, file or model: the same)
        shared["settings"] = {**shared["settings"], "learning_rate": 0.5}
    group = _finished_warmup(tmp_path, shared if how == "other settings" else None)
    with pytest.raises(UsageError) as error:
        run_warmup(group.folder)
    message = str(error.value)
    assert "\n" not in message and f"remove {group.folder}" in message
    assert ("learning_rate: 0.5 in the warm-up, 0.01 asked" in message) if how == "other settings" else \
        "does not record its settings" in message
    assert not any(run.run_dir.exists() for run in group.members)  # nothing seeded, nothing written


def _grid(capsys, config, root, *flags):
    result = run_cli(capsys, "ablate", str(config), "--signals", *SIGNALS, "--output-root", str(root), *flags)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "2 finished, 0 skipped, 0 failed" in result.stdout, result.stdout[-2000:]
    return result


def _results(root) -> dict:
    found = {}
    for signal in SIGNALS:
        folder = run_dir_for(root, "synthetic", signal, 1)
        summary = read_summary(folder)
        found[signal] = {"rank_pattern": read_jsonl(folder / "rank_pattern.jsonl"),
                         "scores": read_jsonl(folder / "signal_scores.jsonl"),
                         # a seeded run logs the loss up to tinit once more (at tinit), so that its next line
                         # covers the steps after tinit only; every other line is the same
                         "loss": {r["step"]: r["loss"] for r in read_jsonl(folder / "metrics.jsonl")
                                  if "loss" in r and r["step"] % CONFIG["logging_steps"] == 0
                                  and not CONFIG["tinit"] < r["step"] < CONFIG["tinit"] + CONFIG["logging_steps"]},
                         "train_loss": summary["train_loss"],
                         "eval": {k: v for k, v in summary["eval_metrics"].items()
                                  if k in ("eval_loss", "eval_accuracy")},
                         "ranks": summary["final_ranks"],
                         "settings": summary["settings"], "warmup": summary["shared_warmup"]}
    return found


@pytest.mark.slow
def test_ablate_with_a_config_file_runs_its_grid_and_a_changed_file_never_mixes_two_configurations(tmp_path, capsys):
    config = write_config(tmp_path / "cfg.yaml")
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    _grid(capsys, config, shared)
    before = _results(shared)
    (first_warmup,) = (shared / "grid" / "warmup").iterdir()
    assert all(r["warmup"]["folder"] == str(first_warmup.resolve()) for r in before.values())
    # The file changes, the runs' folders are removed, the same ablate runs again.
    write_config(config, learning_rate=3.0e-3)
    for signal in SIGNALS:
        subprocess.run(["rm", "-r", str(run_dir_for(shared, "synthetic", signal, 1))], check=True)
    _grid(capsys, config, shared)
    after = _results(shared)
    # Independent runs with the new settings: each grid run's train, in this process (what the grid's process for
    # it runs; one torch thread here and there, so the numbers are the same to the last bit).
    from adalora_ablation.train import train

    for signal in SIGNALS:
        run = SimpleNamespace(task="synthetic", signal=signal, seed=1)
        train(train_argv(run, alone, [str(config)]))
    independent = _results(alone)
    new_warmup = Path(after["random"]["warmup"]["folder"])
    assert new_warmup != first_warmup.resolve() and new_warmup.parent == first_warmup.resolve().parent
    done = json.loads((new_warmup / DONE).read_text())
    assert done["settings"]["learning_rate"] == 3.0e-3 and done["step"] == 6
    assert json.loads((new_warmup / PLAN).read_text())["members"][0]["argv"][0] == str(config.resolve())
    for signal in SIGNALS:
        assert independent[signal]["warmup"] is None
        ours, theirs = after[signal], independent[signal]
        assert ours["settings"] == theirs["settings"] and ours["settings"]["learning_rate"] == 3.0e-3
        assert len(ours["loss"]) == 5 and len(ours["eval"]) == 2
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-6)
        for part in ("rank_pattern", "scores", "loss", "eval", "ranks"):
            assert ours[part] == theirs[part], (signal, part)
        assert before[signal]["loss"] != ours["loss"]  # the change mattered: the old warm-up would have shown
