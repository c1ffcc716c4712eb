"""Where every AdaLoRA triplet lives: one fixed, flat view over all adapted modules.

AdaLoRA's unit of rank is the triplet i of a module m: row i of A (r x in), entry i of E (r x 1) and column i of
B (out x r). Signals score triplets; the allocator keeps the top ``budget`` of them. This class fixes the module
order once (PEFT's ``RankAllocator.name_set`` order) so that every signal, every log line and every test agree on
which row of a (modules x r) score matrix belongs to which module.
"""

from __future__ import annotations

import re

import torch

_LAYER_RE = re.compile(r"(?:^|\.)(layers?\.\d+\..*)$")


def short_module_name(peft_key: str) -> str:
    """``deberta.encoder.layer.0.attention.self.query_proj.%s.default`` -> ``layer.0.attention.self.query_proj``.

    Short names are the same for every signal and every model wrapper, so logs from different runs line up.
    """
    name = peft_key.split(".%s")[0].split(".lora_")[0]
    match = _LAYER_RE.search(name)
    return match.group(1) if match else name


class LoraLayout:
    """The A, E, B parameters of every adapted module, in a fixed order, plus flat gather/split helpers."""

    def __init__(self, model: torch.nn.Module, adapter_name: str = "default"):
        found: dict[str, dict[str, torch.nn.Parameter]] = {}
        for n, p in model.named_parameters():
            for part in ("lora_A", "lora_E", "lora_B"):
                if f"{part}.{adapter_name}" in n:
                    found.setdefault(n.replace(part, "%s"), {})[part] = p
        if not found:
            raise ValueError("the model has no AdaLoRA adapters (no lora_A/lora_E/lora_B parameters)")
        self.keys = sorted(found)  # the order of PEFT's RankAllocator.name_set
        self.names = [short_module_name(k) for k in self.keys]
        self.A = [found[k]["lora_A"] for k in self.keys]
        self.E = [found[k]["lora_E"] for k in self.keys]
        self.B = [found[k]["lora_B"] for k in self.keys]
        ranks = {e.shape[0] for e in self.E}
        if len(ranks) != 1:
            raise ValueError(f"all adapted modules must start at the same init_r, found ranks {sorted(ranks)}")
        self.r = ranks.pop()
        self.num_modules = len(self.keys)
        self.num_triplets = self.num_modules * self.r
        # Flat order: for every module, A then E then B (each flattened row-major).
        self.params = [p for m in range(self.num_modules) for p in (self.A[m], self.E[m], self.B[m])]
        self.numels = [p.numel() for p in self.params]
        self.numel = sum(self.numels)
        self.device = self.E[0].device
        self._triplet_index: torch.Tensor | None = None

    def e_key(self, m: int) -> str:
        """PEFT's rank_pattern key for module m (the full name of its lora_E parameter)."""
        return self.keys[m] % "lora_E"

    # -- flat gather / split -----------------------------------------------------------------------------------
    def flat_weights(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def flat_grads(self) -> torch.Tensor:
        grads = []
        for p in self.params:
            g = p.grad
            grads.append(torch.zeros(p.numel(), device=p.device, dtype=p.dtype) if g is None else g.reshape(-1))
        return torch.cat(grads)

    def split(self, flat: torch.Tensor):
        """Per-module views (A: r x in, E: r x 1, B: out x r) of a flat per-element tensor."""
        views = [v.view(p.shape) for v, p in zip(torch.split(flat, self.numels), self.params)]
        return [(views[3 * m], views[3 * m + 1], views[3 * m + 2]) for m in range(self.num_modules)]

    def combine_elements(self, element_score: torch.Tensor) -> torch.Tensor:
        """Triplet scores (modules x r) from per-element scores, exactly as PEFT's ``mask_to_budget`` combines them:
        E score + (mean over the A row + mean over the B column), with the same ops in the same order."""
        rows = []
        for a, e, b in self.split(element_score):
            ipt_ab = torch.cat([torch.mean(a, dim=1, keepdim=True), torch.mean(b, dim=0, keepdim=False).view(-1, 1)], 1)
            rows.append(e.view(-1) + ipt_ab.sum(dim=1, keepdim=False).view(-1))
        return torch.stack(rows)

    @property
    def triplet_index(self) -> torch.Tensor:
        """For every flat element, the id (m * r + i) of the triplet it belongs to."""
        if self._triplet_index is None:
            parts = []
            for m in range(self.num_modules):
                ids = torch.arange(self.r, device=self.device) + m * self.r
                a, b = self.A[m], self.B[m]
                parts += [ids.repeat_interleave(a.shape[1]), ids, ids.repeat(b.shape[0])]
            self._triplet_index = torch.cat(parts)
        return self._triplet_index

    def triplet_sums(self, flat: torch.Tensor) -> torch.Tensor:
        """Sum of a flat per-element tensor over each triplet's elements (A row, E entry, B column): modules x r."""
        out = torch.zeros(self.num_triplets, device=flat.device, dtype=flat.dtype)
        return out.index_add_(0, self.triplet_index, flat).view(self.num_modules, self.r)
