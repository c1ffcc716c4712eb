"""The flat layout: PEFT's triplet combination bit for bit, triplet sums on both paths, E masking, gathers."""

import pytest
import torch

from adalora_ablation.signals.layout import LoraLayout

KINDS = {  # DeBERTa's adapted matrices per layer: name -> (in, out) as multiples of the hidden size
    "attention.self.query_proj": (1, 1), "attention.self.key_proj": (1, 1), "attention.self.value_proj": (1, 1),
    "attention.output.dense": (1, 1), "intermediate.dense": (1, 4), "output.dense": (4, 1),
}


class Adapters(torch.nn.Module):
    """Only the adapters of a DeBERTa-shaped encoder, named and shaped as PEFT names and shapes them."""

    def __init__(self, layers=2, hidden=768, r=12, skip=(), seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layer = torch.nn.ModuleList()
        for i in range(layers):
            layer = torch.nn.Module()
            for kind, (fin, fout) in KINDS.items():
                if (i, kind) in skip:
                    continue
                parent = layer
                for part in kind.split(".")[:-1]:
                    if not hasattr(parent, part):
                        parent.add_module(part, torch.nn.Module())
                    parent = getattr(parent, part)
                mod = torch.nn.Module()
                for name, shape in (("lora_A", (r, fin * hidden)), ("lora_E", (r, 1)), ("lora_B", (fout * hidden, r))):
                    p = torch.nn.Parameter(torch.randn(shape, generator=g))
                    p.grad = torch.randn(shape, generator=g)
                    setattr(mod, name, torch.nn.ParameterDict({"default": p}))
                parent.add_module(kind.split(".")[-1], mod)
            self.layer.append(layer)


def peft_combine(layout, element_score):
    """PEFT 0.18.1's RankAllocator.mask_to_budget triplet scores, op for op, per module."""
    rows = []
    for a, e, b in layout.split(element_score):
        ipt_ab = torch.cat([torch.mean(a, dim=1, keepdim=True), torch.mean(b, dim=0, keepdim=False).view(-1, 1)], dim=1)
        rows.append(e.view(-1) + ipt_ab.sum(dim=1, keepdim=False).view(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("skip", [(), ((1, "intermediate.dense"), (0, "attention.self.key_proj"))])
def test_combine_elements_is_peft_bit_for_bit_at_deberta_base_width(skip):
    layout = LoraLayout(Adapters(layers=3, skip=skip))
    gen = torch.Generator().manual_seed(1)
    # products of two EMAs of |w*g|, as baseline's element scores are: positive, spread over decades
    element_score = torch.rand(layout.numel, generator=gen) * torch.rand(layout.numel, generator=gen) ** 4
    assert len(layout._grids_a) + len(layout._grids_b) < layout.num_modules  # whole grids, not per module
    assert torch.equal(layout.combine_elements(element_score), peft_combine(layout, element_score))


def test_triplet_sums_agree_on_both_paths():
    layout = LoraLayout(Adapters(layers=2, hidden=64, skip=((1, "output.dense"),)))
    flat = torch.rand(layout.numel, generator=torch.Generator().manual_seed(2))
    expected = torch.stack([a.sum(1) + e.view(-1) + b.sum(0) for a, e, b in layout.split(flat)])
    cpu = layout.triplet_sums(flat)
    layout.accelerator_path = True
    accelerator = layout.triplet_sums(flat)
    torch.testing.assert_close(cpu, expected)
    torch.testing.assert_close(accelerator, expected)


def test_mask_e_zeroes_dropped_entries_as_masked_fill_does():
    layout = LoraLayout(Adapters(layers=1, hidden=8, r=3))
    with torch.no_grad():
        for e in layout.E:
            e.copy_(torch.tensor([[-1.5], [float("nan")], [2.0]]))
    keep = torch.tensor([[False, False, True]] * layout.num_modules)
    layout.mask_E_(keep)
    for e in layout.E:
        # +0.0 (not -0.0, not NaN) where dropped, as PEFT's masked_fill_ leaves it; kept entries untouched
        assert e.view(-1)[:2].tolist() == [0.0, 0.0] and not torch.signbit(e.view(-1)[:2]).any()
        assert e.view(-1)[2].item() == 2.0


def test_gathers_follow_the_flat_order_with_zeros_for_missing_gradients():
    model = Adapters(layers=1, hidden=8, r=3)
    layout = LoraLayout(model)
    layout.params[4].grad = None
    expected = torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in layout.params])
    out = layout.work_buffer("grads")
    out.fill_(7.0)
    assert torch.equal(layout.flat_grads(out=out), expected) and torch.equal(layout.flat_grads(), expected)
    assert torch.equal(layout.flat_weights(), torch.cat([p.detach().reshape(-1) for p in layout.params]))
