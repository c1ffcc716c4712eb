"""Scoring signals: which triplets survive AdaLoRA's budget. Adding one is a small class and one registry entry.

Every signal sees, once per optimizer step, the flat adapter weights ``w`` (None for a signal with
``wants_flat_weights = False``, which reads the parameters itself if it needs them), gradients ``g`` and
``finite`` (False when any adapter gradient was NaN/Inf; ``g`` is then all zeros): a 0-dim bool tensor on the
accelerator path, where reading it would synchronise with the host, or a plain bool on CPU, where reading it is
free. Its EMAs must not move on a non-finite step; ``ema_`` gates on the tensor without a host synchronisation.
At allocation time ``scores()`` returns one score per triplet (modules x r, higher = keep).

Each signal class names its ``role``: the ``baseline`` (PEFT's own score, what the others are compared to), a
replacement ``signal``, or a ``control`` (a reference point: chance, no reallocation). ``--help``, the README table,
the default grid and the report read roles and descriptions from here.

Per-step updates are a short chain of whole-buffer ops (on CPU in cache-sized chunks, ``LoraLayout.chunks``)
computed in scratch buffers reused every step (``LoraLayout.work_buffer``), so that a step allocates nothing
adapter-sized; on the accelerator path every update is at most 20 ops and every allocation at most 40 ops with one
device-to-host transfer (benchmarks/bench_ops.py, tests/test_bench_ops.py; BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .lora_layout import LoraLayout, serial_on_cpu

NORMALIZE_METHODS = ("zscore", "minmax", "rank")
PLASTICITY_NORMS = ("l2", "rms")
ROLES = ("baseline", "signal", "control")


@dataclass
class SignalConfig:
    beta1: float = 0.85  # PEFT's sensitivity EMA (baseline only)
    beta2: float = 0.85  # PEFT's uncertainty EMA (baseline only)
    ema_decay: float = 0.9  # EMA decay of the replacement signals
    combo_lambda: float = 1.0
    normalize_method: str = "zscore"
    plasticity_norm: str = "l2"  # combo's plasticity part: "l2" (plasticity_only) or "rms" (plasticity_rms)
    seed: int = 0  # for signals that draw random numbers


def ema_(avg: torch.Tensor, new: torch.Tensor, decay: float, finite: torch.Tensor | bool, *,
         scratch: torch.Tensor | None = None, new_is_finite: bool = False) -> torch.Tensor:
    """avg <- decay * avg + (1 - decay) * new in place, in PEFT's op order (bitwise equal to PEFT's
    ``decay * avg + (1 - decay) * new``); on a step that is not ``finite``, avg stays bitwise unchanged.

    ``finite`` is a Python bool when the caller could read it for free (CPU tensors), else a 0-dim bool tensor,
    gated without a host sync and without a ``torch.where`` over the whole buffer: the two factors become 0-dim
    tensors, (decay, 1 - decay) on a finite step and (1, 0) otherwise, and the ``(1 - decay) * new`` term is
    zeroed on a non-finite step (0 * NaN would be NaN). ``scratch``: where to compute that term (may be ``new``
    itself, which is then overwritten); ``new_is_finite``: ``new`` is finite even on a non-finite step (it is
    computed from the gradients, which are zeros then), so the term needs no zeroing.
    """
    if isinstance(finite, bool):
        if finite:
            term = torch.mul(new, 1 - decay, out=scratch) if scratch is not None else (1 - decay) * new
            avg.mul_(decay).add_(term)
        return avg
    factors = _ema_factors(finite, decay, avg.dtype)
    keep, take = factors[0], factors[1]
    term = torch.mul(new, take, out=scratch) if scratch is not None else new * take
    if not new_is_finite:
        torch.where(finite, term, _zero(term.dtype, term.device), out=term)
    return avg.mul_(keep).add_(term)


_CONSTANTS: dict[tuple, tuple[torch.Tensor, ...]] = {}  # small device constants, created once


def _ema_factors(finite: torch.Tensor, decay: float, dtype: torch.dtype) -> torch.Tensor:
    """[decay, 1 - decay] on a finite step, [1, 0] otherwise (in ``dtype``: float32(decay) is exactly what PEFT's
    Python-scalar multiply uses). One small op per step and decay: the result is kept on this step's ``finite``
    tensor, so that EMAs with the same decay (baseline's two, combo's two) share it."""
    cached = finite.__dict__.setdefault("_ema_factors", {})
    step_key = (decay, dtype, finite._version)  # _version: a flag changed in place is a new flag
    if step_key not in cached:
        key = ("ema", decay, dtype, finite.device)
        if key not in _CONSTANTS:
            _CONSTANTS[key] = (torch.tensor([decay, 1 - decay], dtype=dtype, device=finite.device),
                               torch.tensor([1.0, 0.0], dtype=dtype, device=finite.device))
        cached[step_key] = torch.where(finite, *_CONSTANTS[key])
    return cached[step_key]


def _zero(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = ("zero", dtype, device)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = (torch.zeros((), dtype=dtype, device=device),)
    return _CONSTANTS[key][0]


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

    def scores_and_parts(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """What the allocator calls: ``scores()`` and ``parts()``; a signal whose score is built from its parts
        overrides this to compute them once."""
        return self.scores(), self.parts()

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


# Named groups for --signals (ablate, demo): this study's four signals, the AdaLoRA paper's own scoring ablation
# (Table 4) and the literature's other scores. "controls" (the control role) and "all" (every registered signal) are
# derived from the registry.
SIGNAL_GROUPS = {
    "seed": ("baseline_adalora", "importance_only", "plasticity_only", "combo"),
    "table4": ("baseline_adalora", "sensitivity_only", "singular_value"),
    "peers": ("sensitivity_snr", "fisher", "component_norm"),
}


def group_names() -> list[str]:
    return [*SIGNAL_GROUPS, "controls", "all"]


def expand_signals(names: list[str]) -> list[str]:
    """Signal names with every group replaced by its members, each name once, in the order given."""
    out = []
    for name in names:
        if name == "all":
            out += signal_names()
        elif name == "controls":
            out += signal_names("control")
        elif name in SIGNAL_GROUPS:
            out += SIGNAL_GROUPS[name]
        elif name in SIGNALS:
            out.append(name)
        else:
            raise ValueError(f"unknown signal or group {name!r}; choose from: {', '.join(group_names())} or "
                             f"{', '.join(SIGNALS)}")
    return list(dict.fromkeys(out))


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
        for sl, ipt, scratch in self._ipt_chunks(w, g):  # ipt is finite: g is zeros on a non-finite step
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
        ema_(self.exp_avg_norm, norms, self.config.ema_decay, finite, scratch=norms, new_is_finite=True)

    def scores(self):
        return self.exp_avg_norm.view(self.layout.num_modules, self.layout.r).clone()


@register_signal
class PlasticityRMS(Signal):
    """EMA of the triplet's RMS gradient ||g_i|| / sqrt(n_i), n_i = in + out + 1 (its A row, E entry, B column).

    The L2 norm of plasticity_only grows with sqrt(n_i) at equal per-element gradients, so large matrices
    outscore small ones by their shape alone; the RMS does not.
    """

    name = "plasticity_rms"
    description = "EMA of the triplet's RMS gradient (size-fair plasticity)"
    wants_flat_weights = False  # gradients only

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.exp_avg_rms = self._buffer("exp_avg_rms", layout.num_triplets)
        sizes = [din + dout + 1 for din, dout in zip(layout.in_features, layout.out_features)]
        self.triplet_size = torch.tensor(sizes, dtype=torch.float32, device=layout.device).view(-1, 1)

    def update(self, w, g, finite):
        squares = torch.mul(g, g, out=self._work(0, g.numel(), g.device))
        rms = self.layout.triplet_sums(squares).div_(self.triplet_size).sqrt_().view(-1)
        ema_(self.exp_avg_rms, rms, self.config.ema_decay, finite)

    def scores(self):
        return self.exp_avg_rms.view(self.layout.num_modules, self.layout.r).clone()


def normalize(x: torch.Tensor, method: str) -> torch.Tensor:
    """Normalize scores across all triplets of all modules (zscore, minmax or rank in [0, 1], ties averaged)."""
    return normalize_rows(x.reshape(1, -1).double(), method).view_as(x).to(x.dtype)


def normalize_rows(x: torch.Tensor, method: str) -> torch.Tensor:
    """Normalize each row of a 2-D float64 tensor on its own (see ``normalize``): a few ops for all rows, no host
    synchronisation (a constant row becomes zeros through ``torch.where``, not a Python ``if``)."""
    if method == "zscore":
        std, mean = torch.std_mean(x, dim=1, correction=0, keepdim=True)
        return torch.where(std > 0, (x - mean) / std, 0.0)
    if method == "minmax":
        lo, hi = torch.aminmax(x, dim=1, keepdim=True)
        span = hi - lo
        return torch.where(span > 0, (x - lo) / span, 0.0)
    if method == "rank":
        # Average 0-based rank of tied values: (first + last) / 2, from where each value's run starts and ends in
        # the sorted row; divided by n - 1. The integers are exact in float64, so the result is too.
        ordered = torch.sort(x, dim=1).values
        first = torch.searchsorted(ordered, x)
        after_last = torch.searchsorted(ordered, x, right=True)
        return first.add_(after_last).sub_(1).double().div_(2 * max(x.shape[1] - 1, 1))
    raise ValueError(f"unknown normalize method {method!r}; choose one of {', '.join(NORMALIZE_METHODS)}")


@register_signal
class Combo(Signal):
    """normalize(importance) + combo_lambda * normalize(plasticity), normalized across all triplets; plasticity is
    plasticity_only (plasticity_norm "l2") or plasticity_rms ("rms")."""

    name = "combo"
    description = "normalize(importance) + combo_lambda * normalize(plasticity)"
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



def build_signal(name: str, layout: LoraLayout, config: SignalConfig) -> Signal:
    if name not in SIGNALS:
        raise ValueError(f"unknown signal {name!r}; choose one of {', '.join(SIGNALS)}")
    return SIGNALS[name](layout, config)


# Signals defined in other modules register themselves when imported. Importing them here, once everything they
# need from this module exists, gives every reader of the registry all of them, whichever module it imported first.
from . import controls, reference_signals  # noqa: E402,F401,I001
