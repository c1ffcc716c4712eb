"""The Trainer hook: one AdaLoRA update per optimizer step, and the run's logs.

Each allocation goes to rank_pattern.jsonl and signal_scores.jsonl, to the console, and into the Trainer's own log
stream (budget, total rank, rank per layer and per matrix type, under ``adalora/``), so that ``--report-to
tensorboard`` or ``wandb`` show the rank curves. metrics.jsonl keeps the Trainer's own lines only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import torch
from torch.amp.grad_scaler import OptState
from transformers import TrainerCallback

from .allocator import SignalRankAllocator
from ..logs import ALLOCATION_LOG_PREFIX
from .recovery import recovery_fields
from ..data.planted_spec import planted_recovery
from ..module_names import ranks_by_layer_and_type
from ..run.resume import run_settings, settings_difference
from ..run.folder import METRICS, RANK_PATTERN, SIGNAL_SCORES, append_jsonl
from .schedule import phase_of

logger = logging.getLogger(__name__)
# ALLOCATION_LOG_PREFIX (logs.py): allocation scalars in the Trainer's log stream (not in metrics.jsonl, not on
# the console)
# What the summary's budget_check_passed checked (its budget_check field):
EXACT_BUDGET_CHECK = "exact budget: every allocation kept exactly its scheduled budget, the last the target budget"
FIXED_PATTERN_CHECK = ("fixed pattern: every allocation kept exactly the fixed pattern (the scheduled budget does not "
                       "apply), re-applied after every optimizer step; the final weights hold nothing outside it")


def describe_schedule(allocator: SignalRankAllocator) -> str:
    cfg = allocator.peft_config
    final_start = cfg.total_step - cfg.tfinal
    return (
        f"[AdaLoRA schedule] {allocator.layout.num_modules} modules x init_r {allocator.layout.r}: "
        f"warm-up until step {cfg.tinit}; budget falls from {allocator.init_bgt} to {allocator.target_bgt} "
        f"between steps {cfg.tinit} and {final_start} with an allocation every {cfg.deltaT} steps; fixed at "
        f"{allocator.target_bgt} for the last {cfg.tfinal} steps ({final_start}..{cfg.total_step - 1}); "
        f"total_step={cfg.total_step}; signal={allocator.signal_name}"
    )


def allocation_scalars(budget: int, ranks: dict[str, int]) -> dict[str, int]:
    """What --report-to integrations plot at each allocation: budget, total rank, rank per layer and per type."""
    per_layer, per_type = ranks_by_layer_and_type(ranks)
    return {
        f"{ALLOCATION_LOG_PREFIX}budget": budget,
        f"{ALLOCATION_LOG_PREFIX}total_rank": sum(ranks.values()),
        **{f"{ALLOCATION_LOG_PREFIX}rank_layer_{layer}": rank for layer, rank in per_layer.items()},
        **{f"{ALLOCATION_LOG_PREFIX}rank_{kind}": rank for kind, rank in per_type.items()},
    }


def score_aggregates(stats: list[tuple[float, float, float, float]], names: list[str]) -> dict[str, dict[str, float]]:
    """Per-module sum/mean/min/max of its triplet scores, from the allocator's host-side statistics."""
    return {n: {"sum": a, "mean": b, "min": c, "max": d} for n, (a, b, c, d) in zip(names, stats)}


class AdaLoraCallback(TrainerCallback):
    def __init__(self, peft_model, allocator: SignalRankAllocator, run_dir: Path, write_files: bool,
                 planted_answer=None):
        self.peft_model = peft_model
        self.planted_answer = planted_answer  # the planted task's ΔW and module inputs (data/planted.PlantedAnswer)
        self.allocator = allocator
        self.run_dir = Path(run_dir)
        self.write_files = write_files
        self.ranks = [allocator.layout.r] * allocator.layout.num_modules
        self.allocations = 0
        self.budget_violations = 0
        self.trainer = None  # set by train.py: its log stream, and its scaler (fp16 steps the scaler skipped)
        self.pending_resume: dict | None = None  # state from a checkpoint, applied once its weights are loaded
        self.mask_digests: list[str] = []
        self.scaler_skipped_steps = 0
        self._scaler_found_inf = None

    # -- resume ------------------------------------------------------------------------------------------------
    def resume_state(self) -> dict:
        """Everything besides weights/optimizer that a checkpoint needs to continue bit for bit."""
        adapter = self.peft_model.base_model.trainable_adapter_name
        return {
            "allocator": self.allocator.state_dict(),
            "rank_pattern": self.peft_model.peft_config[adapter].rank_pattern,
            "ranks": list(self.ranks), "allocations": self.allocations, "budget_violations": self.budget_violations,
            "scaler_skipped_steps": self.scaler_skipped_steps,
            "settings": run_settings(self.allocator.layout.device),
            "signal_config": dataclasses.asdict(self.allocator.signal_config),
        }

    def _apply_resume_state(self, state: dict) -> None:
        adapter = self.peft_model.base_model.trainable_adapter_name
        self.allocator.load_state_dict(state["allocator"])
        # Set only now: had it been set before the Trainer loaded the checkpoint, PEFT would have pruned the
        # adapters to it while loading.
        self.peft_model.peft_config[adapter].rank_pattern = state["rank_pattern"]
        self.ranks = list(state["ranks"])
        self.allocations, self.budget_violations = state["allocations"], state["budget_violations"]
        self.scaler_skipped_steps = state["scaler_skipped_steps"]
        difference = settings_difference(state.get("settings"), run_settings(self.allocator.layout.device))
        if difference:
            logger.warning(difference)

    # -- Trainer events ------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        total_step = self.allocator.peft_config.total_step
        if state.max_steps != total_step:
            raise RuntimeError(
                f"AdaLoRA total_step={total_step} but the Trainer will take {state.max_steps} optimizer steps; "
                "the budget schedule would be wrong (please report this with your arguments)"
            )
        logger.info(describe_schedule(self.allocator))
        if self.pending_resume is not None:
            self._apply_resume_state(self.pending_resume)
            self.pending_resume = None
            logger.info(f"[run] resumed at step {state.global_step} with the allocator state of that checkpoint")
        self.allocator.hold_fixed_pattern()  # a fixed pattern holds before the first optimizer step too

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._scaler_found_inf = self._unscale_and_check_overflow()

    def _unscale_and_check_overflow(self):
        """With fp16 loss scaling: unscale the gradients now (the Trainer only does so when it clips), so that the
        allocator reads true gradients, and return the scaler's inf/NaN verdict for this step (None: no scaler).

        We read the verdict from the scaler itself: accelerate's optimizer_step_was_skipped misses the skip when the
        optimizer handles scaling inside its step (fused AdamW, the Trainer's default)."""
        accelerator = getattr(self.trainer, "accelerator", None)
        scaler = getattr(accelerator, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            return None
        optimizer = self.trainer.optimizer
        while hasattr(optimizer, "optimizer"):  # accelerate wraps the torch optimizer
            optimizer = optimizer.optimizer
        opt_state = scaler._per_optimizer_states[id(optimizer)]
        if opt_state["stage"] is OptState.READY:
            scaler.unscale_(optimizer)
        found = list(opt_state["found_inf_per_device"].values())
        return torch.stack([f.to(found[0].device) for f in found]).sum() > 0 if found else None

    def on_optimizer_step(self, args, state, control, **kwargs):
        # Called after optimizer.step() and before zero_grad(), once per optimizer step (not per micro-batch).
        # state.global_step is still the 0-based index of this step, which is what PEFT expects.
        step = state.global_step
        cfg = self.allocator.peft_config
        if self._scaler_found_inf is not None and bool(self._scaler_found_inf):
            # The fp16 scaler found inf/NaN and skipped the step: the weights did not move, so neither do the EMAs
            # or the masks. The one exception is the step that fixes the final budget, which must happen once.
            self.scaler_skipped_steps += 1
            if step != cfg.total_step - cfg.tfinal:
                return
        self.peft_model.base_model.update_and_allocate(step)
        allocation, self.allocator.last_allocation = self.allocator.last_allocation, None
        if allocation is not None:
            self._record_allocation(step, state.epoch, allocation)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Allocation scalars are in rank_pattern.jsonl already; metrics.jsonl keeps the Trainer's own lines.
        if self.write_files and logs and not any(k.startswith(ALLOCATION_LOG_PREFIX) for k in logs):
            append_jsonl(self.run_dir / METRICS, {"step": state.global_step, **logs})

    # -- the budget check ----------------------------------------------------------------------------------------
    def budget_check(self) -> dict:
        """The summary's budget_check_passed and budget_check (what was checked). Normally: every allocation kept
        exactly its scheduled budget and the final total is the target budget. With a fixed pattern (oracle_fixed),
        whose total is the pattern's and not the budget: every allocation kept exactly the pattern, the final ranks
        are its ranks, and no E entry outside it is nonzero in the final weights."""
        fixed = self.allocator.fixed_kept
        if fixed is None:
            passed = self.budget_violations == 0 and sum(self.ranks) == self.allocator.target_bgt
            return {"budget_check_passed": passed, "budget_check": EXACT_BUDGET_CHECK}
        passed = (self.allocations > 0 and self.budget_violations == 0 and self.ranks == [sum(r) for r in fixed]
                  and self.allocator.outside_fixed_pattern() == 0)
        return {"budget_check_passed": passed, "budget_check": FIXED_PATTERN_CHECK}

    # -- allocation records --------------------------------------------------------------------------------------
    def _planted_recovery(self, ranks: dict[str, int]) -> dict:
        """On the planted task, recall and share at this allocation (when did the signal find the planted modules?)
        and how much of the planted updates the adapters hold now (did they learn the planted directions?)."""
        planted = self.allocator.signal_config.planted
        if not planted:
            return {}
        learned = recovery_fields(self.peft_model, self.planted_answer, planted) if self.planted_answer else {}
        return {**planted_recovery(ranks, planted), **learned}

    def _record_allocation(self, step: int, epoch, allocation: dict) -> None:
        # Everything here is on the host already: the allocator fetched it with one transfer.
        layout = self.allocator.layout
        cfg = self.allocator.peft_config
        kept = allocation["kept"]
        new_ranks = [sum(row) for row in kept]
        total_rank = sum(new_ranks)
        budget = allocation["budget"]
        fixed = self.allocator.fixed_kept
        ok = total_rank == budget if fixed is None else kept == fixed
        self.allocations += 1
        self.budget_violations += not ok
        active = sum(r > 0 for r in new_ranks)
        logger.info(f"[AdaLoRA Update] Step {step}: Total budget={budget}, Active modules={active}")
        for name, old, new in zip(layout.names, self.ranks, new_ranks):
            if old != new:
                logger.info(f"  {name}: rank {old} -> {new}")
        if fixed is None:
            logger.info(f"[AdaLoRA Update] Budget check: kept {total_rank} triplets, budget {budget}: "
                        f"{'OK' if ok else 'MISMATCH'}")
        else:
            logger.info(f"[AdaLoRA Update] Fixed-pattern check: kept {total_rank} triplets, the fixed pattern's "
                        f"(the scheduled budget {budget} does not apply): {'OK' if ok else 'MISMATCH'}")
        self.ranks = new_ranks
        # A digest of the mask per allocation lets multi-process runs prove every rank pruned the same triplets
        # (the bytes of the bool mask: one 0/1 byte per triplet, module by module).
        self.mask_digests.append(hashlib.sha256(bytes(k for row in kept for k in row)).hexdigest()[:16])
        if self.trainer is not None and reports_somewhere(self.trainer.args):
            # for TensorBoard & co., logged at this (0-based) step like the jsonl records; without an integration
            # there is nowhere to send them (the console shows the lines above instead: run/console.py skips them)
            self.trainer.log(allocation_scalars(budget, dict(zip(layout.names, new_ranks))))
        if not self.write_files:
            return
        common = {"step": step, "epoch": epoch, "phase": phase_of(step, cfg.tinit, cfg.tfinal, cfg.total_step)}
        append_jsonl(self.run_dir / RANK_PATTERN, {
            **common, "budget": budget, "total_rank": total_rank, "budget_ok": ok,
            "nonfinite_steps": allocation["nonfinite_steps"], "score_updates": allocation["steps_seen"],
            "ranks": dict(zip(layout.names, new_ranks)),
            "kept": {n: [int(k) for k in row] for n, row in zip(layout.names, kept)},
            **({} if fixed is None else {"check": "fixed pattern"}),  # then budget_ok says: the pattern was kept
            **self._planted_recovery(dict(zip(layout.names, new_ranks))),
        })
        stats = allocation["stats"]
        append_jsonl(self.run_dir / SIGNAL_SCORES, {
            **common, "signal": self.allocator.signal_name,
            "modules": score_aggregates(stats[""], layout.names),
            "parts": {part: score_aggregates(s, layout.names) for part, s in stats.items() if part},
        })


def reports_somewhere(args) -> bool:
    """Whether the Trainer sends its logs to an integration (--report-to other than none)."""
    report_to = args.report_to
    if isinstance(report_to, str):
        report_to = [report_to]
    return any(r not in (None, "none") for r in report_to or [])
