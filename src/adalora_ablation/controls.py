"""Control signals: does any signal beat chance (`random`), and does reallocation beat a fixed rank (`uniform`)?

They go through the same allocator, schedule and exact-budget masking as every other signal.
"""

from __future__ import annotations

import torch

from .signals import BaselineAdaLoRA, Signal, register_signal


@register_signal
class RandomScores(Signal):
    """Fresh uniform random triplet scores at every allocation, from a generator seeded with the run's seed."""

    name = "random"
    role = "control"
    description = "uniform random scores at every allocation (seeded): does any signal beat chance?"
    wants_flat_weights = False  # the scores ignore training, so the allocator need not gather the weights

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)

    def update(self, w, g, finite):
        pass  # nothing to track: the scores ignore training entirely

    def scores(self):
        shape = (self.layout.num_modules, self.layout.r)
        return torch.rand(shape, generator=self.generator).to(self.layout.device)

    # The generator's position is the only state; it must survive a resume for the masks to match.
    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])

    def reset(self):
        pass  # PEFT resets scores when the final budget is fixed; random draws carry no history to reset


@register_signal
class UniformRank(BaselineAdaLoRA):
    """Every module keeps the same rank at every budget (ranks differ by at most 1 when it does not divide evenly).

    Within a module, the triplets kept are the best by PEFT's own score, so the only thing this control removes is
    the reallocation of rank *between* modules.
    """

    name = "uniform"
    role = "control"
    description = "the same rank for every module, PEFT's score within one: does reallocation beat a fixed rank?"

    def scores(self):
        within = super().scores()  # modules x r
        modules, r = within.shape
        # position of each triplet in its module's ranking, best = 0 (ties broken by index, deterministically)
        order = torch.sort(-within, dim=1, stable=True).indices
        position = torch.empty_like(order)
        position.scatter_(1, order, torch.arange(r, device=order.device).expand(modules, r).contiguous())
        # Keep every module's best triplet before anyone's second best, and so on: round-robin over modules.
        module_index = torch.arange(modules, device=order.device).view(-1, 1)
        return -(position * modules + module_index).to(torch.float32)
