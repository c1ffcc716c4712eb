"""The final phase's mask is PEFT's, bit for bit: a dropped E entry becomes +0.0 whatever it held (NaN, a negative
number: a product with 0 would leave NaN and -0.0), a kept one keeps its bits."""

import copy

import torch
from peft.tuners.adalora.layer import RankAllocator

from adalora_ablation.adalora.allocator import install_allocator
from adalora_ablation.signals import SignalConfig

from conftest import tiny_adalora


def _poisoned_e(model) -> None:
    """E entries of every kind in kept and dropped places: NaN, -inf, negatives, -0.0, positives."""
    values = torch.tensor([float("nan"), -1.5, -0.0, 2.0, float("-inf"), -3e-8])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_E" in name:
                p.copy_(values[torch.arange(p.numel()) % len(values)].view_as(p))


def _e_bits(model) -> dict:
    return {n: p.detach().clone().view(torch.int32) for n, p in model.named_parameters() if "lora_E" in n}


def _rank_pattern(model, truncated: bool) -> dict:
    """A pattern that keeps and drops every kind of value (PEFT's keys: with or without the adapter name)."""
    pattern = {}
    inner = model.base_model.model  # what PEFT's AdaLoraModel masks (its names, as its rank_pattern has them)
    for i, (name, p) in enumerate((n, p) for n, p in inner.named_parameters() if "lora_E" in n):
        row = [(i + k) % 3 != 0 for k in range(p.shape[0])]
        pattern[name.replace(".default", "") if truncated else name] = row
    return pattern


def test_final_phase_mask_fills_as_peft_does_bit_for_bit():
    for truncated in (False, True):
        peft_model, ours_model = tiny_adalora(), tiny_adalora()
        allocator = install_allocator(ours_model, "baseline_adalora", SignalConfig())
        for model in (peft_model, ours_model):
            _poisoned_e(model)
        pattern = _rank_pattern(peft_model, truncated)
        assert any(not k for row in pattern.values() for k in row) and any(k for row in pattern.values() for k in row)
        RankAllocator.mask_using_rank_pattern(peft_model.base_model.rankallocator, peft_model.base_model.model,
                                              copy.deepcopy(pattern))
        allocator.mask_using_rank_pattern(ours_model.base_model.model, pattern)
        expected, got = _e_bits(peft_model), _e_bits(ours_model)
        assert expected.keys() == got.keys()
        for name in expected:
            assert torch.equal(expected[name], got[name]), name
        # the cases the test is about really occur: a kept NaN stays NaN, a kept -0.0 stays -0.0, and a dropped
        # negative or NaN becomes +0.0
        inner = dict(ours_model.base_model.model.named_parameters())
        kept, dropped = [], []
        for key, row in pattern.items():
            e = inner[key if not truncated else key.replace("lora_E", "lora_E.default")].detach().view(-1)
            for k, keep in enumerate(row):
                (kept if keep else dropped).append(e[k])
        assert any(torch.isnan(v) for v in kept) and any(v.view(torch.int32) == -2**31 for v in kept)
        assert dropped and all(v.view(torch.int32) == 0 for v in dropped)  # +0.0, never -0.0 or NaN
        # the cached mask is applied again the next step, as PEFT re-applies its pattern
        _poisoned_e(ours_model)
        allocator.mask_using_rank_pattern(ours_model.base_model.model, pattern)
        assert all(torch.equal(expected[n], b) for n, b in _e_bits(ours_model).items())
