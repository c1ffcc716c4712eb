"""``adalora-ablation plot``: figures of one run (rank evolution, signal heatmap, final-rank heatmap) or a
comparison of several signals at one seed.

Figures are built with matplotlib's object API (``Figure``, not ``pyplot``): headless by construction, no global
backend switch, nothing left open between calls. Each ``plot_*`` function returns its Figure so that callers and
tests can inspect the panels before it is saved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.colors import CenteredNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .. import module_names
from ..errors import OneLineArgumentParser, UsageError
from ..signals import add_include_flag, included_modules, load_signals, ordered_signals, signal_names
from ..module_names import module_type, ordered_types, ranks_by_layer_and_type
from ..data.tasks import METRIC_LABELS
from ..run.folder import RANK_PATTERN, SIGNAL_SCORES, Run, accuracies, compare_dir, discover, run_dir_for
from ..adalora.schedule import budget_at

logger = logging.getLogger(__name__)


# -- module names ----------------------------------------------------------------------------------------------
def layer_index(name: str) -> int:
    layer = module_names.layer_index(name)
    if layer is None:
        raise UsageError(f"module {name!r} has no layer number (layer.N. or layers.N.); cannot place it in a figure")
    return layer


def sort_modules(names) -> list[str]:
    """By layer number (numerically: layer.10 after layer.9), then Q, K, V, O, FFN-in, FFN-out."""
    order = {t: i for i, t in enumerate(ordered_types(names))}
    return sorted(names, key=lambda n: (layer_index(n), order[module_type(n)]))


def short_label(name: str) -> str:
    return f"L{layer_index(name)} {module_type(name)}"


# -- one run's files -------------------------------------------------------------------------------------------
def load_run(run_dir: Path) -> Run:
    """The run in ``run_dir``, which must hold allocation records (an unfinished run is fine)."""
    run = Run.from_dir(run_dir)
    if not run.run_dir.is_dir():
        raise UsageError(f"no run folder {run.run_dir}; train it with 'adalora-ablation train --task {run.task} "
                         f"--signal {run.signal} --seed {run.seed} --output-root {run.task_dir.parent}' or fix "
                         "--output-root")
    if not run.allocations or not run.scores:
        raise UsageError(f"{run.run_dir} has no allocation records ({RANK_PATTERN}, {SIGNAL_SCORES}): the run "
                         "stopped before its first allocation (step tinit + deltaT), so there is nothing to plot")
    return run


def title(run: Run) -> str:
    return f"{run.task} / {run.signal} / seed {run.seed}" + (
        "" if run.summary else " (unfinished: no final_summary.json)")


def init_rank(run: Run) -> int:
    return len(next(iter(run.allocations[0]["kept"].values())))


@dataclass
class Phases:
    warmup_end: int
    final_start: int | None  # None: the unfinished run never reached the final phase
    end: int


def phases_of(run: Run) -> Phases:
    if run.summary:
        ada, total = run.summary["config"]["adalora"], run.summary["total_step"]
        return Phases(ada["tinit"], total - ada["tfinal"], total)
    # Unfinished run: the phase recorded on each allocation line. The first allocation comes at most deltaT steps
    # after tinit, so here the warm-up is shaded until that first allocation.
    steps = {phase: [a["step"] for a in run.allocations if a["phase"] == phase] for phase in ("reduction", "final")}
    last = max([a["step"] for a in run.allocations] + [m["step"] for m in run.metrics])
    first_final = min(steps["final"], default=None)
    return Phases(min(steps["reduction"], default=run.allocations[0]["step"]), first_final, last)


def scheduled_budget(summary: dict) -> tuple[np.ndarray, np.ndarray]:
    """The budget at every step of PEFT's cubic schedule, with the run's recorded settings."""
    ada, total = summary["config"]["adalora"], summary["total_step"]
    steps = np.arange(total + 1)
    budgets = [budget_at(int(s), summary["initial_budget"], summary["target_budget"], ada["tinit"], ada["tfinal"],
                         total) for s in steps]
    return steps, np.array(budgets)


def rank_series(run: Run, end: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-module rank as a step function: init_r from step 0, then each allocation's rank, held until `end`."""
    steps = np.array([0] + [a["step"] for a in run.allocations] + [end])
    modules = list(run.allocations[0]["ranks"])
    series = {m: np.array([init_rank(run)] + [a["ranks"][m] for a in run.allocations]
                          + [run.allocations[-1]["ranks"][m]]) for m in modules}
    return steps, series


def eval_curves(run: Run) -> dict[str, tuple[list[int], list[float]]]:
    """Eval accuracy over steps per eval set (the eval set's name, "" for a task with one). The evaluation after
    training repeats the last step: keep one."""
    curves: dict[str, dict[int, float]] = {}
    for accuracy in accuracies(run.task, run.task_dir):
        for line in run.metrics:
            if line.get(accuracy.metric) is not None:
                curves.setdefault(accuracy.eval_set, {})[line["step"]] = line[accuracy.metric]
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in curves.items()}


def training_loss(run: Run) -> tuple[list[int], list[float]]:
    """The training loss the Trainer logged (metrics.jsonl), step by step."""
    points = [(line["step"], line["loss"]) for line in run.metrics if line.get("loss") is not None]
    return [s for s, _ in points], [v for _, v in points]


def planted_rank_series(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """The rank the planted modules hold together, as a step function over the run (rank_pattern.jsonl)."""
    steps, series = rank_series(run, phases_of(run).end)
    planted = [series[m] for m in planted_spec(run) if m in series]
    return steps, np.sum(planted, axis=0) if planted else np.zeros(len(steps), dtype=int)


# -- drawing helpers -------------------------------------------------------------------------------------------
PHASE_COLOURS = {"warm-up": "0.85", "reduction": "#fdf2d0", "final": "#d6eaf8"}


def shade_phases(ax, phases: Phases, label: bool) -> None:
    spans = [("warm-up", 0, phases.warmup_end),
             ("reduction", phases.warmup_end, phases.final_start if phases.final_start is not None else phases.end)]
    if phases.final_start is not None:
        spans.append(("final", phases.final_start, phases.end))
    for name, start, stop in spans:
        ax.axvspan(start, stop, color=PHASE_COLOURS[name], zorder=0, label=f"{name} phase" if label else None)


def label_font_size(rows: int) -> float:
    return 8 if rows <= 40 else 6.5


def planted_spec(run: Run) -> dict[str, int]:
    """The planted task's {module: planted rank} from the run's summary; empty for every other task."""
    return ((run.summary or {}).get("planted") or {}).get("spec") or {}


def recovery_field(runs) -> str:
    """Which recovery the heatmaps write in the planted cells: data recovery where any of the runs recorded it,
    else (runs made before it was) subspace recovery; "" when none recorded either."""
    for field in ("planted_data_recovery", "planted_subspace"):
        if any((run.summary or {}).get(f"{field}_by_module") for run in runs):
            return field
    return ""


def planted_recovery_by_module(run: Run, field: str) -> dict[str, float | None]:
    """The run's recovery ``field`` per planted module (final_summary.json); empty when not recorded."""
    return (run.summary or {}).get(f"{field}_by_module") or {} if field else {}


# A planted cell with a recorded recovery reads "r=<planted rank> · <recovery>"; the titles say what it is
RECOVERY_NOTES = {
    "planted_data_recovery": "r=planted rank · x.xx: data recovery, the share of ΔW_planted's effect on the "
                             "inputs that the learned update reproduces",
    "planted_subspace": "r=planted rank · x.xx: share of ΔW_planted in the learned top-r directions",
}
RECOVERY_SHORT = {"planted_data_recovery": "data recovery", "planted_subspace": "subspace"}


def draw_rank_grid(ax, final_ranks: dict[str, int], norm: Normalize, planted: dict[str, int] | None = None,
                   subspace: dict[str, float | None] | None = None):
    """Layers (rows) x matrix types (columns), colour and number = final rank; absent cells stay blank. A planted
    module (the planted task) is framed in red and reads "planted <planted rank>", or "r=<planted rank> ·
    <its recovery>" where the run recorded one (``subspace``: data recovery, or subspace recovery for older runs;
    as short, so it fits a narrow panel)."""
    layers = sorted({layer_index(m) for m in final_ranks})
    types = ordered_types(final_ranks)
    grid = np.full((len(layers), len(types)), np.nan)
    for name, rank in final_ranks.items():
        grid[layers.index(layer_index(name)), types.index(module_type(name))] = rank
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
    font = label_font_size(len(layers))
    for (row, col), value in np.ndenumerate(grid):
        if not np.isnan(value):
            # Dark text on the light (high) end of viridis, light text on the dark end.
            ax.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=font,
                    color="black" if norm(value) > 0.6 else "white")
    for name, planted_rank in (planted or {}).items():
        if name in final_ranks:
            row, col = layers.index(layer_index(name)), types.index(module_type(name))
            ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
            recovered = (subspace or {}).get(name)
            label = f"planted {planted_rank}" if recovered is None else f"r={planted_rank} · {recovered:.2f}"
            ax.text(col, row + 0.3, label, ha="center", va="center", fontsize=font * 0.8, color="red")
    ax.set_xticks(range(len(types)), types, fontsize=8)
    ax.set_yticks(range(len(layers)), [f"layer {i}" for i in layers], fontsize=font)
    ax.set_xlabel("matrix type")
    return image


# -- one run ---------------------------------------------------------------------------------------------------
def plot_rank_evolution(run: Run) -> Figure:
    phases = phases_of(run)
    steps, series = rank_series(run, phases.end)
    fig = Figure(figsize=(10, 7.5), layout="constrained")
    ax_total, ax_types = fig.subplots(2, 1, sharex=True)

    ax_total.plot(steps, np.sum(list(series.values()), axis=0), drawstyle="steps-post", lw=2, color="C0",
                  label="total rank (kept triplets)")
    if run.summary:
        ax_total.plot(*scheduled_budget(run.summary), ls="--", color="black", lw=1, label="scheduled budget (PEFT)")
    else:
        ax_total.plot([a["step"] for a in run.allocations], [a["budget"] for a in run.allocations], "k+",
                      label="budget at each allocation")
    misses = [a for a in run.allocations if not a["budget_ok"]]
    if misses:
        ax_total.plot([a["step"] for a in misses], [a["total_rank"] for a in misses], "rx", ms=9,
                      label="budget check failed")
    ax_total.set_ylabel("total rank")
    ax_total.set_title("Total rank vs scheduled budget")

    for kind in ordered_types(series):
        ranks = np.sum([r for m, r in series.items() if module_type(m) == kind], axis=0)
        ax_types.plot(steps, ranks, drawstyle="steps-post", lw=1.6, label=kind)
    ax_types.set_ylabel("rank (summed over layers)")
    ax_types.set_xlabel("optimizer step")
    ax_types.set_title("Rank per module type")

    for ax in (ax_total, ax_types):
        shade_phases(ax, phases, label=ax is ax_total)
        ax.set_xlim(0, phases.end)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right", ncol=2)
    fig.suptitle(f"Rank evolution: {title(run)}")
    return fig


def plot_signal_heatmap(run: Run) -> Figure:
    """Modules (rows, by layer then type) x allocation steps (columns), colour = the module's mean triplet score."""
    modules = sort_modules(run.scores[0]["modules"])
    steps = [r["step"] for r in run.scores]
    scores = np.array([[np.nan if r["modules"][m]["mean"] is None else r["modules"][m]["mean"] for r in run.scores]
                       for m in modules])
    fig = Figure(figsize=(max(7.0, 0.32 * len(steps) + 3.5), max(4.0, 0.15 * len(modules) + 1.8)),
                 layout="constrained")
    ax = fig.subplots()
    finite = scores[np.isfinite(scores)]
    # Signed scores (combo's z-scores) get a diverging map centred at 0; one-signed scores a sequential one.
    signed = bool(finite.size) and finite.min() < 0 < finite.max()
    image = ax.imshow(np.ma.masked_invalid(scores), aspect="auto", interpolation="nearest",
                      cmap="RdBu_r" if signed else "viridis", norm=CenteredNorm(0) if signed else None)
    font = label_font_size(len(modules))
    ax.set_yticks(range(len(modules)), [short_label(m) for m in modules], fontsize=font)
    for row in range(1, len(modules)):  # a thin line between layers keeps 72+ rows scannable
        if layer_index(modules[row]) != layer_index(modules[row - 1]):
            ax.axhline(row - 0.5, color="white", lw=0.8)
    every = max(1, len(steps) // 25)  # at most ~25 step labels, whatever the number of allocations
    ax.set_xticks(range(0, len(steps), every), [str(s) for s in steps[::every]], rotation=90, fontsize=8)
    ax.set_xlabel("allocation step")
    ax.set_ylabel("module (layer, type)")
    signal = run.scores[0].get("signal", "")
    fig.colorbar(image, ax=ax, label=f"mean triplet score ({signal})", shrink=0.8)
    ax.set_title(f"Signal scores per module: {title(run)}")
    return fig


def plot_final_rank_heatmap(run: Run) -> Figure:
    """The AdaLoRA paper's Fig. 3: final rank of every adapted matrix, layers x matrix type."""
    ranks = run.final_ranks
    layers = len({layer_index(m) for m in ranks})
    fig = Figure(figsize=(6.5, max(3.5, 0.36 * layers + 1.8)), layout="constrained")
    ax = fig.subplots()
    planted, field = planted_spec(run), recovery_field([run])
    image = draw_rank_grid(ax, ranks, Normalize(0, init_rank(run)), planted, planted_recovery_by_module(run, field))
    fig.colorbar(image, ax=ax, label="final rank")
    note = f"; red: planted modules, recall {run.summary['planted_recall']:.2f}" if planted else ""
    if planted and field and run.summary.get(field) is not None:
        note += f", {RECOVERY_SHORT[field]} {run.summary[field]:.2f}\n{RECOVERY_NOTES[field]}"
    ax.set_title(f"Final rank: {title(run)}\ntotal {sum(ranks.values())}{note}", fontsize=10)
    return fig


RUN_FIGURES = {
    "rank_evolution.png": plot_rank_evolution,
    "signal_heatmap.png": plot_signal_heatmap,
    "final_rank_heatmap.png": plot_final_rank_heatmap,
}


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path


def plot_run(run_dir: Path) -> list[Path]:
    run = load_run(run_dir)
    return [save(make(run), Path(run_dir) / name) for name, make in RUN_FIGURES.items()]


# -- comparison ------------------------------------------------------------------------------------------------
MARKERS = "os^Dv"  # distinct markers keep signals with identical values visible where their lines overlap


def plot_comparison(runs: dict[str, Run], missing: list[str] = ()) -> Figure:
    """Final-rank heatmaps side by side on one colour scale, then accuracy, the runs' progress over training
    (draw_progress: eval curves, the planted modules' rank or the training loss) and rank per layer."""
    signals = list(runs)
    fig = Figure(figsize=(max(13.0, 3.3 * len(signals)), 11), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.25, 1])
    heat_axes = np.atleast_1d(top.subplots(1, len(signals), sharey=True))
    norm = Normalize(0, max(init_rank(run) for run in runs.values()))
    field = recovery_field(runs.values())  # one measure in every panel, or the cells could not be compared
    for ax, (signal, run) in zip(heat_axes, runs.items()):
        image = draw_rank_grid(ax, run.final_ranks, norm, planted_spec(run), planted_recovery_by_module(run, field))
        ax.set_title(f"{signal}\ntotal rank {sum(run.final_ranks.values())}", fontsize=10)
    top.colorbar(image, ax=list(heat_axes), label="final rank", shrink=0.8)

    ax_acc, ax_progress, ax_layer = bottom.subplots(1, 3)
    draw_accuracy(ax_acc, runs)
    draw_progress(ax_progress, runs)
    for i, (signal, run) in enumerate(runs.items()):
        per_layer, _ = ranks_by_layer_and_type(run.final_ranks)
        layers = list(per_layer)
        ax_layer.plot(layers, list(per_layer.values()), marker=MARKERS[i % len(MARKERS)], color=f"C{i}",
                      label=signal)
    ax_layer.set_xticks(layers)
    ax_layer.set_xlabel("layer")
    ax_layer.set_ylabel("final rank (summed over matrix types)")
    ax_layer.set_title("Final rank per layer")
    ax_layer.legend(fontsize=8)
    ax_layer.grid(alpha=0.3)

    first = next(iter(runs.values()))
    heading = f"{first.task}: signals compared at seed {first.seed}"
    if missing:
        heading += f"  (no run for: {', '.join(missing)})"
    if field:
        heading += f"\nred: planted modules; {RECOVERY_NOTES[field]}"
    fig.suptitle(heading)
    return fig


def draw_accuracy(ax, runs: dict[str, Run]) -> None:
    """Final eval accuracy per signal as points (not bars: a zero-based bar axis would hide the differences)."""
    first = next(iter(runs.values()))
    sets = accuracies(first.task, first.task_dir)
    keys = [(a.field, MARKERS[i % len(MARKERS)], a.eval_set or a.name) for i, a in enumerate(sets)]
    signals = list(runs)
    for key, marker, label in keys:
        points = [(i, runs[s].summary[key]) for i, s in enumerate(signals)
                  if runs[s].summary and runs[s].summary.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker, ms=8, ls="none", label=label)
            for x, y in points:
                ax.annotate(f"{y:.4f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    for i, s in enumerate(signals):
        if not runs[s].summary:
            ax.annotate("unfinished", (i, 0.5), xycoords=("data", "axes fraction"), ha="center", color="red")
    ax.set_xticks(range(len(signals)), signals, rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(signals) - 0.5)
    metric = METRIC_LABELS.get(sets[0].name, sets[0].name)  # the task's main metric (CoLA: Matthews corr.)
    ax.set_ylabel(f"final eval {metric}")
    ax.set_title(f"{metric[0].upper()}{metric[1:]} per signal")
    if len(keys) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


PLANTED_RANK_TITLE = "Rank held by the planted modules"
TRAINING_LOSS_TITLE = "Training loss"


def draw_progress(ax, runs: dict[str, Run]) -> None:
    """The comparison's panel of how the runs went over training, from what they recorded: the eval curves where a
    run evaluated at least twice; otherwise, on the planted task, the rank the planted modules held at each step
    (did the signal keep them?); otherwise the training loss. With none of these: the final evaluation's points."""
    if any(len(steps) >= 2 for run in runs.values() for steps, _ in eval_curves(run).values()):
        draw_eval_curves(ax, runs)
    elif any(planted_spec(run) for run in runs.values()):
        draw_planted_rank(ax, runs)
    elif any(training_loss(run)[0] for run in runs.values()):
        draw_training_loss(ax, runs)
    else:
        draw_eval_curves(ax, runs)


def draw_planted_rank(ax, runs: dict[str, Run]) -> None:
    """Per signal, the rank the planted modules held together at every step, against the rank planted in them."""
    for i, (signal, run) in enumerate(runs.items()):
        if planted_spec(run):
            ax.plot(*planted_rank_series(run), drawstyle="steps-post", lw=1.8, color=f"C{i}", label=signal,
                    ls=("-", "--", ":", "-.")[i % 4])
    spec = next(planted_spec(run) for run in runs.values() if planted_spec(run))
    ax.axhline(sum(spec.values()), color="0.35", ls=":", lw=2.5, zorder=1,  # under the lines that reach it
               label=f"planted rank ({sum(spec.values())} in {len(spec)} modules)")
    shade_phases(ax, phases_of(next(iter(runs.values()))), label=False)
    label_step_axes(ax, "rank of the planted modules (summed)", PLANTED_RANK_TITLE)


def draw_training_loss(ax, runs: dict[str, Run]) -> None:
    """Per signal, the training loss at every logging step (metrics.jsonl)."""
    for i, (signal, run) in enumerate(runs.items()):
        steps, losses = training_loss(run)
        if steps:
            ax.plot(steps, losses, marker=MARKERS[i % len(MARKERS)], ms=4, color=f"C{i}", label=signal)
    label_step_axes(ax, "training loss", TRAINING_LOSS_TITLE)


def draw_eval_curves(ax, runs: dict[str, Run]) -> None:
    styles = ("-", "--", ":", "-.")  # one per eval set, in the task table's order
    for i, (signal, run) in enumerate(runs.items()):
        for j, (eval_set, (steps, values)) in enumerate(eval_curves(run).items()):
            name = f"{signal} ({eval_set})" if eval_set else signal
            ax.plot(steps, values, styles[j % len(styles)], marker=MARKERS[i % len(MARKERS)], ms=5,
                    color=f"C{i}", label=name)
    first = next(iter(runs.values()))
    main = accuracies(first.task, first.task_dir)[0].name
    metric = METRIC_LABELS.get(main, main)
    label_step_axes(ax, f"eval {metric}", f"Eval {metric} during training")


def label_step_axes(ax, ylabel: str, title: str) -> None:
    """The labels, legend and grid of a panel drawn over optimizer steps."""
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def compare_runs(output_root: str, task: str, signals: list[str], seed: int, variant: str = "") -> Path:
    dirs = {s: run_dir_for(output_root, task, s, seed, variant) for s in signals}
    present = {s: d for s, d in dirs.items() if d.is_dir()}
    if not present:
        pattern = run_dir_for(output_root, task, "<signal>", seed, variant)
        raise UsageError(f"none of {', '.join(signals)} has a run folder {pattern}; "
                         f"train them with 'adalora-ablation train --task {task} --signal SIGNAL --seed {seed}' "
                         "or fix --output-root / --seed")
    missing = [s for s in signals if s not in present]
    for s in missing:
        logger.warning(f"[plot] no run folder {dirs[s]}: {s} is left out of the comparison")
    fig = plot_comparison({s: load_run(d) for s, d in present.items()}, missing)
    out_dir = compare_dir(output_root, task)
    out_dir.mkdir(parents=True, exist_ok=True)
    return save(fig, out_dir / (f"compare_{variant}_seed{seed}.png" if variant else f"compare_seed{seed}.png"))


# -- command line ----------------------------------------------------------------------------------------------
def plot_main(argv: list[str]) -> int:
    load_signals(included_modules(argv))
    names = signal_names()
    parser = OneLineArgumentParser(
        prog="adalora-ablation plot",
        description="One run: rank_evolution.png, signal_heatmap.png, final_rank_heatmap.png in its folder. "
                    "--compare: <output-root>/<task>/compare/compare_seed<seed>.png.")
    add_include_flag(parser)
    parser.add_argument("--task", required=True, help="mnli, rte or synthetic")
    parser.add_argument("--signal", choices=names, metavar="SIGNAL",
                        help=f"the run's signal (one run): {', '.join(names)}")
    parser.add_argument("--compare", action="store_true", help="compare --signals at one seed")
    parser.add_argument("--signals", nargs="+", choices=names, metavar="SIGNAL",
                        help="with --compare (default: every signal with a run folder at --seed)")
    parser.add_argument("--seed", type=int, default=42, help="default 42 (the training default)")
    parser.add_argument("--variant", default="", help="a sweep's variant, e.g. target_r=2 (runs in "
                                                      "<task>/<signal>/<variant>/<seed>/); default: no sweep")
    parser.add_argument("--output-root", "--output_root", default="outputs",
                        help="runs are read from <output-root>/<task>/<signal>/<seed>/ (default outputs)")
    args = parser.parse_args(argv)
    if args.compare:
        if args.signal:
            raise UsageError("--signal names one run; with --compare use --signals A B ...")
        signals = args.signals or ordered_signals(
            {r.signal for r in discover(args.output_root, args.task) if r.seed == args.seed
             and r.variant == args.variant})
        if not signals:
            where = f"variant {args.variant}" if args.variant else "outside a sweep (a sweep's runs: --variant)"
            raise UsageError(f"no runs with seed {args.seed}, {where}, under {Path(args.output_root) / args.task}; "
                             "pass --signals and --seed of existing runs, or fix --output-root")
        paths = [compare_runs(args.output_root, args.task, signals, args.seed, args.variant)]
    else:
        if args.signals:
            raise UsageError("--signals is for --compare; one run needs --signal SIGNAL")
        if args.signal is None:
            raise UsageError("one run needs --signal SIGNAL (or use --compare --signals A B ...)")
        paths = plot_run(run_dir_for(args.output_root, args.task, args.signal, args.seed, args.variant))
    for path in paths:
        print(path)
    return 0
