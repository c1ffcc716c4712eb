"""Control signals: does any signal beat chance (`random`), and does reallocation beat a fixed rank (`uniform`)?
On the planted task: how far is a signal from the known answer (`oracle`), and what does the schedule itself cost
(`oracle_fixed`)?

They go through the same allocator and schedule as every other signal; all but `oracle_fixed` through its
exact-budget masking too.
"""

from __future__ import annotations

import torch

from .base import Signal
from .study import BaselineAdaLoRA


class RandomScores(Signal):
    """Fresh uniform random triplet scores at every allocation, from a generator seeded with the run's seed."""

    name = "random"
    wants_flat_weights = False  # the scores ignore training, so the allocator need not gather the weights

    def __init__(self, layout, config):
        super().__init__(layout, config)
        # On the adapters' device: drawing there needs no host-to-device copy (which would synchronise).
        self.generator = torch.Generator(device=layout.device).manual_seed(config.seed)

    def update(self, w, g, finite):
        pass  # nothing to track: the scores ignore training entirely

    def scores(self):
        shape = (self.layout.num_modules, self.layout.r)
        return torch.rand(shape, generator=self.generator, device=self.layout.device)

    # The generator's position is the only state; it must survive a resume for the masks to match.
    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])

    def reset(self):
        pass  # PEFT resets scores when the final budget is fixed; random draws carry no history to reset


class UniformRank(BaselineAdaLoRA):
    """Every module keeps the same rank at every budget (ranks differ by at most 1 when it does not divide evenly).

    Within a module, the triplets kept are the best by PEFT's own score, so the only thing this control removes is
    the reallocation of rank *between* modules.
    """

    name = "uniform"

    def __init__(self, layout, config):
        super().__init__(layout, config)
        # The score of a module's j-th best triplet: -(j * modules + m). Every module's best triplet ranks above
        # anyone's second best, and so on: round-robin over modules.
        modules, r = layout.num_modules, layout.r
        round_robin = torch.arange(r).view(1, r) * modules + torch.arange(modules).view(modules, 1)
        self._round_robin = (-round_robin.to(torch.float32)).to(layout.device)  # -0.0 first, as it always was

    def scores(self):
        within = super().scores()  # modules x r
        # each module's triplets from best to worst (ties broken by index, deterministically)
        order = torch.sort(-within, dim=1, stable=True).indices
        return torch.empty_like(within).scatter_(1, order, self._round_robin)


class PlantedOracle(BaselineAdaLoRA):
    """The upper reference on the planted task: every planted module keeps its planted rank (its best triplets by
    PEFT's score), and the rest of the budget goes by PEFT's score.

    Through the same allocator, schedule and exact-budget masking: it only reorders the scores. A planted module's
    best ``planted rank`` triplets score above every other triplet, so they survive every budget that can hold
    them (and the planted ranks fit in the final budget: checked before training).
    """

    name = "oracle"

    def __init__(self, layout, config):
        super().__init__(layout, config)
        planted = config.planted or {}
        ranks = torch.tensor([planted.get(name, 0) for name in layout.names]).view(-1, 1)
        # by position in a module's best-first order: is this one of its planted best?
        self._planted_by_position = (torch.arange(layout.r).view(1, -1) < ranks).to(layout.device)

    def scores(self):
        within = super().scores()  # modules x r, PEFT's score (>= 0)
        order = torch.sort(-within, dim=1, stable=True).indices
        planted = torch.empty_like(self._planted_by_position).scatter_(1, order, self._planted_by_position)
        # PEFT's score scaled into [0, 1], plus 2 for a planted triplet: planted ones first, PEFT's order within
        # each group (the scale is common to all triplets, so it keeps PEFT's order).
        scaled = within / (within.amax() + torch.finfo(within.dtype).tiny)
        return torch.where(planted, scaled + 2, scaled)


class PlantedFixed(Signal):
    """The learnability check on the planted task: from step 0, every planted module holds exactly its planted rank
    (its first ``planted rank`` triplets) and every other module rank 0, and nothing is ever pruned or revived.

    The schedule still runs (the same allocations at the same steps), but the allocator keeps this pattern instead
    of a budget (``fixed_pattern``) and re-applies it after every optimizer step. Against ``oracle``, which reaches
    the same ranks through the warm-up and the falling budget, it measures what the schedule itself costs.
    """

    name = "oracle_fixed"
    wants_flat_weights = False  # the pattern ignores training

    def __init__(self, layout, config):
        super().__init__(layout, config)
        planted = config.planted or {}
        ranks = torch.tensor([planted.get(name, 0) for name in layout.names]).view(-1, 1)
        # Which triplets does not matter: E starts at zero, and the pattern holds from the first step on.
        self._pattern = (torch.arange(layout.r).view(1, -1) < ranks).to(layout.device)

    def update(self, w, g, finite):
        pass  # nothing to track

    def scores(self):
        return self._pattern.float()  # what the score logs show: 1 for a planted triplet, 0 for any other

    def fixed_pattern(self):
        return self._pattern
