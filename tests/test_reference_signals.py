"""The literature's scores (and plasticity_rms) recomputed here, straight from their formulas, on real gradients.

A tiny DeBERTa wrapped by plain PEFT AdaLoRA trains for a few steps (forward, backward with PEFT's orthogonal
regulariser, AdamW); one step has a NaN gradient and is skipped, as a loss scaler would. Every signal is fed through
the allocator's own update path (Python-bool ``finite``, CPU) and, separately, with a 0-dim tensor ``finite`` (the
accelerator path). The expected scores come from plain loops over modules and steps.
"""

import copy
import json
import math

import pytest
import torch
from peft.tuners.adalora.layer import RankAllocator

from adalora_ablation.adalora.allocator import SignalRankAllocator
from adalora_ablation.signals.layout import all_finite
from adalora_ablation.signals.literature import SNR_RELATIVE_EPS
from adalora_ablation.run.folder import read_jsonl
from adalora_ablation.signals import SignalConfig, build_signal
from adalora_ablation.train import train

from conftest import tiny_adalora

STEPS, NAN_STEP = 8, 5
BETA1, BETA2, DECAY = 0.85, 0.85, 0.9  # PEFT's defaults and --ema-decay's
NEW_SIGNALS = ("singular_value", "sensitivity_only", "sensitivity_snr", "fisher", "component_norm", "plasticity_rms")


class PeftSensitivityOnly(RankAllocator):
    """PEFT 0.18.1's own RankAllocator, scoring elements by its sensitivity EMA alone (its ``_element_score`` hook);
    records every triplet score vector its ``mask_to_budget`` builds."""

    triplet_scores: list

    def _element_score(self, n):
        return self.exp_avg_ipt[n]

    def _combine_ipt(self, ipt_E, ipt_AB):
        combined = super()._combine_ipt(ipt_E, ipt_AB)
        self.triplet_scores.append(combined)
        return combined


def snapshot(layout):
    """Per module: {"a", "e", "b"} -> (weight, grad) clones, in the layout's module order."""
    return [{k: (p.detach().clone(), p.grad.detach().clone()) for k, p in zip("aeb", (a, e, b))}
            for a, e, b in zip(layout.A, layout.E, layout.B)]


@pytest.fixture(scope="module")
def trained():
    model = tiny_adalora()
    inner, peft_config = model.base_model.model, model.peft_config["default"]
    names = NEW_SIGNALS + ("baseline_adalora",)
    allocators = {n: SignalRankAllocator(inner, peft_config, "default", n, SignalConfig()) for n in names}
    layout = allocators["baseline_adalora"].layout
    on_tensor_path = {n: build_signal(n, layout, SignalConfig()) for n in names}
    peft = PeftSensitivityOnly(inner, peft_config, "default")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(3)
    history = []  # the finite steps' (weights after the optimizer step, gradients)
    for step in range(STEPS):
        x, y = torch.randint(5, 100, (8, 12), generator=gen), torch.randint(0, 2, (8,), generator=gen)
        model(input_ids=x, labels=y).loss.backward()
        if step == NAN_STEP:
            layout.B[3].grad[1, 2] = float("nan")
        finite = step != NAN_STEP
        if finite:
            opt.step()  # a loss scaler would skip the step with the NaN gradient
            history.append(snapshot(layout))
            peft.update_ipt(inner)
        for allocator in allocators.values():  # as the Trainer callback calls it, after the optimizer step
            allocator.update_ipt(inner)
        g = layout.flat_grads()
        finite = all_finite(g)
        g = torch.where(finite, g, torch.zeros_like(g))  # the allocator's contract: g is zeroed on a bad step
        for signal in on_tensor_path.values():
            w = layout.flat_weights() if signal.wants_flat_weights else None
            signal.update(w, g, finite)
        opt.zero_grad()
    assert all(int(a.nonfinite_steps) == 1 for a in allocators.values())
    return model, layout, history, allocators, on_tensor_path, peft


def ema(values, decay):
    avg = torch.zeros_like(values[0])
    for v in values:
        avg = decay * avg + (1 - decay) * v
    return avg


def combine(element_scores):
    """PEFT's triplet score from per-element scores {"a": r x in, "e": r x 1, "b": out x r}."""
    return element_scores["e"].view(-1) + element_scores["a"].mean(1) + element_scores["b"].mean(0)


def ipt(history, m, k):
    return [(step[m][k][0] * step[m][k][1]).abs() for step in history]


def expected_sensitivity_only(layout, history):
    return torch.stack([combine({k: ema(ipt(history, m, k), BETA1) for k in "aeb"})
                        for m in range(layout.num_modules)])


def expected_sensitivity_snr(layout, history):
    sensitivity, uncertainty = [], []
    for m in range(layout.num_modules):
        s, u = {}, {}
        for k in "aeb":
            s[k], u[k] = torch.zeros_like(history[0][m][k][0]), torch.zeros_like(history[0][m][k][0])
            for value in ipt(history, m, k):  # PEFT's update order: the deviation is from the updated average
                s[k] = BETA1 * s[k] + (1 - BETA1) * value
                u[k] = BETA2 * u[k] + (1 - BETA2) * (value - s[k]).abs()
        sensitivity.append(s)
        uncertainty.append(u)
    mean_uncertainty = torch.cat([u[k].reshape(-1) for u in uncertainty for k in "aeb"]).mean()
    eps = SNR_RELATIVE_EPS * mean_uncertainty + torch.finfo(torch.float32).tiny
    return torch.stack([combine({k: s[k] / (u[k] + eps) for k in "aeb"}) for s, u in zip(sensitivity, uncertainty)])


def expected_fisher(layout, history):
    return torch.stack([combine({k: ema([step[m][k][1] ** 2 for step in history], DECAY) for k in "aeb"})
                        for m in range(layout.num_modules)])


def expected_plasticity_rms(layout, history):
    rows = []
    for m in range(layout.num_modules):
        rms = []
        for step in history:
            ga, ge, gb = (step[m][k][1] for k in "aeb")
            size = ga.shape[1] + gb.shape[0] + 1  # in + out + 1 elements per triplet
            rms.append(torch.sqrt((ga ** 2).sum(1) + ge.view(-1) ** 2 + (gb ** 2).sum(0)) / math.sqrt(size))
        rows.append(ema(rms, DECAY))
    return torch.stack(rows)


def expected_singular_value(layout, history):
    return torch.stack([e.detach().abs().view(-1) for e in layout.E])


def expected_component_norm(layout, history):
    rows = []
    for a, e, b in zip(layout.A, layout.E, layout.B):
        a, e, b = a.detach().double(), e.detach().double(), b.detach().double()
        rows.append(torch.stack([torch.linalg.vector_norm(b[:, i]) * e[i, 0].abs() * torch.linalg.vector_norm(a[i])
                                 for i in range(a.shape[0])]))
    return torch.stack(rows).float()


@pytest.mark.parametrize("name", NEW_SIGNALS)
def test_scores_equal_the_formula_recomputed_from_real_gradients(trained, name):
    _, layout, history, allocators, on_tensor_path, _ = trained
    assert len(history) == STEPS - 1
    expected = globals()[f"expected_{name}"](layout, history)
    assert expected.shape == (layout.num_modules, layout.r) and torch.isfinite(expected).all()
    assert expected.unique().numel() > layout.num_triplets // 2, "degenerate scores would make the check vacuous"
    for signal in (allocators[name].signal, on_tensor_path[name]):
        torch.testing.assert_close(signal.scores(), expected, rtol=1e-5, atol=1e-12)


def test_sensitivity_only_is_peft_sensitivity_combination_bit_for_bit(trained):
    model, layout, _, allocators, on_tensor_path, peft = trained
    inner = model.base_model.model
    # PEFT's own mask_to_budget builds the triplet scores (it masks E, hence the copy), in its module order.
    peft.triplet_scores = []
    peft.mask_to_budget(copy.deepcopy(inner), peft.init_bgt - 1)
    peft_order = list(dict.fromkeys(n.replace("lora_A", "%s").replace("lora_B", "%s") for n, _ in
                                    inner.named_parameters() if "lora_A.default" in n or "lora_B.default" in n))
    by_module = dict(zip(peft_order, peft.triplet_scores))
    peft_scores = torch.stack([by_module[k] for k in layout.keys])
    for signal in (allocators["sensitivity_only"].signal, on_tensor_path["sensitivity_only"]):
        assert torch.equal(signal.scores(), peft_scores)
        # ... and its EMA is the sensitivity factor of baseline_adalora's, bit for bit
        assert torch.equal(signal.exp_avg_ipt, allocators["baseline_adalora"].signal.exp_avg_ipt)


def test_sensitivity_snr_scores_zero_without_any_gradient():
    model = tiny_adalora()
    layout = SignalRankAllocator(model.base_model.model, model.peft_config["default"], "default",
                                 "sensitivity_snr", SignalConfig()).layout
    signal = build_signal("sensitivity_snr", layout, SignalConfig())
    zeros = torch.zeros(layout.numel)
    signal.update(layout.flat_weights(), zeros, True)
    assert torch.equal(signal.scores(), torch.zeros(layout.num_modules, layout.r))  # 0 / eps, not NaN


@pytest.mark.slow
def test_trains_end_to_end_with_the_exact_budget(tmp_path):
    """One signal through train end to end (combo with --plasticity-norm rms, which only this run records); every
    signal's exact budget through PEFT's own loop is test_allocator.py's test_every_signal_keeps_exactly_the_
    scheduled_budget_on_either_path, and each new signal's scores are recomputed from their formulas above."""
    signal = "combo"
    summary = train(["--task", "synthetic", "--signal", signal, "--output-root", str(tmp_path), "--max-steps", "24",
                     "--max-train-samples", "96",
                     "--tinit", "6", "--tfinal", "6", "--deltaT", "3", "--per-device-train-batch-size", "4",
                     "--max-eval-samples", "32", "--eval-strategy", "no", "--plasticity-norm", "rms"])
    assert summary["budget_check_passed"] and summary["total_rank"] == summary["target_budget"]
    run_dir = tmp_path / "synthetic" / signal / "42"
    on_disk = json.loads((run_dir / "final_summary.json").read_text())
    assert on_disk["config"]["adalora"]["plasticity_norm"] == "rms"
    allocations = read_jsonl(run_dir / "signal_scores.jsonl")
    assert [a["step"] for a in allocations] == [9, 12, 15, 18]
    means = [m["mean"] for m in allocations[-1]["modules"].values()]
    assert all(math.isfinite(v) for v in means) and len(set(means)) > 1, "the signal did not tell modules apart"
