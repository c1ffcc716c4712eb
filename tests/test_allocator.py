"""The allocator: PEFT-identical for baseline_adalora, exact budget for every signal, ties, NaN steps."""

import pytest
import torch
from peft.tuners.adalora.layer import RankAllocator

from adalora_ablation.adalora.allocator import SignalRankAllocator, install_allocator, keep_top_k
from adalora_ablation.signals import SIGNALS, SignalConfig

from conftest import tiny_adalora

# A short schedule that still has every phase: warm-up to step 4, an allocation every 2 steps (6, 8, .., 24: ten of
# them, the budget falling), then 6 steps of the final phase, where the fixed mask is re-applied every step.
TOTAL, TINIT, TFINAL, DELTA_T = 30, 4, 6, 2
BUDGETED = sorted(name for name, info in SIGNALS.items() if not info.fixed_pattern)  # oracle_fixed keeps a pattern


def test_the_budget_test_covers_every_budgeted_signal():
    """test_reference_signals.py trains one signal end to end; the exact budget of all the others rests on
    test_every_signal_keeps_exactly_the_scheduled_budget_on_either_path, so it must see every signal that allocates
    a budget."""
    assert {"baseline_adalora", "importance_only", "plasticity_only", "combo", "singular_value", "sensitivity_only",
            "sensitivity_snr", "fisher", "component_norm", "plasticity_rms", "random", "uniform"} <= set(BUDGETED)


def tiny_model():
    return tiny_adalora(total_step=TOTAL, tinit=TINIT, tfinal=TFINAL, deltaT=DELTA_T)


def train_loop(peft_model, steps=TOTAL, zero_lora_grads=False, nan_at=()):
    """A plain PEFT AdaLoRA loop (the one PEFT documents); returns the rank pattern after every step."""
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(5)
    patterns = []
    for step in range(steps):
        x, y = torch.randint(5, 100, (8, 12), generator=g), torch.randint(0, 2, (8,), generator=g)
        peft_model(input_ids=x, labels=y).loss.backward()
        lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
        if zero_lora_grads:
            for p in lora:
                p.grad.zero_()
        if step in nan_at:
            lora[0].grad.view(-1)[0] = float("nan")  # as after an fp16 overflow: the scaler skips that step
        else:
            opt.step()
        peft_model.base_model.update_and_allocate(step)
        rp = peft_model.peft_config["default"].rank_pattern
        patterns.append(None if rp is None else {k: list(v) for k, v in rp.items()})
        opt.zero_grad()
    return patterns


def total_rank(pattern):
    return sum(sum(v) for v in pattern.values())


def test_baseline_matches_plain_peft_at_every_allocation():
    plain = train_loop(tiny_model())
    model = tiny_model()
    allocator = install_allocator(model, "baseline_adalora", SignalConfig())
    ours = train_loop(model)
    allocation_steps = [s for s in range(TINIT + 1, TOTAL - TFINAL + 1) if s % DELTA_T == 0 or s == TOTAL - TFINAL]
    assert len(allocation_steps) >= 10
    # Ranks really moved, so the comparison is not vacuous, and every pattern (and the training it drives) agrees.
    first = allocation_steps[0]
    assert plain[first - 1] is None and 24 < total_rank(plain[first]) < 72
    assert total_rank(plain[-1]) == allocator.target_bgt == 24
    assert ours == plain
    assert isinstance(model.base_model.rankallocator, RankAllocator)


def recorded_run(signal, accelerator_path):
    """One run of PEFT's loop (a NaN gradient at step 3, in the warm-up) with the allocator on the given path;
    returns (model, allocator, rank pattern after every step, (budget, rank kept, score statistics) at every
    allocation)."""
    model = tiny_model()
    allocator = install_allocator(model, signal, SignalConfig())
    allocator.layout.accelerator_path = accelerator_path
    allocations = []
    original = allocator.mask_to_budget

    def recording(m, budget):
        pattern = original(m, budget)
        allocations.append((budget, total_rank(pattern), allocator.last_allocation["stats"]))
        return pattern

    allocator.mask_to_budget = recording
    return model, allocator, train_loop(model, nan_at=(3,)), allocations


@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_every_signal_keeps_exactly_the_scheduled_budget_on_either_path(signal):
    """Every signal that allocates a budget keeps exactly the scheduled budget at every allocation; the path a GPU
    takes (one chunk, finite flag on the device, gather-based triplet sums, no host reads), run on CPU, allocates
    as the CPU path does: the same rank pattern at every step, the same score statistics (equal up to float
    rounding), the same count of skipped steps."""
    runs = {path: recorded_run(signal, path) for path in (False, True)}
    if signal in BUDGETED:
        for model, allocator, patterns, allocations in runs.values():
            budgets = [(budget, kept) for budget, kept, _ in allocations]
            assert len(budgets) >= 10 and all(b == kept for b, kept in budgets)
            assert budgets[0][0] > budgets[-1][0] == allocator.target_bgt
            assert total_rank(patterns[-1]) == allocator.target_bgt
            # In the final phase the fixed mask is re-applied every step: masked E entries stay exactly zero.
            for key, keep in patterns[-1].items():
                e = dict(model.base_model.model.named_parameters())[key]
                assert torch.all(e.detach().view(-1)[~torch.tensor(keep)] == 0)
    (_, cpu_allocator, cpu, cpu_allocations), (_, accelerator_allocator, accelerator, accelerator_allocations) = \
        runs[False], runs[True]
    assert accelerator == cpu and len(cpu_allocations) >= 5
    assert int(accelerator_allocator.nonfinite_steps) == int(cpu_allocator.nonfinite_steps) == 1
    for (_, _, cpu_stats), (_, _, accelerator_stats) in zip(cpu_allocations, accelerator_allocations):
        assert cpu_stats.keys() == accelerator_stats.keys()
        for part in cpu_stats:
            torch.testing.assert_close(torch.tensor(accelerator_stats[part]), torch.tensor(cpu_stats[part]),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("signal", BUDGETED)
def test_ties_from_zero_gradients_still_keep_exactly_the_budget(signal):
    """With all adapter gradients zero every score ties; PEFT's `<= threshold` would prune everything."""
    model = tiny_model()
    install_allocator(model, signal, SignalConfig())
    second_allocation = 8  # allocations happen at multiples of deltaT after tinit: 6, 8, ...
    patterns = train_loop(model, steps=second_allocation + 1, zero_lora_grads=True)
    kept = total_rank(patterns[-1])
    budget = model.base_model.rankallocator.budget_schedule(second_allocation)[0]
    assert kept == budget and 0 < kept < 72


def test_a_fixed_pattern_holds_at_every_step_whatever_the_budget():
    """oracle_fixed: from the first step to the last, E is zero outside the planted pattern; every allocation keeps
    exactly the pattern while the scheduled budget falls."""
    model = tiny_model()
    layout_names = install_allocator(model, "baseline_adalora", SignalConfig()).layout.names
    spec = {layout_names[1]: 4, layout_names[8]: 2}
    model = tiny_model()
    allocator = install_allocator(model, "oracle_fixed", SignalConfig(planted=spec))
    pattern = torch.tensor([[j < spec.get(name, 0) for j in range(6)] for name in layout_names])
    budgets = []
    original = allocator.mask_to_budget

    def recording(m, budget):
        kept = original(m, budget)
        budgets.append((budget, [kept[allocator.layout.e_key(i)] for i in range(len(layout_names))]))
        return kept

    allocator.mask_to_budget = recording
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(5)
    allocator.hold_fixed_pattern()  # what the training callback does before the first step
    moved_outside = 0
    for step in range(TOTAL):
        x, y = torch.randint(5, 100, (8, 12), generator=g), torch.randint(0, 2, (8,), generator=g)
        model(input_ids=x, labels=y).loss.backward()
        opt.step()
        moved_outside += bool(torch.stack(allocator.layout.E).view(pattern.shape)[~pattern].any())
        model.base_model.update_and_allocate(step)
        held = torch.stack(allocator.layout.E).view(pattern.shape).detach()
        assert not held[~pattern].any(), step  # zeroed again before the next forward pass
        assert held[pattern].all(), step
        opt.zero_grad()
    assert moved_outside == TOTAL  # every optimizer step moves triplets outside the pattern: the hold is needed
    assert len(budgets) >= 10 and budgets[0][0] > budgets[-1][0] == allocator.target_bgt
    assert all(kept == pattern.tolist() for _, kept in budgets)
    assert allocator.outside_fixed_pattern() == 0


def test_plain_peft_over_prunes_on_ties_which_is_why_we_break_them():
    model = tiny_model()
    patterns = train_loop(model, steps=7, zero_lora_grads=True)  # first allocation at step 6
    assert total_rank(patterns[-1]) == 0  # PEFT masks every tied triplet: the budget is not kept


def test_nonfinite_steps_update_no_ema_and_are_counted():
    model = tiny_model()
    allocator = install_allocator(model, "importance_only", SignalConfig())
    train_loop(model, steps=TINIT + 1, nan_at=(1, 3))
    assert int(allocator.nonfinite_steps) == 2 and int(allocator.steps_seen) == TINIT + 1
    assert all(torch.isfinite(b).all() for b in allocator.signal.buffers.values())


def test_keep_top_k_is_exact_and_deterministic_under_ties():
    scores = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, float("nan")]])
    keep = keep_top_k(scores, 3)
    # Highest two are 2.0 and 1.0; of the three tied zeros, the earliest are pruned first; NaN counts as lowest.
    assert keep.tolist() == [[True, False, False], [True, True, False]]
    assert keep_top_k(scores, 0).sum() == 0 and keep_top_k(scores, 6).all()
    with pytest.raises(ValueError):
        keep_top_k(scores, 7)


def test_allocator_state_round_trips():
    model = tiny_model()
    allocator = install_allocator(model, "combo", SignalConfig())
    train_loop(model, steps=5)
    state = allocator.state_dict()
    fresh = SignalRankAllocator(model.base_model.model, model.peft_config["default"], "default", "combo",
                                SignalConfig())
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.signal.buffers[k], v) for k, v in state["buffers"].items())
    assert int(fresh.steps_seen) == 5


def test_the_readme_example_signal_plugs_in(monkeypatch):
    """docs/signals.md's "Adding a signal" example, verbatim in substance: one small class, registered, then usable."""
    from adalora_ablation import signals
    from adalora_ablation.signals import Signal, ema_, register_signal

    monkeypatch.setattr(signals, "SIGNALS", dict(signals.SIGNALS))  # keep the real registry clean
    monkeypatch.setattr(signals, "_CLASSES", dict(signals._CLASSES))

    @register_signal
    class WeightMagnitude(Signal):
        name = "weight_magnitude"
        description = "EMA of |w|"

        def __init__(self, layout, config):
            super().__init__(layout, config)
            self.avg = self._buffer("avg", layout.numel)

        def update(self, w, g, finite):
            ema_(self.avg, w.abs(), self.config.ema_decay, finite)

        def scores(self):
            return self.layout.combine_elements(self.avg)

    assert "weight_magnitude" in signals.SIGNALS
    model = tiny_model()
    allocator = install_allocator(model, "weight_magnitude", SignalConfig())
    patterns = train_loop(model)
    assert total_rank(patterns[-1]) == allocator.target_bgt
    assert allocator.last_allocation["scores"].abs().sum() > 0  # the final allocation used its (non-zero) EMAs
