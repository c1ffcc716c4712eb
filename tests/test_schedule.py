"""The torch-free copy of PEFT's budget schedule (used by the figures) gives PEFT's budget at every step."""

import math
from types import SimpleNamespace

import pytest
from peft.tuners.adalora.layer import RankAllocator

import yaml

from adalora_ablation.args import AdaLoraArguments, preset_path
from adalora_ablation.adalora.schedule import allocation_steps, budget_at, phase_of, schedule_warnings
from adalora_ablation.data.tasks import TASK_NAMES


@pytest.mark.parametrize("init_bgt, target_bgt, tinit, tfinal, total_step, delta_t", [
    (864, 288, 200, 200, 1560, 10),  # the RTE example of docs/outputs.md (the console)
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


def test_allocation_steps_are_the_steps_peft_masks_at():
    tinit, tfinal, delta_t, total_step = 7, 5, 3, 30
    peft = SimpleNamespace(peft_config=SimpleNamespace(tinit=tinit, tfinal=tfinal, total_step=total_step,
                                                       deltaT=delta_t), init_bgt=60, target_bgt=20)
    masked = [s for s in range(total_step - tfinal) if RankAllocator.budget_schedule(peft, s)[1]]
    assert allocation_steps(tinit, tfinal, delta_t, total_step) == masked + [total_step - tfinal]  # + the final fix


def warnings_for(tinit=200, tfinal=200, delta_t=10, total_step=1560, warmup=100, init_bgt=864, target_bgt=288):
    return schedule_warnings(tinit, tfinal, delta_t, total_step, warmup, init_bgt, target_bgt)


@pytest.mark.parametrize("schedule, fires", [
    ({"warmup": 500}, "ends after AdaLoRA starts reallocating (--tinit 200)"),
    ({"warmup": 500, "total_step": 500, "tinit": 10, "tfinal": 10}, "is as long as the run (500 steps)"),
    ({"total_step": 430, "delta_t": 50}, "shorter than the allocation interval --deltaT 50"),
    ({"total_step": 430, "delta_t": 10}, "only 3 allocation(s) while the budget falls"),
    ({"total_step": 405, "delta_t": 10}, "the whole budget cut (864 -> 288 triplets) happens in a single allocation"),
])
def test_each_schedule_warning_fires_on_a_schedule_built_for_it(schedule, fires):
    found = warnings_for(**schedule)
    assert any(fires in w for w in found), found
    assert all("--" in w for w in found)  # each says which flags to change
    assert warnings_for() == []  # the RTE example schedule of docs/outputs.md is fine


# Train rows of each task's full train split (GLUE; the synthetic task 2,000), for the presets' own lengths.
PRESET_ROWS = {"mnli": 392_702, "rte": 2_490, "cola": 8_551, "sst2": 67_349, "mrpc": 3_668, "qqp": 363_846,
               "qnli": 104_743, "stsb": 5_749, "synthetic": 2_000, "planted": 2_000}
OFFLINE_TASKS = ("synthetic", "planted")  # made up for offline runs: no paper settings to reproduce


def test_every_task_has_a_default_and_a_paper_preset():
    assert set(PRESET_ROWS) == set(TASK_NAMES)
    for task in TASK_NAMES:
        assert preset_path(task, "default").exists()
        assert task in OFFLINE_TASKS or preset_path(task, "paper").exists()


@pytest.mark.parametrize("task", list(PRESET_ROWS))
@pytest.mark.parametrize("preset", ["default", "paper"])
def test_no_preset_triggers_a_warning_at_its_own_length(task, preset):
    path = preset_path(task, preset)
    if not path.exists():
        pytest.skip(f"no {preset} preset for {task}")
    options = {**vars(AdaLoraArguments()), **yaml.safe_load(path.read_text())}
    batches = -(-PRESET_ROWS[task] // options["per_device_train_batch_size"])
    total_step = options.get("max_steps") or batches * options["num_train_epochs"]
    modules = 72
    found = schedule_warnings(options["tinit"], options["tfinal"], options["deltaT"], total_step,
                              options.get("warmup_steps") or math.ceil(options["warmup_ratio"] * total_step),
                              options["init_r"] * modules, options["target_r"] * modules)
    assert options["tinit"] < total_step - options["tfinal"]  # a possible schedule (check_schedule's condition)
    assert found == [], found
