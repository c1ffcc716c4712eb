"""Shared warm-up: which runs share it, and runs continued from it equal the same runs trained alone, bit for bit."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from adalora_ablation.adalora.shared_warmup import StopAtWarmupEnd
from adalora_ablation.grid.ablate import ablate_main
from adalora_ablation.grid.warmup import DONE, VARIANTS, WarmupGroup, plan_warmups, warmup_key, write_plan
from adalora_ablation.grid.warmup_run import run_warmup
from adalora_ablation.run.folder import read_jsonl, read_summary, run_dir_for, verify_manifest
from adalora_ablation.train import train

TINIT = 10
# 256 rows in batches of 32: 8 steps an epoch, so the warm-up ends inside an epoch (step 10 of 16), after the
# evaluation at the end of the first epoch and before the one at the end of the second. 24 steps: the budget falls
# from step 10 to step 18 (a re-mask every 3 steps), then holds.
STEPS = 24
COMMON = ["--task", "synthetic", "--seed", "3", "--max-steps", str(STEPS), "--tinit", str(TINIT), "--tfinal", "6",
          "--deltaT", "3", "--logging-steps", "4", "--eval-strategy", "epoch", "--save-strategy", "no",
          "--max-train-samples", "256", "--max-eval-samples", "64"]
# Three signals (a control that draws random numbers at allocations, one that fixes ranks, one with two EMAs) and
# two budgets; combo's two budgets share one signal state.
MEMBERS = [("random", 2), ("uniform", 2), ("combo", 2), ("combo", 3)]


def argv_for(root, signal, target_r, *extra):
    return [*COMMON, *extra, "--signal", signal, "--target-r", str(target_r),
            "--output-root", str(root / f"r{target_r}"), "--resume", "True"]


def group_of(root, folder, *extra) -> WarmupGroup:
    runs = [SimpleNamespace(task="synthetic", seed=3, signal=s, run_dir=run_dir_for(root / f"r{r}", "synthetic", s, 3))
            for s, r in MEMBERS]
    argvs = [argv_for(root, s, r, *extra) for s, r in MEMBERS]
    assert len({warmup_key(a) for a in argvs}) == 1  # signal, its settings and target_r do not split a group
    return WarmupGroup(warmup_key(argvs[0]), folder, TINIT, runs, argvs)


@pytest.fixture(scope="module")
def shared_and_alone(tmp_path_factory):
    """The members trained alone, and again through one shared warm-up, all in this process (same threads)."""
    root = tmp_path_factory.mktemp("warmup")
    group = group_of(root / "shared", root / "shared" / "grid" / "warmup" / "w")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADALORA_CACHE", str(root / "cache"))
        write_plan(group)
        seeded = run_warmup(group.folder)
        for argv in group.argvs:
            train(argv)
        for signal, target_r in MEMBERS:
            train(argv_for(root / "alone", signal, target_r))
    return root, group, seeded


@pytest.mark.slow
def test_runs_continued_from_a_shared_warmup_equal_runs_trained_alone(shared_and_alone):
    root, group, seeded = shared_and_alone
    assert seeded == [f"synthetic/{s}/3" for s, _ in MEMBERS]
    for signal, target_r in MEMBERS:
        shared = run_dir_for(root / "shared" / f"r{target_r}", "synthetic", signal, 3)
        alone = run_dir_for(root / "alone" / f"r{target_r}", "synthetic", signal, 3)
        for name in ("rank_pattern.jsonl", "signal_scores.jsonl"):
            assert (shared / name).read_text() == (alone / name).read_text(), (signal, target_r, name)
        a, b = read_summary(shared), read_summary(alone)
        assert a["eval_accuracy"] == b["eval_accuracy"]
        assert a["eval_metrics"]["eval_loss"] == b["eval_metrics"]["eval_loss"]
        assert a["final_ranks"] == b["final_ranks"] and a["target_budget"] == b["target_budget"]
        # Its folder is complete: the warm-up's log lines, a verified checkpoint at tinit, the summary says whence.
        assert a["resumed_from"] == f"checkpoint-{TINIT}" and b["resumed_from"] is None
        assert a["shared_warmup"]["folder"] == str(group.folder.resolve()) and a["shared_warmup"]["variant"] == signal
        verify_manifest(shared / f"checkpoint-{TINIT}")
        steps = [r["step"] for r in read_jsonl(shared / "metrics.jsonl") if "loss" in r]
        assert steps == [4, 8, TINIT, 12, 16, 20, 24]  # one extra line: the loss up to tinit
        evals = [[(r["step"], r["eval_accuracy"]) for r in read_jsonl(d / "metrics.jsonl") if "eval_loss" in r]
                 for d in (shared, alone)]
        assert evals[0] == evals[1] and evals[0][0][0] == 8  # the warm-up's evaluation, none where it stopped
        # The Trainer's own train_loss would cover only the steps after tinit; the summary's covers the whole run.
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)


@pytest.mark.slow
def test_killed_warmup_resumes_to_the_same_checkpoint(shared_and_alone, tmp_path, monkeypatch):
    root, _, _ = shared_and_alone
    group = group_of(tmp_path, tmp_path / "warmup", "--save-strategy", "steps", "--save-steps", "5")
    write_plan(group)
    crash_at = 7  # after checkpoint-5, before tinit

    def crash(self, args, state, control, **kwargs):
        if state.global_step == crash_at:
            raise KeyboardInterrupt("killed")
        return original(self, args, state, control, **kwargs)

    original = StopAtWarmupEnd.on_step_end
    monkeypatch.setattr(StopAtWarmupEnd, "on_step_end", crash)
    with pytest.raises(KeyboardInterrupt):
        run_warmup(group.folder)
    assert not (group.folder / DONE).exists() and (group.folder / "train" / "checkpoint-5" / "manifest.json").exists()
    monkeypatch.setattr(StopAtWarmupEnd, "on_step_end", original)
    # The grid that resumes it may list its runs in another order: another run leads, the checkpoint still fits.
    group.members.reverse()
    group.argvs.reverse()
    write_plan(group)
    assert sorted(run_warmup(group.folder)) == sorted(f"synthetic/{s}/3" for s, _ in MEMBERS)
    assert json.loads((group.folder / DONE).read_text())["step"] == TINIT
    for signal, target_r in MEMBERS:
        resumed = run_dir_for(tmp_path / f"r{target_r}", "synthetic", signal, 3) / f"checkpoint-{TINIT}"
        once = run_dir_for(root / "shared" / f"r{target_r}", "synthetic", signal, 3) / f"checkpoint-{TINIT}"
        weights_a, weights_b = (load_file(c / "adapter_model.safetensors") for c in (resumed, once))
        assert weights_a.keys() == weights_b.keys()
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
        state_a = torch.load(resumed / "adalora_allocator.pt", weights_only=True)["allocator"]
        state_b = torch.load(once / "adalora_allocator.pt", weights_only=True)["allocator"]
        assert state_a["signal"] == signal and state_a["buffers"].keys() == state_b["buffers"].keys()
        for key in state_a["buffers"]:
            assert torch.equal(torch.as_tensor(state_a["buffers"][key]), torch.as_tensor(state_b["buffers"][key]))
        assert json.loads((resumed / "adapter_config.json").read_text())["target_r"] == target_r
    # Seeding again leaves seeded runs alone; a finished warm-up is not trained again.
    assert run_warmup(group.folder) == []


def _runs(root, *specs):
    return [SimpleNamespace(task="synthetic", seed=seed, signal=signal,
                            run_dir=run_dir_for(root, "synthetic", signal, seed)) for signal, seed, _ in specs]


def test_grouping_by_everything_but_signal_settings_and_budget(tmp_path):
    specs = [("combo", 1, ["--combo-lambda", "0.5", "--target-r", "2"]), ("random", 1, ["--target-r", "3"]),
             ("fisher", 1, ["--ema-decay=0.8"]), ("combo", 2, []),  # another seed: alone
             ("uniform", 1, ["--learning-rate", "0.02"]),  # another learning rate: alone
             ("baseline_adalora", 1, ["--learning-rate", "0.010"])]  # the preset's own (1.0e-2), spelled otherwise
    runs = _runs(tmp_path, *specs)
    argvs = {id(r): ["--task", "synthetic", "--seed", str(seed), "--signal", signal, "--tinit", "7", *extra]
             for r, (signal, seed, extra) in zip(runs, specs)}
    (group,) = plan_warmups(runs, lambda run: argvs[id(run)], tmp_path)
    assert [r.signal for r in group.members] == ["combo", "random", "fisher", "baseline_adalora"]
    assert group.variants == ["combo --combo-lambda 0.5", "random", "fisher --ema-decay 0.8", "baseline_adalora"]
    assert group.tinit == 7 and group.saved_steps == 21 and group.folder.parent == tmp_path / "grid" / "warmup"
    assert warmup_key([*argvs[id(runs[0])], "--include", "adalora_ablation.signals.study"]) == \
        warmup_key(argvs[id(runs[0])])  # where signals are found is no setting
    assert not group.folder.exists()  # planning writes nothing
    # A group of one run needs no warm-up of its own ...
    assert plan_warmups(runs[3:], lambda run: argvs[id(run)], tmp_path) == []
    # ... unless a finished one can seed it; and a started warm-up takes no signal it does not track.
    group.folder.mkdir(parents=True)
    (group.folder / VARIANTS).write_text(json.dumps({"variants": ["random", "fisher --ema-decay 0.8"]}))
    (group.folder / DONE).write_text("{}")
    (again,) = plan_warmups(runs[1:2], lambda run: argvs[id(run)], tmp_path)
    assert again.members == runs[1:2] and not again.trains and again.saved_steps == 7
    assert [r.signal for r in plan_warmups(runs[:3], lambda run: argvs[id(run)], tmp_path)[0].members] == \
        ["random", "fisher"]
    # tinit from the task preset when no flag gives it; none to share when it is 0
    without_tinit = {k: [a for a in v if a not in ("--tinit", "7")] for k, v in argvs.items()}
    preset = plan_warmups(runs[:2], lambda run: without_tinit[id(run)], tmp_path / "p")
    assert preset[0].tinit == 50  # configs/synthetic.yaml
    assert plan_warmups(runs[:2], lambda run: [*argvs[id(run)], "--tinit", "0"], tmp_path / "z") == []


def test_dry_run_shows_the_groups_and_the_steps_saved(tmp_path, capsys):
    grid = ["--task", "synthetic", "--signals", "importance_only", "combo", "--with-controls", "--seeds", "1", "2",
            "--output-root", str(tmp_path), "--dry-run", "--tinit", "30"]
    assert ablate_main(grid) == 0
    out = capsys.readouterr().out
    assert out.count("[grid warm-up] shared warm-up synthetic-") == 2 and "for 4 runs" in out
    assert "shared warm-ups save 180 optimizer steps in all" in out  # 2 seeds x (4 - 1) x 30
    assert out.count("after shared warm-up synthetic-1-") == 4 and out.count("would run") == 8
    assert ablate_main([*grid, "--no-share-warmup"]) == 0
    assert "warm-up" not in capsys.readouterr().out
    assert not any(tmp_path.iterdir())
