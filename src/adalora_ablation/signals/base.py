"""The base class of every scoring signal, and the EMA every signal's state moves by.

Every signal sees, once per optimizer step, the flat adapter weights ``w`` (None for a signal with
``wants_flat_weights = False``, which reads the parameters itself if it needs them), gradients ``g`` and
``finite`` (False when any adapter gradient was NaN/Inf; ``g`` is then all zeros): a 0-dim bool tensor on the
accelerator path, where reading it would synchronise with the host, or a plain bool on CPU, where reading it is
free. Its EMAs must not move on a non-finite step; ``ema_`` gates on the tensor without a host synchronisation.
At allocation time ``scores()`` returns one score per triplet (modules x r, higher = keep).

Per-step updates are a short chain of whole-buffer ops (on CPU in cache-sized chunks, ``LoraLayout.chunks``)
computed in scratch buffers reused every step (``LoraLayout.work_buffer``), so that a step allocates nothing
adapter-sized; on the accelerator path every update is at most 20 ops and every allocation at most 40 ops with one
device-to-host transfer (benchmarks/bench_ops.py, tests/test_bench_ops.py; BENCHMARKS.md).
"""

from __future__ import annotations

import torch

from .config import NORMALIZE_METHODS, SignalConfig
from .layout import LoraLayout


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

    name: str = ""  # its entry in the registry (signals/__init__.py), which holds its role and description
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

    def fixed_pattern(self) -> torch.Tensor | None:
        """A signal that holds one rank pattern for the whole run returns it (bool, modules x r): the allocator then
        keeps exactly it from step 0 on, at every step, whatever the scheduled budget. None (every other signal):
        the scores decide, within the budget."""
        return None

    def reset(self) -> None:
        for buf in self.buffers.values():
            buf.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.buffers.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.buffers[k].copy_(v)



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
