"""Figures: panels, heatmap shapes and values, files, command line; on crafted run folders (tests/runs_crafted.py), and
the end-to-end ones (marked slow) also on really trained tiny runs (tests/conftest.py's real_runs)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import matplotlib.image
import pytest
from conftest import REAL_RUN_SEED as SEED, REAL_RUN_STEPS as STEPS, REAL_RUN_TFINAL as TFINAL, REAL_RUN_TINIT as TINIT
from matplotlib.backends.backend_agg import FigureCanvasAgg
from runs_crafted import Schedule, keep_top, write_run

from adalora_ablation.cli import main
from adalora_ablation.module_names import MODULE_TYPES, module_type
from adalora_ablation.analysis.plots import (
    PLANTED_RANK_TITLE, TRAINING_LOSS_TITLE, eval_curves, load_run, plot_comparison, plot_final_rank_heatmap,
    plot_rank_evolution, plot_signal_heatmap,
)
from adalora_ablation.data.tasks import custom_task
from adalora_ablation.errors import UsageError
from adalora_ablation.run.folder import Run, append_jsonl, run_dir_for, write_task_spec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ACCURACY = {"baseline_adalora": 0.70, "combo": 0.75}
# The crafted runs' schedule is the real runs' (conftest.REAL_RUN): tiny-deberta, 60 steps, tinit 10, tfinal 20.
assert Schedule() == Schedule(tinit=TINIT, tfinal=TFINAL, total_step=STEPS)


@pytest.fixture(scope="module")
def crafted_runs(tmp_path_factory):
    """<output-root> with synthetic/baseline_adalora/42 and synthetic/combo/42 as the real runs lay them out."""
    root = tmp_path_factory.mktemp("plot_runs")
    for signal, accuracy in ACCURACY.items():
        write_run(root, "synthetic", signal, SEED, {"eval_accuracy": accuracy})
    return root


@pytest.fixture(params=["crafted", pytest.param("real", marks=pytest.mark.slow)])
def runs(request):
    """The crafted runs, and (slow) the same figures of really trained ones."""
    return request.getfixturevalue(f"{request.param}_runs")


def run_dir(base, signal="combo"):
    return base / "synthetic" / signal / str(SEED)


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_png(path, min_w=400, min_h=300):
    assert path.read_bytes()[:8] == PNG_MAGIC
    h, w = matplotlib.image.imread(path).shape[:2]
    assert w >= min_w and h >= min_h, (path, w, h)


@pytest.mark.parametrize("name, kind", [
    ("layer.0.attention.self.query_proj", "Q"), ("layer.3.attention.self.key_proj", "K"),
    ("layer.11.attention.self.value_proj", "V"), ("layer.0.attention.self.query", "Q"),
    ("layer.0.attention.self.key", "K"), ("layer.0.attention.self.value", "V"),
    ("layer.0.attention.output.dense", "O"), ("layer.0.intermediate.dense", "FFN-in"),
    ("layer.0.output.dense", "FFN-out"), ("layers.2.output.dense", "FFN-out"),
])
def test_module_type(name, kind):
    assert module_type(name) == kind


def test_a_custom_task_run_in_a_sweep_is_plotted_by_its_own_metric(tmp_path):
    """A sweep's run (<task>/<signal>/<variant>/<seed>) of a custom task scored by F1: its curves are F1's, read
    from the task folder's task.json, and a missing run names the output root to train it under."""
    task = custom_task("reviews_train.csv", ("text",), "label", ("negative", "positive"), ("f1", "accuracy"), {})
    (tmp_path / task.name).mkdir()
    write_task_spec(tmp_path, task)
    run_dir = run_dir_for(tmp_path, task.name, "combo", 1, "target_r=2")
    run_dir.mkdir(parents=True)
    for step, f1 in ((20, 0.6), (40, 0.7)):
        append_jsonl(run_dir / "metrics.jsonl", {"step": step, "eval_f1": f1, "eval_accuracy": 0.5})
    assert eval_curves(Run.from_dir(run_dir)) == {"": ([20, 40], [0.6, 0.7])}
    with pytest.raises(UsageError, match=f"--output-root {tmp_path}' or fix"):
        load_run(run_dir_for(tmp_path, task.name, "combo", 2, "target_r=2"))


def test_rank_evolution_panels_budget_and_phases(runs):
    folder = run_dir(runs)
    summary = json.loads((folder / "final_summary.json").read_text())
    allocations = read_lines(folder / "rank_pattern.jsonl")
    fig = plot_rank_evolution(load_run(folder))
    ax_total, ax_types = fig.axes
    assert ax_total.get_title() == "Total rank vs scheduled budget"
    assert ax_types.get_title() == "Rank per module type"

    total, budget = ax_total.lines[:2]
    assert total.get_ydata()[0] == summary["initial_budget"]
    assert total.get_ydata()[-1] == summary["total_rank"] == summary["target_budget"]
    # The PEFT schedule drawn must be the budget the run actually allocated to at every allocation step.
    for record in allocations:
        assert budget.get_ydata()[record["step"]] == record["budget"]

    assert [line.get_label() for line in ax_types.lines] == list(MODULE_TYPES)
    final_by_type = {k: sum(r for m, r in summary["final_ranks"].items() if module_type(m) == k) for k in MODULE_TYPES}
    assert {line.get_label(): line.get_ydata()[-1] for line in ax_types.lines} == final_by_type

    for ax in (ax_total, ax_types):
        spans = [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches]
        assert spans == [(0, TINIT), (TINIT, STEPS - TFINAL), (STEPS - TFINAL, STEPS)]
    assert {"warm-up phase", "reduction phase", "final phase"} <= set(ax_total.get_legend_handles_labels()[1])


def test_signal_heatmap_rows_columns_and_values(runs):
    folder = run_dir(runs)
    scores = read_lines(folder / "signal_scores.jsonl")
    fig = plot_signal_heatmap(load_run(folder))
    ax = fig.axes[0]
    grid = ax.images[0].get_array()
    assert grid.shape == (12, len(scores))  # 2 layers x 6 types, one column per allocation
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:6] == [f"L0 {k}" for k in MODULE_TYPES] and labels[6] == "L1 Q"
    row = labels.index("L1 V")
    assert grid[row, -1] == pytest.approx(scores[-1]["modules"]["layer.1.attention.self.value_proj"]["mean"])
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(r["step"]) for r in scores]
    assert len(fig.axes) == 2  # heatmap + colour bar


def test_final_rank_heatmap_matches_summary(runs):
    folder = run_dir(runs)
    final = json.loads((folder / "final_summary.json").read_text())["final_ranks"]
    ax = plot_final_rank_heatmap(load_run(folder)).axes[0]
    grid = ax.images[0].get_array()
    assert grid.shape == (2, 6)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(MODULE_TYPES)
    assert grid[1, MODULE_TYPES.index("FFN-in")] == final["layer.1.intermediate.dense"]
    assert grid[0, MODULE_TYPES.index("Q")] == final["layer.0.attention.self.query_proj"]
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(final.values())


BERT_SUFFIXES = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense")


def test_72_modules_of_12_layers_are_readable(tmp_path):
    """A 12-layer BERT's 72 adapted modules (query/key/value/...dense): one row each, none overlapping."""
    modules = {f"layer.{layer}.{suffix}": (32, 32) for layer in range(12) for suffix in BERT_SUFFIXES}
    folder = write_run(tmp_path, "synthetic", "combo", SEED, {"eval_accuracy": 0.7},
                       schedule=Schedule(modules=modules, total_step=30, tinit=5, tfinal=10))
    run = load_run(folder)
    assert len(run.final_ranks) == 72
    fig = plot_signal_heatmap(run)
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape[0] == 72
    # Row labels must not overlap one another: each sits in its own slice of the axis height.
    boxes = sorted((t.get_window_extent() for t in ax.get_yticklabels()), key=lambda b: b.y0)
    assert len(boxes) == 72
    assert all(lower.y1 <= upper.y0 + 0.5 for lower, upper in zip(boxes, boxes[1:]))
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 6

    heat = plot_final_rank_heatmap(run).axes[0]
    assert heat.images[0].get_array().shape == (12, 6)
    assert [t.get_text() for t in heat.get_yticklabels()] == [f"layer {i}" for i in range(12)]
    assert [t.get_text() for t in heat.get_xticklabels()] == list(MODULE_TYPES)


def test_comparison_panels_share_one_colour_scale(runs):
    signals = ("baseline_adalora", "combo")
    logs = {s: load_run(run_dir(runs, s)) for s in signals}
    fig = plot_comparison(logs)
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title().split("\n")[0] for ax in heatmaps] == list(signals)
    assert {(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in heatmaps} == {(0, 8)}
    titled = {ax.get_title(): ax for ax in fig.axes}
    assert {"Accuracy per signal", "Eval accuracy during training", "Final rank per layer"} <= set(titled)
    assert not {TRAINING_LOSS_TITLE, PLANTED_RANK_TITLE} & set(titled)
    accuracy = titled["Accuracy per signal"].lines[0].get_ydata()
    assert list(accuracy) == [logs[s].summary["eval_accuracy"] for s in signals]
    eval_steps = titled["Eval accuracy during training"].lines[0].get_xdata()
    assert list(eval_steps) == [20, 40, 60]  # the post-training evaluation of step 60 is not drawn twice
    per_layer = titled["Final rank per layer"].lines[1].get_ydata()
    final = logs["combo"].summary["final_ranks"]
    assert list(per_layer) == [sum(r for m, r in final.items() if m.startswith(f"layer.{i}.")) for i in (0, 1)]


@pytest.mark.parametrize("source", ["crafted", pytest.param("real", marks=pytest.mark.slow)])
def test_unfinished_run_is_plotted_from_its_logs(source, request, tmp_path):
    runs = request.getfixturevalue(f"{source}_runs")
    folder = tmp_path / "synthetic" / "combo" / str(SEED)
    shutil.copytree(run_dir(runs), folder)
    (folder / "final_summary.json").unlink()
    allocations = read_lines(folder / "rank_pattern.jsonl")
    run = load_run(folder)
    fig = plot_rank_evolution(run)
    assert "unfinished" in fig.get_suptitle()
    spans = [(p.get_x(), p.get_x() + p.get_width()) for p in fig.axes[0].patches]
    first_reduction = allocations[0]["step"]  # without a summary, warm-up is shaded until the first allocation
    assert spans == [(0, first_reduction), (first_reduction, STEPS - TFINAL), (STEPS - TFINAL, STEPS)]
    final = plot_final_rank_heatmap(run).axes[0]
    assert sorted(int(t.get_text()) for t in final.texts) == sorted(allocations[-1]["ranks"].values())


def test_plot_command_writes_the_three_figures(runs, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(runs, root)
    assert main(["plot", "--task", "synthetic", "--signal", "combo", "--seed", str(SEED),
                 "--output-root", str(root)]) == 0
    folder = root / "synthetic" / "combo" / str(SEED)
    for name in ("rank_evolution.png", "signal_heatmap.png", "final_rank_heatmap.png"):
        assert_png(folder / name)


def test_plot_module_compare_reports_a_missing_signal(crafted_runs, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(crafted_runs, root)
    result = subprocess.run(
        [sys.executable, "-m", "adalora_ablation", "plot", "--compare", "--task", "synthetic", "--signals",
         "baseline_adalora", "combo", "plasticity_only", "--seed", str(SEED), "--output-root", str(root)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figure = root / "synthetic" / "compare" / f"compare_seed{SEED}.png"
    assert result.stdout.strip() == str(figure)
    assert "plasticity_only is left out" in result.stderr
    assert_png(figure, min_w=1200, min_h=1000)


@pytest.mark.parametrize("argv, expected", [
    (["--task", "synthetic", "--seed", str(SEED)], "needs --signal"),
    (["--task", "synthetic", "--signals", "combo"], "--signals is for --compare"),
    (["--task", "synthetic", "--signal", "combo", "--seed", "7"], "no run folder"),
    (["--task", "synthetic", "--signal", "combo", "--colour", "red"], "unrecognized arguments"),
    (["--task", "synthetic", "--signal", "nope"], "invalid choice"),
    (["--compare", "--task", "synthetic", "--signals", "importance_only"], "none of importance_only"),
])
def test_plot_errors_are_one_line_exit_2(crafted_runs, capsys, argv, expected):
    assert main(["plot", *argv, "--output-root", str(crafted_runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err


PLANTED_SPEC = {"layer.0.attention.self.query_proj": 2, "layer.1.intermediate.dense": 3}
PLANTED = Schedule(init_r=8, target_r=1, tinit=4, tfinal=6, deltaT=2, total_step=24)


def planted_kept(signal, schedule):
    """At every allocation: the oracle keeps exactly the planted triplets (the first spec[m] of each planted module)
    and fills the rest of the budget elsewhere; uniform keeps the same rank in every module."""
    kept = {}
    for step in schedule.steps():
        budget = schedule.budget(step)
        if signal == "oracle":
            scores = {m: [(10.0 if i < PLANTED_SPEC[m] else -10.0) if m in PLANTED_SPEC else 1.0 - 0.01 * i
                          for i in range(schedule.init_r)] for m in schedule.modules}
        else:
            scores = {m: [float(schedule.init_r - i) for i in range(schedule.init_r)] for m in schedule.modules}
        kept[step] = keep_top(scores, budget)
    return kept


@pytest.fixture(scope="module")
def end_only_runs(tmp_path_factory):
    """Runs that evaluate only after training, as the demo's: two synthetic signals, and the planted task's oracle
    and uniform control (a short schedule, target_r 1)."""
    base = tmp_path_factory.mktemp("end_only")
    for signal, accuracy in ACCURACY.items():
        write_run(base, "synthetic", signal, SEED, {"eval_accuracy": accuracy}, eval_steps=None)
    for signal in ("oracle", "uniform"):
        write_run(base, "planted", signal, SEED, {"eval_accuracy": 0.8}, eval_steps=None, logging_steps=4,
                  schedule=PLANTED, kept=planted_kept(signal, PLANTED),
                  summary={"planted": {"spec": PLANTED_SPEC}})
    return base


def comparison_panels(runs):
    return {ax.get_title(): ax for ax in plot_comparison(runs).axes}


def test_runs_evaluated_only_at_the_end_are_compared_by_their_training_loss(end_only_runs):
    runs = {s: load_run(end_only_runs / "synthetic" / s / str(SEED)) for s in ("baseline_adalora", "combo")}
    assert all(len(steps) == 1 for run in runs.values() for steps, _ in eval_curves(run).values())
    titled = comparison_panels(runs)
    assert TRAINING_LOSS_TITLE in titled and PLANTED_RANK_TITLE not in titled
    assert not [t for t in titled if t.endswith("during training")]
    for line, run in zip(titled[TRAINING_LOSS_TITLE].lines, runs.values()):
        logged = [(m["step"], m["loss"]) for m in read_lines(run.run_dir / "metrics.jsonl") if "loss" in m]
        assert list(zip(line.get_xdata(), line.get_ydata())) == logged
        assert [s for s, _ in logged] == list(range(10, STEPS + 1, 10))


def test_planted_runs_evaluated_only_at_the_end_are_compared_by_the_planted_modules_rank(end_only_runs):
    runs = {s: load_run(end_only_runs / "planted" / s / str(SEED)) for s in ("oracle", "uniform")}
    titled = comparison_panels(runs)
    assert PLANTED_RANK_TITLE in titled and TRAINING_LOSS_TITLE not in titled
    assert not [t for t in titled if t.endswith("during training")]
    panel = titled[PLANTED_RANK_TITLE]
    *signal_lines, planted_line = panel.lines
    assert [line.get_label() for line in signal_lines] == ["oracle", "uniform"]
    for line, run in zip(signal_lines, runs.values()):
        spec = run.summary["planted"]["spec"]
        allocations = read_lines(run.run_dir / "rank_pattern.jsonl")
        held = [sum(a["ranks"][m] for m in spec) for a in allocations]
        init = run.summary["config"]["adalora"]["init_r"] * len(spec)
        assert list(line.get_xdata()) == [0, *(a["step"] for a in allocations), run.summary["total_step"]]
        assert list(line.get_ydata()) == [init, *held, held[-1]]
        assert held[-1] == sum(run.summary["final_ranks"][m] for m in spec)
    spec = runs["oracle"].summary["planted"]["spec"]
    assert set(planted_line.get_ydata()) == {sum(spec.values())}
    # the oracle keeps every planted triplet at the final budget; uniform cannot (target_r 1 in every module)
    assert signal_lines[0].get_ydata()[-1] == sum(spec.values()) > signal_lines[1].get_ydata()[-1]


def test_one_run_with_eval_curves_keeps_the_eval_panel(runs, end_only_runs):
    mixed = {"baseline_adalora": load_run(end_only_runs / "synthetic" / "baseline_adalora" / str(SEED)),
             "combo": load_run(run_dir(runs, "combo"))}
    titled = comparison_panels(mixed)
    assert "Eval accuracy during training" in titled and TRAINING_LOSS_TITLE not in titled
    combo = [line for line in titled["Eval accuracy during training"].lines if line.get_label() == "combo"]
    assert list(combo[0].get_xdata()) == [20, 40, 60]
