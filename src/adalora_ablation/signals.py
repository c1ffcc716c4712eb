"""Scoring signals: which triplets survive AdaLoRA's budget. Adding one is a small class and one registry entry.

Every signal sees, once per optimizer step, the flat adapter weights ``w`` (None for a signal with
``wants_flat_weights = False``, which reads the parameters itself if it needs them), gradients ``g`` and
``finite`` (False when any adapter gradient is NaN/Inf): a 0-dim bool tensor on an accelerator, where reading it
would synchronise with the host, or a plain bool on CPU, where reading it is free. Its EMAs must not move on a
non-finite step; ``ema_`` gates on the tensor without a host synchronisation. At allocation time ``scores()``
returns one score per triplet (modules x r, higher = keep).

Each signal class names its ``role``: the ``baseline`` (PEFT's own score, what the others are compared to), a
replacement ``signal``, or a ``control`` (a reference point: chance, no reallocation). ``--help``, the README table,
the default grid and the report read roles and descriptions from here.

Per-step updates are a short chain of whole-buffer ops (on CPU in cache-sized chunks, ``LoraLayout.chunks``)
computed in scratch buffers reused every step (``LoraLayout.work_buffer``), so that a step allocates nothing
adapter-sized; see benchmarks/ and BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .lora_layout import LoraLayout, serial_on_cpu

NORMALIZE_METHODS = ("zscore", "minmax", "rank")
ROLES = ("baseline", "signal", "control")


@dataclass
class SignalConfig:
    beta1: float = 0.85  # PEFT's sensitivity EMA (baseline only)
    beta2: float = 0.85  # PEFT's uncertainty EMA (baseline only)
    ema_decay: float = 0.9  # EMA decay of the replacement signals
    combo_lambda: float = 1.0
    normalize_method: str = "zscore"
    seed: int = 0  # for signals that draw random numbers


def ema_(avg: torch.Tensor, new: torch.Tensor, decay: float, finite: torch.Tensor | bool, *,
         scratch: torch.Tensor | None = None, new_is_finite: bool = False) -> torch.Tensor:
    """avg <- decay * avg + (1 - decay) * new in place, in PEFT's op order (bitwise equal to PEFT's
    ``decay * avg + (1 - decay) * new``); on a step that is not ``finite``, avg stays bitwise unchanged.

    ``finite`` is a Python bool when the caller could read it for free (CPU tensors), else a 0-dim bool tensor,
    gated without a host sync and without a ``torch.where`` over the whole buffer: the two factors become 0-dim
    tensors, (decay, 1 - decay) on a finite step and (1, 0) otherwise, and the ``(1 - decay) * new`` term is
    zeroed on a non-finite step (0 * NaN would be NaN). ``scratch``: where to compute that term (may be ``new``
    itself, which is then overwritten); ``new_is_finite``: the caller already zeroed ``new`` on non-finite steps.
    """
    if isinstance(finite, bool):
        if finite:
            term = torch.mul(new, 1 - decay, out=scratch) if scratch is not None else (1 - decay) * new
            avg.mul_(decay).add_(term)
        return avg
    keep = torch.where(finite, decay, 1.0)  # float32(decay), exactly what PEFT's Python-scalar multiply uses
    take = torch.where(finite, 1 - decay, 0.0)
    term = torch.mul(new, take, out=scratch) if scratch is not None else new * take
    if not new_is_finite:
        term.masked_fill_(~finite, 0.0)
    return avg.mul_(keep).add_(term)


class Signal:
    """Base class. Subclasses set ``name``, create their buffers in ``__init__`` and implement update/scores."""

    name: str = ""
    description: str = ""  # one line, shown by --help and in the README's table
    role: str = "signal"  # one of ROLES
    # False: the allocator passes w=None and skips gathering the weights (the signal reads them itself, or never).
    wants_flat_weights: bool = True

    def __init__(self, layout: LoraLayout, config: SignalConfig):
        self.layout = layout
        self.config = config
        self.buffers: dict[str, torch.Tensor] = {}

    def _work(self, i: int, numel: int, device: torch.device) -> torch.Tensor:
        """Float32 scratch buffer i of ``numel`` elements, shared through the layout and reused every step."""
        return self.layout.work_buffer(f"work{i}", numel, torch.float32, device)

    def _ipt_chunks(self, w: torch.Tensor | None, g: torch.Tensor):
        """Yield (flat slice, |w*g| of that slice, scratch of the same size), chunk by chunk (``LoraLayout.chunks``).

        Without ``w`` the weights come straight from the parameters, gathered chunk by chunk into the scratch that
        then holds |w*g|, so that no full-size weight copy is ever written. The yielded tensors are reused
        scratch, valid until the next chunk.
        """
        chunks = self.layout.chunks(g.device)
        n = self.layout.max_chunk(g.device)
        s0, s1 = self._work(0, n, g.device), self._work(1, n, g.device)
        for sl, first, end in chunks:
            size = sl.stop - sl.start
            if w is None:
                ipt = self.layout.weights_range(first, end, out=s0[:size]).mul_(g[sl])
            else:
                ipt = torch.mul(w[sl], g[sl], out=s0[:size])
            yield sl, ipt.abs_(), s1[:size]

    def _buffer(self, name: str, numel: int) -> torch.Tensor:
        self.buffers[name] = torch.zeros(numel, device=self.layout.device, dtype=torch.float32)
        return self.buffers[name]

    def update(self, w: torch.Tensor | None, g: torch.Tensor, finite: torch.Tensor | bool) -> None:
        raise NotImplementedError

    def scores(self) -> torch.Tensor:
        raise NotImplementedError

    def parts(self) -> dict[str, torch.Tensor]:
        """Named components of the score (modules x r) worth logging besides the score itself."""
        return {}

    def reset(self) -> None:
        for buf in self.buffers.values():
            buf.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.buffers.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.buffers[k].copy_(v)


SIGNALS: dict[str, type[Signal]] = {}  # name -> class, in registration order


def register_signal(cls: type[Signal]) -> type[Signal]:
    """Class decorator: make a Signal subclass available under ``cls.name`` (``--signal``, grids, the report)."""
    if cls.name in SIGNALS:
        raise ValueError(f"a signal named {cls.name!r} is already registered ({SIGNALS[cls.name].__qualname__}); "
                         f"choose a name that is not one of: {', '.join(SIGNALS)}")
    if not cls.name or cls.role not in ROLES:
        raise ValueError(f"signal class {cls.__qualname__} needs a name and a role in {ROLES} "
                         f"(has name={cls.name!r}, role={cls.role!r})")
    SIGNALS[cls.name] = cls
    return cls


def signal_names(*roles: str) -> list[str]:
    """Registered signal names with one of ``roles`` (default: all), in registration order."""
    return [name for name, cls in SIGNALS.items() if not roles or cls.role in roles]


def ordered_signals(names) -> list[str]:
    """``names`` with the registered ones first, in registration order (the baseline leads), then others sorted."""
    known = signal_names("baseline") + signal_names("signal", "control")
    return [s for s in known if s in names] + sorted(set(names) - set(known))


def describe_signals() -> str:
    """One line per registered signal: name, role, description (for --help)."""
    width = max(map(len, SIGNALS))
    return "\n".join(f"  {name:{width}}  {cls.role:8}  {cls.description}" for name, cls in SIGNALS.items())


@register_signal
class BaselineAdaLoRA(Signal):
    """PEFT's own AdaLoRA score: EMA(|w*g|) * EMA(|ipt - EMA(ipt)|), combined per triplet as PEFT does."""

    name = "baseline_adalora"
    role = "baseline"
    description = "PEFT's own score: EMA(|w*g|) * EMA(|ipt - EMA(ipt)|), unchanged"
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
        for sl, ipt, scratch in self._ipt_chunks(w, g):
            if not isinstance(finite, bool):
                ipt.masked_fill_(~finite, 0.0)  # zeroed only on a non-finite step, so that 0 * ipt is 0
            avg_ipt = self.exp_avg_ipt[sl]
            ema_(avg_ipt, ipt, self.config.beta1, finite, scratch=scratch, new_is_finite=True)
            deviation = torch.sub(ipt, avg_ipt, out=scratch).abs_()
            ema_(self.exp_avg_unc[sl], deviation, self.config.beta2, finite, scratch=deviation, new_is_finite=True)

    def scores(self):
        with serial_on_cpu(self.exp_avg_ipt.device):
            return self.layout.combine_elements(self.exp_avg_ipt * self.exp_avg_unc)


@register_signal
class ImportanceOnly(Signal):
    """EMA(|w*g|) per element, no uncertainty term; combined per triplet as PEFT does."""

    name = "importance_only"
    description = "EMA(|w*g|): PEFT's sensitivity without its uncertainty term"
    wants_flat_weights = False  # gathers them chunk by chunk (_ipt_chunks)

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.exp_avg_ipt = self._buffer("exp_avg_ipt", layout.numel)

    def update(self, w, g, finite):
        if finite is False:
            return
        for sl, ipt, _ in self._ipt_chunks(w, g):
            ema_(self.exp_avg_ipt[sl], ipt, self.config.ema_decay, finite, scratch=ipt)

    def scores(self):
        return self.layout.combine_elements(self.exp_avg_ipt)


@register_signal
class PlasticityOnly(Signal):
    """EMA of the triplet's gradient norm sqrt(g(E_i)^2 + ||g(A_i)||^2 + ||g(B_i)||^2)."""

    name = "plasticity_only"
    description = "EMA of the triplet's gradient L2 norm"
    wants_flat_weights = False  # gradients only

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.exp_avg_norm = self._buffer("exp_avg_norm", layout.num_triplets)

    def update(self, w, g, finite):
        squares = torch.mul(g, g, out=self._work(0, g.numel(), g.device))
        norms = self.layout.triplet_sums(squares).sqrt_().view(-1)
        ema_(self.exp_avg_norm, norms, self.config.ema_decay, finite)

    def scores(self):
        return self.exp_avg_norm.view(self.layout.num_modules, self.layout.r).clone()


def normalize(x: torch.Tensor, method: str) -> torch.Tensor:
    """Normalize scores across all triplets of all modules (zscore, minmax or rank in [0, 1], ties averaged)."""
    flat = x.reshape(-1).double()
    if method == "zscore":
        std = flat.std(correction=0)
        out = (flat - flat.mean()) / std if std > 0 else torch.zeros_like(flat)
    elif method == "minmax":
        span = flat.max() - flat.min()
        out = (flat - flat.min()) / span if span > 0 else torch.zeros_like(flat)
    elif method == "rank":
        values, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
        first = torch.cumsum(counts, 0) - counts  # 0-based rank of the first occurrence of each value
        average_rank = first.double() + (counts.double() - 1) / 2
        out = average_rank[inverse] / max(flat.numel() - 1, 1)
    else:
        raise ValueError(f"unknown normalize method {method!r}; choose one of {', '.join(NORMALIZE_METHODS)}")
    return out.view_as(x).to(x.dtype)


@register_signal
class Combo(Signal):
    """normalize(importance) + combo_lambda * normalize(plasticity), normalized across all triplets."""

    name = "combo"
    description = "normalize(importance) + combo_lambda * normalize(plasticity)"
    wants_flat_weights = False

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.importance = ImportanceOnly(layout, config)
        self.plasticity = PlasticityOnly(layout, config)
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
        parts = self.parts()
        method = self.config.normalize_method
        importance, plasticity = normalize(parts["importance"], method), normalize(parts["plasticity"], method)
        return importance + self.config.combo_lambda * plasticity


def build_signal(name: str, layout: LoraLayout, config: SignalConfig) -> Signal:
    if name not in SIGNALS:
        raise ValueError(f"unknown signal {name!r}; choose one of {', '.join(SIGNALS)}")
    return SIGNALS[name](layout, config)


# Signals defined in other modules register themselves when imported. Importing them here, once everything they
# need from this module exists, gives every reader of the registry all of them, whichever module it imported first.
from . import controls  # noqa: E402,F401,I001
