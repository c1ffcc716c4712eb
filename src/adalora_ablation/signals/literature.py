"""Scores from the literature, under the same schedule and exact-budget masking as every other signal.

- ``singular_value``, ``sensitivity_only``: the AdaLoRA paper's own scoring ablation (Table 4, rows "|lambda| only"
  and "sensitivity only").
- ``sensitivity_snr``: smoothed sensitivity over smoothed uncertainty, the ratio that integrated-gradient and
  Bayesian variants of AdaLoRA argue for (AdaLoRA multiplies the two).
- ``fisher``: the empirical Fisher diagonal, EMA(g^2).
- ``component_norm``: the Frobenius norm of the triplet's rank-one update, the score dynamic-rank DoRA prunes by.

Scores that read the weights (``singular_value``, ``component_norm``) keep no per-step state: they read the current
adapter at allocation time.
"""

from __future__ import annotations

import torch

from .layout import serial_on_cpu
from .base import Signal, ema_
from .study import BaselineAdaLoRA, ImportanceOnly

# sensitivity_snr's epsilon, relative to the mean smoothed uncertainty over all adapter elements: a fixed fraction
# keeps the ratio free of the gradients' scale (both factors scale with |g|), unlike an absolute epsilon.
SNR_RELATIVE_EPS = 1e-6


class SingularValue(Signal):
    """|E_i|: the magnitude of the triplet's singular value, read at allocation time."""

    name = "singular_value"
    wants_flat_weights = False  # reads E itself at allocation time

    def update(self, w, g, finite):
        pass  # no history: the score is the current singular value

    def scores(self):
        with torch.no_grad():
            return torch.cat(self.layout.E).abs_().view(self.layout.num_modules, self.layout.r)


class SensitivityOnly(ImportanceOnly):
    """PEFT's smoothed sensitivity EMA(|w*g|) with PEFT's beta1, combined per triplet as PEFT does: the sensitivity
    factor of baseline_adalora's score, bit for bit, without the uncertainty factor. The same computation as
    importance_only, whose decay is --ema-decay instead."""

    name = "sensitivity_only"

    @property
    def decay(self) -> float:
        return self.config.beta1


class SensitivitySNR(BaselineAdaLoRA):
    """EMA(|w*g|) / (EMA(|ipt - EMA(ipt)|) + eps) per element (PEFT's two EMAs, beta1 and beta2), combined per
    triplet as PEFT does. eps = SNR_RELATIVE_EPS x the mean uncertainty over all elements, plus the smallest normal
    float32 so that an element whose both EMAs are zero scores 0 instead of NaN."""

    name = "sensitivity_snr"

    def scores(self):
        unc = self.exp_avg_unc
        with serial_on_cpu(unc.device):  # whole-buffer element-wise ops: see serial_on_cpu
            eps = unc.mean() * SNR_RELATIVE_EPS + torch.finfo(unc.dtype).tiny
            return self.layout.combine_elements(self.exp_avg_ipt / (unc + eps))


class Fisher(Signal):
    """EMA of g^2 per element (the empirical Fisher diagonal), decay --ema-decay, combined per triplet as PEFT does."""

    name = "fisher"
    wants_flat_weights = False  # gradients only

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.exp_avg_sq = self._buffer("exp_avg_sq", layout.numel)

    def update(self, w, g, finite):
        if finite is False:
            return
        scratch = self._work(0, self.layout.max_chunk(g.device), g.device)
        for sl, _, _ in self.layout.chunks(g.device):
            squares = torch.mul(g[sl], g[sl], out=scratch[: sl.stop - sl.start])
            ema_(self.exp_avg_sq[sl], squares, self.config.ema_decay, finite, scratch=squares)

    def scores(self):
        return self.layout.combine_elements(self.exp_avg_sq)


class ComponentNorm(Signal):
    """||B[:, i]|| * |E_i| * ||A[i, :]||: the Frobenius norm of the triplet's rank-one contribution B_i E_i A_i to
    the weight update (up to the scaling that all modules share), read at allocation time."""

    name = "component_norm"
    wants_flat_weights = False  # reads the weights itself at allocation time

    def update(self, w, g, finite):
        pass  # no history: the score is the current adapter's

    def scores(self):
        layout = self.layout
        with torch.no_grad(), serial_on_cpu(layout.device):
            squares = layout.flat_weights(out=self._work(0, layout.numel, layout.device)).square_()
            a, e, b = layout.triplet_part_sums(squares)  # ||A_i||^2, E_i^2, ||B_i||^2
            return (a * e * b).sqrt_()
