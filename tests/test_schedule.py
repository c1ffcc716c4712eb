"""The torch-free copy of PEFT's budget schedule (used by the figures) gives PEFT's budget at every step."""

from types import SimpleNamespace

import pytest
from peft.tuners.adalora.layer import RankAllocator

from adalora_ablation.schedule import budget_at, phase_of


@pytest.mark.parametrize("init_bgt, target_bgt, tinit, tfinal, total_step, delta_t", [
    (864, 288, 200, 200, 1560, 10),  # the README's RTE example
    (96, 48, 50, 80, 300, 10),  # the demo
    (72, 24, 4, 6, 24, 2),
    (10, 1, 0, 0, 7, 1),
    (6912, 2304, 8000, 50000, 85904, 100),  # MNLI, paper preset
])
def test_budget_matches_peft_at_every_step(init_bgt, target_bgt, tinit, tfinal, total_step, delta_t):
    peft = SimpleNamespace(peft_config=SimpleNamespace(tinit=tinit, tfinal=tfinal, total_step=total_step,
                                                       deltaT=delta_t),
                           init_bgt=init_bgt, target_bgt=target_bgt)
    for step in range(total_step + 2):
        expected = RankAllocator.budget_schedule(peft, step)[0]
        assert budget_at(step, init_bgt, target_bgt, tinit, tfinal, total_step) == expected, step


def test_phases():
    assert [phase_of(s, tinit=2, tfinal=3, total_step=10) for s in range(10)] == [
        "warmup", "warmup", "warmup", "reduction", "reduction", "reduction", "reduction", "final", "final", "final"]
