"""This study's signals: PEFT's own score (the baseline), importance, plasticity and their combination."""

from __future__ import annotations

import torch

from .config import PLASTICITY_NORMS
from .base import Signal, ema_, normalize_rows
from .layout import serial_on_cpu


class BaselineAdaLoRA(Signal):
    """PEFT's own AdaLoRA score: EMA(|w*g|) * EMA(|ipt - EMA(ipt)|), combined per triplet as PEFT does."""

    name = "baseline_adalora"
    wants_flat_weights = False  # gathers them chunk by chunk (_ipt_chunks)

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.exp_avg_ipt = self._buffer("exp_avg_ipt", layout.numel)
        self.exp_avg_unc = self._buffer("exp_avg_unc", layout.numel)

    def update(self, w, g, finite):
        # PEFT's ops in PEFT's order, in place and in reused scratch buffers: ipt = |w*g|;
        # ipt_avg = b1*ipt_avg + (1-b1)*ipt; unc_avg = b2*unc_avg + (1-b2)*|ipt - ipt_avg|.
        if finite is False:
            return
        for sl, ipt, scratch in self._ipt_chunks(w, g):  # ipt is finite: g is zeros on a non-finite step
            avg_ipt = self.exp_avg_ipt[sl]
            ema_(avg_ipt, ipt, self.config.beta1, finite, scratch=scratch, new_is_finite=True)
            deviation = torch.sub(ipt, avg_ipt, out=scratch).abs_()
            ema_(self.exp_avg_unc[sl], deviation, self.config.beta2, finite, scratch=deviation, new_is_finite=True)

    def scores(self):
        with serial_on_cpu(self.exp_avg_ipt.device):
            return self.layout.combine_elements(self.exp_avg_ipt * self.exp_avg_unc)


class ImportanceOnly(Signal):
    """EMA(|w*g|) per element, no uncertainty term; combined per triplet as PEFT does."""

    name = "importance_only"
    wants_flat_weights = False  # gathers them chunk by chunk (_ipt_chunks)

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.exp_avg_ipt = self._buffer("exp_avg_ipt", layout.numel)

    @property
    def decay(self) -> float:
        return self.config.ema_decay

    def update(self, w, g, finite):
        if finite is False:
            return
        for sl, ipt, _ in self._ipt_chunks(w, g):
            ema_(self.exp_avg_ipt[sl], ipt, self.decay, finite, scratch=ipt, new_is_finite=True)

    def scores(self):
        return self.layout.combine_elements(self.exp_avg_ipt)


class PlasticityOnly(Signal):
    """EMA of the triplet's gradient norm sqrt(g(E_i)^2 + ||g(A_i)||^2 + ||g(B_i)||^2)."""

    name = "plasticity_only"
    wants_flat_weights = False  # gradients only
    buffer_name = "exp_avg_norm"  # a checkpoint's key: kept as today's checkpoints hold it

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.exp_avg = self._buffer(self.buffer_name, layout.num_triplets)

    def triplet_norms(self, squared_sums: torch.Tensor) -> torch.Tensor:
        """Per triplet, from the sum of its squared gradients (modules x r): the L2 norm, in place."""
        return squared_sums.sqrt_()

    def update(self, w, g, finite):
        squares = torch.mul(g, g, out=self._work(0, g.numel(), g.device))
        norms = self.triplet_norms(self.layout.triplet_sums(squares)).view(-1)
        ema_(self.exp_avg, norms, self.config.ema_decay, finite, scratch=norms, new_is_finite=True)

    def scores(self):
        return self.exp_avg.view(self.layout.num_modules, self.layout.r).clone()


class PlasticityRMS(PlasticityOnly):
    """plasticity_only per element: the EMA of the triplet's RMS gradient ||g_i|| / sqrt(n_i), n_i = in + out + 1
    (its A row, E entry, B column).

    The L2 norm of plasticity_only grows with sqrt(n_i) at equal per-element gradients, so large matrices
    outscore small ones by their shape alone; the RMS does not.
    """

    name = "plasticity_rms"
    buffer_name = "exp_avg_rms"

    def __init__(self, layout, config):
        super().__init__(layout, config)
        sizes = [din + dout + 1 for din, dout in zip(layout.in_features, layout.out_features)]
        self.triplet_size = torch.tensor(sizes, dtype=torch.float32, device=layout.device).view(-1, 1)

    def triplet_norms(self, squared_sums):
        # sqrt(sum / n), not sqrt(sum) / sqrt(n): the order today's checkpoints and results were computed in
        return squared_sums.div_(self.triplet_size).sqrt_()


class Combo(Signal):
    """normalize(importance) + combo_lambda * normalize(plasticity), normalized across all triplets; plasticity is
    plasticity_only (plasticity_norm "l2") or plasticity_rms ("rms")."""

    name = "combo"
    wants_flat_weights = False

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.importance = ImportanceOnly(layout, config)
        if config.plasticity_norm not in PLASTICITY_NORMS:
            raise ValueError(f"unknown plasticity norm {config.plasticity_norm!r}; "
                             f"choose one of {', '.join(PLASTICITY_NORMS)}")
        self.plasticity = {"l2": PlasticityOnly, "rms": PlasticityRMS}[config.plasticity_norm](layout, config)
        self.buffers = {
            **{f"importance.{k}": v for k, v in self.importance.buffers.items()},
            **{f"plasticity.{k}": v for k, v in self.plasticity.buffers.items()},
        }

    def update(self, w, g, finite):
        self.importance.update(w, g, finite)
        self.plasticity.update(w, g, finite)

    def parts(self):
        return {"importance": self.importance.scores(), "plasticity": self.plasticity.scores()}

    def scores(self):
        return self.scores_and_parts()[0]

    def scores_and_parts(self):
        parts = self.parts()
        both = torch.stack([parts["importance"].view(-1), parts["plasticity"].view(-1)]).double()
        importance, plasticity = normalize_rows(both, self.config.normalize_method).float()
        score = importance + self.config.combo_lambda * plasticity
        return score.view(self.layout.num_modules, self.layout.r), parts
