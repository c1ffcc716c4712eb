"""Run folders as `train` writes them, without training: the report, statistics, suite and figure tests read these.

Every file name and writer is run/folder.py's own (write_summary, append_jsonl, the file-name constants), and the
allocation records follow PEFT's schedule (adalora/schedule.py: the steps it re-masks at and the budget at each), so
a crafted folder is what a real run of the same schedule leaves: final_summary.json, metrics.jsonl (training loss
lines, evaluations, the Trainer's closing line and the final evaluation), rank_pattern.jsonl and signal_scores.jsonl
(one line per allocation, each keeping exactly its budget). The end-to-end tests marked `slow` (test_report.py,
test_plots.py) keep checking that real runs write the same fields.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from adalora_ablation.adalora.schedule import allocation_steps, budget_at, phase_of
from adalora_ablation.run.folder import (
    METRICS, RANK_PATTERN, SIGNAL_SCORES, append_jsonl, run_dir_for, write_summary,
)

# tiny-deberta's adapted modules (2 layers, hidden 64, FFN 128) and their (in, out) shapes, as its summaries record
TINY_DEBERTA = {f"layer.{layer}.{suffix}": shape for layer in range(2) for suffix, shape in (
    ("attention.self.query_proj", (64, 64)), ("attention.self.key_proj", (64, 64)),
    ("attention.self.value_proj", (64, 64)), ("attention.output.dense", (64, 64)),
    ("intermediate.dense", (64, 128)), ("output.dense", (128, 64)))}


@dataclass(frozen=True)
class Schedule:
    """AdaLoRA's schedule of a run (its --init-r, --target-r, --tinit, --tfinal, --deltaT and steps)."""

    init_r: int = 8
    target_r: int = 4
    tinit: int = 10
    tfinal: int = 20
    deltaT: int = 5
    total_step: int = 60
    modules: dict = field(default_factory=lambda: dict(TINY_DEBERTA))
    target_total: int | None = None  # a final budget other than target_r per module (crafted final patterns)

    @property
    def initial_budget(self) -> int:
        return self.init_r * len(self.modules)

    @property
    def target_budget(self) -> int:
        return self.target_r * len(self.modules) if self.target_total is None else self.target_total

    def budget(self, step: int) -> int:
        return budget_at(step, self.initial_budget, self.target_budget, self.tinit, self.tfinal, self.total_step)

    def steps(self) -> list[int]:
        return allocation_steps(self.tinit, self.tfinal, self.deltaT, self.total_step)


def keep_top(scores: dict[str, list[float]], budget: int) -> dict[str, list[int]]:
    """The kept mask of the `budget` highest-scored triplets (ties by module order, then index), as a mask to
    budget keeps them."""
    order = sorted(((s, m, i) for m, row in scores.items() for i, s in enumerate(row)), key=lambda t: -t[0])
    kept = {m: [0] * len(row) for m, row in scores.items()}
    for _, m, i in order[:budget]:
        kept[m][i] = 1
    return kept


def drawn_scores(signal: str, seed: int, schedule: Schedule, noise: float = 0.5, offset=None):
    """Per allocation step, a score for every triplet: a per-run base (so runs of one signal differ) plus noise
    drawn at each step (so triplets are masked and revived as a real signal's scores move); ``offset``: module
    name -> a shift of its triplets' scores (a signal that favours some modules)."""
    rng = random.Random(f"{signal}/{seed}")
    base = {m: [rng.gauss(0, 1) + (offset(m) if offset else 0.0) for _ in range(schedule.init_r)]
            for m in schedule.modules}
    return {step: {m: [b + rng.gauss(0, noise) for b in row] for m, row in base.items()}
            for step in schedule.steps()}


def write_run(root: str | Path, task: str, signal: str, seed: int, metrics: dict[str, float], *,
              variant: str = "", schedule: Schedule | None = None, kept: dict[int, dict[str, list[int]]] | None = None,
              eval_steps: int | None = 20, logging_steps: int = 10, finished: bool = True,
              summary: dict | None = None, drop: tuple[str, ...] = (), score_offset=None) -> Path:
    """One run folder under <root>/<task>/<signal>/[<variant>/]<seed>. ``metrics``: the final evaluation's summary
    fields (eval_accuracy, ...), logged as the Trainer logs them; ``kept``: step -> kept mask per module at each
    allocation step (default: the top triplets of drawn_scores, shifted by ``score_offset``); ``eval_steps``: None
    for a run that evaluates only after training; ``finished``: False leaves no final_summary.json (a run stopped
    after its allocations); ``summary``: fields added to (or replacing) the summary's; ``drop``: fields an older
    summary lacks."""
    schedule = schedule or Schedule()
    run_dir = run_dir_for(root, task, signal, seed, variant)
    run_dir.mkdir(parents=True)
    scores = drawn_scores(signal, seed, schedule, offset=score_offset)
    kept = kept or {step: keep_top(scores[step], schedule.budget(step)) for step in schedule.steps()}
    steps_per_epoch = 20
    last_kept = None
    for step, masks in sorted(kept.items()):
        ranks = {m: sum(row) for m, row in masks.items()}
        budget = schedule.budget(step)
        common = {"step": step, "epoch": step / steps_per_epoch, "phase": phase_of(step, schedule.tinit,
                                                                                  schedule.tfinal, schedule.total_step)}
        append_jsonl(run_dir / RANK_PATTERN, {
            **common, "budget": budget, "total_rank": sum(ranks.values()), "budget_ok": sum(ranks.values()) == budget,
            "nonfinite_steps": 0, "score_updates": min(step + 1, schedule.total_step - schedule.tfinal),
            "ranks": ranks, "kept": masks})
        step_scores = scores.get(step) or {m: [float(k) for k in row] for m, row in masks.items()}
        append_jsonl(run_dir / SIGNAL_SCORES, {**common, "signal": signal, "modules": {
            m: {"sum": sum(row), "mean": sum(row) / len(row), "min": min(row), "max": max(row)}
            for m, row in step_scores.items()}})
        last_kept = masks
    total = schedule.total_step
    for step in range(logging_steps, total + 1, logging_steps):
        append_jsonl(run_dir / METRICS, {"step": step, "loss": 2.0 - step / total, "grad_norm": 1.0,
                                         "learning_rate": 2e-3 * (1 - step / total), "epoch": step / steps_per_epoch})
        if eval_steps and step % eval_steps == 0:
            append_jsonl(run_dir / METRICS, {"step": step, "eval_loss": 1.0, **_eval_fields(metrics, step / total),
                                             "epoch": step / steps_per_epoch})
    if not finished:
        return run_dir
    append_jsonl(run_dir / METRICS, {"step": total, "train_runtime": 1.0, "train_loss": 1.5,
                                     "epoch": total / steps_per_epoch})
    append_jsonl(run_dir / METRICS, {"step": total, "eval_loss": 1.0, **_eval_fields(metrics, 1.0),
                                     "epoch": total / steps_per_epoch})
    final_ranks = {m: sum(row) for m, row in last_kept.items()}
    fields = {
        "task": task, "synthetic": task == "synthetic", "signal": signal, "seed": seed, "variant": variant,
        "model": "tiny-deberta", **metrics, "eval_metrics": {"eval_loss": 1.0, **metrics}, "train_loss": 1.5,
        "total_step": total, "total_rank": sum(final_ranks.values()), "target_budget": schedule.target_budget,
        "initial_budget": schedule.initial_budget,
        "budget_check_passed": sum(final_ranks.values()) == schedule.target_budget,
        "allocations": len(kept), "nonfinite_steps": 0, "scaler_skipped_steps": 0, "final_ranks": final_ranks,
        "module_shapes": {m: list(s) for m, s in schedule.modules.items()}, "resumed_from": None,
        "config": {"run": {"task": task, "signal": signal, "variant": variant},
                   "adalora": {"init_r": schedule.init_r, "target_r": schedule.target_r, "tinit": schedule.tinit,
                               "tfinal": schedule.tfinal, "deltaT": schedule.deltaT},
                   "training": {"seed": seed, "max_steps": total}},
        **(summary or {})}
    write_summary(run_dir, {k: v for k, v in fields.items() if k not in drop})
    return run_dir


def _eval_fields(metrics: dict[str, float], progress: float) -> dict[str, float]:
    """An evaluation during training: the final values, approached as training goes on."""
    return {k: v * (0.5 + 0.5 * progress) for k, v in metrics.items() if k.startswith("eval_")}


# -- the report's crafted runs: one allocation (the final one) with a chosen final pattern ------------------------
LAYERS = 2
MODULE_SHAPES = {}  # MiniLM's per-layer matrices: attention 384x384, FFN 384x1536 and 1536x384
for _layer in range(LAYERS):
    for _suffix, _shape in (("attention.self.query", (384, 384)), ("attention.self.key", (384, 384)),
                            ("attention.self.value", (384, 384)), ("attention.output.dense", (384, 384)),
                            ("intermediate.dense", (384, 1536)), ("output.dense", (1536, 384))):
        MODULE_SHAPES[f"layer.{_layer}.{_suffix}"] = _shape
INIT_R = 12


def by_layer(name):  # unrelated to size: every layer holds every matrix type
    return 2 + 4 * int(name.split(".")[1])


def craft(root, accuracies, task="rte", effects=None, allocate=None, shapes=True, mismatched=None, variant="",
          metric="eval_accuracy"):
    """Finished runs of MiniLM's module names and shapes, each with one allocation record (the final budget's) of
    the rank pattern ``allocate`` (signal -> module name -> rank; default by_layer); seed i + 1 holds the i-th
    value, and a None value is a seed without a run. ``effects``: signal -> per-seed adapter effects (absent: an
    older run without the field); ``mismatched``: signal -> per-seed MNLI mismatched accuracies; ``shapes``: False
    for an older summary without module_shapes; ``variant``: a sweep's variant folder; ``metric``: the summary
    field of the main metric."""
    effects, allocate, mismatched = effects or {}, allocate or {}, mismatched or {}
    for signal, values in accuracies.items():
        for seed, accuracy in enumerate(values, start=1):
            if accuracy is None:
                continue
            ranks = {m: allocate.get(signal, by_layer)(m) for m in MODULE_SHAPES}
            schedule = Schedule(init_r=INIT_R, modules=MODULE_SHAPES, target_total=sum(ranks.values()))
            final_step = schedule.steps()[-1]
            metrics = {metric: accuracy}
            if signal in mismatched:
                metrics["eval_accuracy_mm"] = mismatched[signal][seed - 1]
            extra = {}
            if signal in effects:
                extra["adapter_effect"] = effects[signal][seed - 1]
                extra["eval_accuracy_without_adapters"] = accuracy - effects[signal][seed - 1]
            final = {m: [int(i < r) for i in range(INIT_R)] for m, r in ranks.items()}
            write_run(root, task, signal, seed, metrics, variant=variant, schedule=schedule, kept={final_step: final},
                      summary=extra, drop=() if shapes else ("module_shapes",))
    return root
