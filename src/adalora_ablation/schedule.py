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
