"""PEFT's AdaLoRA budget schedule as plain arithmetic, for code that must not load torch or peft (the figures).

Training itself runs PEFT's own ``RankAllocator.budget_schedule``; tests/test_schedule.py checks that this copy
gives the same budget at every step.
"""

from __future__ import annotations


def budget_at(step: int, init_bgt: int, target_bgt: int, tinit: int, tfinal: int, total_step: int) -> int:
    """The budget at a 0-based optimizer step: init_bgt through warm-up (step <= tinit), then PEFT's cubic fall to
    target_bgt, which holds for the last tfinal steps."""
    if step <= tinit:
        return init_bgt
    if step > total_step - tfinal:
        return target_bgt
    mul_coeff = 1 - (step - tinit) / (total_step - tfinal - tinit)
    return int((init_bgt - target_bgt) * (mul_coeff**3) + target_bgt)


def phase_of(step: int, tinit: int, tfinal: int, total_step: int) -> str:
    """warmup, reduction, or final (from the step that fixes the final budget, total_step - tfinal, on)."""
    if step <= tinit:
        return "warmup"
    return "final" if step >= total_step - tfinal else "reduction"


HANDFUL = 5  # fewer allocations than this while the budget falls: signals barely get to disagree


def allocation_steps(tinit: int, tfinal: int, deltaT: int, total_step: int) -> list[int]:
    """The 0-based steps at which PEFT re-masks: every step divisible by deltaT strictly between tinit and
    total_step - tfinal, then total_step - tfinal itself, which fixes the final budget."""
    end = total_step - tfinal
    return [s for s in range(tinit + 1, end) if s % deltaT == 0] + [end]


def schedule_warnings(tinit: int, tfinal: int, deltaT: int, total_step: int, warmup_steps: int,
                      init_bgt: int, target_bgt: int) -> list[str]:
    """Schedules that starve or void a signal comparison, one line each saying which flags to change. The run
    proceeds; the presets trigger none of them at their own lengths."""
    end = total_step - tfinal
    steps = allocation_steps(tinit, tfinal, deltaT, total_step)
    out = []
    if warmup_steps >= total_step:
        out.append(f"the learning-rate warm-up ({warmup_steps} steps) is as long as the run ({total_step} steps): "
                   f"the learning rate never peaks and the adapters may stay near zero; lower --warmup-steps or "
                   f"train longer (--max-steps / --num-train-epochs)")
    elif warmup_steps > tinit:
        out.append(f"the learning-rate warm-up ({warmup_steps} steps) ends after AdaLoRA starts reallocating "
                   f"(--tinit {tinit}): the first allocations score adapters that have barely trained; lower "
                   f"--warmup-steps or raise --tinit")
    if end - tinit < deltaT:
        out.append(f"the budget-reduction phase (steps {tinit}..{end}, {end - tinit} steps) is shorter than the "
                   f"allocation interval --deltaT {deltaT}; lower --deltaT, --tinit or --tfinal, or train longer")
    if len(steps) < HANDFUL:
        out.append(f"only {len(steps)} allocation(s) while the budget falls (steps {tinit}..{end}, one every "
                   f"{deltaT}): too few for the signals to differ; lower --deltaT, --tinit or --tfinal, or train "
                   f"longer")
    first = budget_at(steps[0], init_bgt, target_bgt, tinit, tfinal, total_step)
    if init_bgt > target_bgt and first == target_bgt:
        out.append(f"the whole budget cut ({init_bgt} -> {target_bgt} triplets) happens in a single allocation at "
                   f"step {steps[0]}; lower --deltaT or --tinit/--tfinal, or train longer, for a gradual schedule")
    return out
