"""The adapter switch: LoRA updates off, trained head kept, everything restored exactly."""

import pytest
import torch

from adalora_ablation.adalora.adapter_effect import adapters_switched_off
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


@pytest.mark.slow
def test_a_run_records_its_adapter_effect_and_starved_adapters_show_none(tmp_path):
    from adalora_ablation.analysis.report import build_report, to_markdown
    from adalora_ablation.train import train

    common = ["--task", "synthetic", "--signal", "importance_only", "--eval-strategy", "no", "--save-strategy", "no"]
    learned = train([*common, "--max-steps", "60", "--tinit", "10", "--tfinal", "20",
                     "--output-root", str(tmp_path / "learned")])
    assert learned["adapter_effect"] == learned["eval_accuracy"] - learned["eval_accuracy_without_adapters"]
    assert learned["adapter_effect"] > 0.1  # on the keyword task the adapters carry what the model learned
    # adapters that never move need no long run to show it
    short = [*common, "--max-steps", "20", "--tinit", "5", "--tfinal", "5", "--deltaT", "5"]
    starved = train([*short, "--output-root", str(tmp_path / "starved"), "--learning-rate", "1e-9"])
    assert abs(starved["adapter_effect"]) < 0.01  # adapters (E starts at zero) that never moved change nothing
    flag = "the adapters carry little here; differences between signals cannot show"
    assert flag in to_markdown(build_report(tmp_path / "starved", "synthetic"))
    assert flag not in to_markdown(build_report(tmp_path / "learned", "synthetic"))
    skipped = train([*short, "--output-root", str(tmp_path / "skipped"), "--adapter-effect", "False"])
    assert "adapter_effect" not in skipped and "eval_accuracy_without_adapters" not in skipped
