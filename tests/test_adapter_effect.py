"""The adapter switch: LoRA updates off, trained head kept, everything restored exactly."""

import torch

from adalora_ablation.adapter_effect import adapters_switched_off
from conftest import tiny_adalora


def trained_looking_model():
    model = tiny_adalora(seed=3).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:  # adapters and the head as training leaves them
                p.add_(torch.randn_like(p) * 0.5)
    return model


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_switch_removes_exactly_the_lora_update_keeps_the_trained_head_and_restores_the_model():
    model = trained_looking_model()
    inputs = {"input_ids": torch.randint(5, 100, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
    before = logits(model, inputs)
    with adapters_switched_off(model):
        switched_off = logits(model, inputs)
    after = logits(model, inputs)
    assert torch.equal(before, after)  # restored bit for bit: same predictions before and after

    lora_e = [p for n, p in model.named_parameters() if "lora_E" in n]
    saved = [p.detach().clone() for p in lora_e]
    with torch.no_grad():
        for p in lora_e:
            p.zero_()  # every triplet pruned: the adapted Linears compute their base output alone
    no_update = logits(model, inputs)
    with torch.no_grad():
        for p, s in zip(lora_e, saved):
            p.copy_(s)
    assert torch.equal(switched_off, no_update)
    assert not torch.allclose(switched_off, before)  # the adapters did contribute

    with model.disable_adapter():  # PEFT's switch also swaps in the untrained head: not what we measure
        untrained_head = logits(model, inputs)
    assert not torch.allclose(switched_off, untrained_head)
