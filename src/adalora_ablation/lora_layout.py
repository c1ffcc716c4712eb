"""Where every AdaLoRA triplet lives: one fixed, flat view over all adapted modules.

AdaLoRA's unit of rank is the triplet i of a module m: row i of A (r x in), entry i of E (r x 1) and column i of
B (out x r). Signals score triplets; the allocator keeps the top ``budget`` of them. This class fixes the module
order once (PEFT's ``RankAllocator.name_set`` order) so that every signal, every log line and every test agree on
which row of a (modules x r) score matrix belongs to which module.
"""

from __future__ import annotations

import contextlib
import re

import torch

from .module_names import short_module_name


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
        # Where module m starts in the flat order, and its (in, out) sizes.
        self.offsets = [sum(self.numels[: 3 * m]) for m in range(self.num_modules)]
        self.in_features = [a.shape[1] for a in self.A]
        self.out_features = [b.shape[0] for b in self.B]
        self._runs = _strided_runs(self)
        self._run_order: torch.Tensor | None = None  # row of the concatenated run results for every module
        self._chunks = _module_aligned_chunks(self.numels, CPU_CHUNK_ELEMENTS)
        self._work_buffers: dict[str, torch.Tensor] = {}

    def e_key(self, m: int) -> str:
        """PEFT's rank_pattern key for module m (the full name of its lora_E parameter)."""
        return self.keys[m] % "lora_E"

    # -- flat gather / split -----------------------------------------------------------------------------------
    def flat_weights(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """All adapter weights in the flat order (a copy; written into ``out`` when given)."""
        parts = [p.detach().reshape(-1) for p in self.params]
        return torch.cat(parts) if out is None else torch.cat(parts, out=out)

    def flat_grads(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """All adapter gradients in the flat order, zeros for a parameter without one (written into ``out``)."""
        grads = []
        for p in self.params:
            g = p.grad
            grads.append(torch.zeros(p.numel(), device=p.device, dtype=p.dtype) if g is None
                         else g.detach().reshape(-1))
        return torch.cat(grads) if out is None else torch.cat(grads, out=out)

    def weights_range(self, first: int, end: int, out: torch.Tensor) -> torch.Tensor:
        """The weights of ``params[first:end]``, flat, gathered into ``out`` (sized to fit)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params[first:end]], out=out)

    def chunks(self, device: torch.device) -> list[tuple[slice, int, int]]:
        """(flat slice, first param, end param) covering the flat order, for element-wise updates.

        On CPU, whole modules grouped into chunks of about ``CPU_CHUNK_ELEMENTS``: a chain of element-wise ops
        then runs on data that stays in cache instead of streaming every full-size temporary through memory
        (measured in benchmarks/bench_allocator.py). Elsewhere one chunk: a GPU wants few, large kernels.
        """
        if torch.device(device).type == "cpu":
            return self._chunks
        return [(slice(0, self.numel), 0, len(self.params))]

    def max_chunk(self, device: torch.device) -> int:
        return max(c[0].stop - c[0].start for c in self.chunks(device))

    def work_buffer(self, name: str, numel: int | None = None, dtype: torch.dtype | None = None,
                    device: torch.device | None = None) -> torch.Tensor:
        """A flat scratch buffer (``numel`` elements, default all) owned by the layout and reused every step, so
        that the per-step update allocates nothing adapter-sized. Contents are scratch: any user may overwrite
        them. The allocator gathers gradients (and weights, for signals that want them) into "grads" and
        "weights"; signals compute in "work0", "work1", ... one at a time, so signals share them."""
        numel = self.numel if numel is None else numel
        dtype = dtype or self.params[0].dtype
        device = torch.device(device) if device is not None else self.device
        buf = self._work_buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = self._work_buffers[name] = torch.empty(numel, device=device, dtype=dtype)
        return buf[:numel]

    def split(self, flat: torch.Tensor):
        """Per-module views (A: r x in, E: r x 1, B: out x r) of a flat per-element tensor."""
        views = [v.view(p.shape) for v, p in zip(torch.split(flat, self.numels), self.params)]
        return [(views[3 * m], views[3 * m + 1], views[3 * m + 2]) for m in range(self.num_modules)]

    def combine_elements(self, element_score: torch.Tensor) -> torch.Tensor:
        """Triplet scores (modules x r) from per-element scores, exactly as PEFT's ``mask_to_budget`` combines them:
        E score + (mean over the A row + mean over the B column), with the same ops in the same order."""
        rows = []
        with serial_on_cpu(element_score.device):  # many small ops: the intra-op pool only adds stalls
            for a, e, b in self.split(element_score):
                ipt_ab = torch.cat([torch.mean(a, dim=1, keepdim=True),
                                    torch.mean(b, dim=0, keepdim=False).view(-1, 1)], 1)
                rows.append(e.view(-1) + ipt_ab.sum(dim=1, keepdim=False).view(-1))
            return torch.stack(rows)

    def triplet_sums(self, flat: torch.Tensor) -> torch.Tensor:
        """Sum of a flat per-element tensor over each triplet's elements (A row, E entry, B column): modules x r.

        Computed as E + sum(A row) + sum(B column) over strided views that cover whole runs of equally shaped,
        equally spaced modules (e.g. the query projections of all layers) at once: a handful of reductions
        instead of an index_add_ over every element (which is slow on CPU) or a Python loop over modules.
        """
        if not flat.is_contiguous():
            flat = flat.contiguous()
        base, r = flat.storage_offset(), self.r
        rows = []
        for start, count, stride, din, dout in self._runs:
            o = base + start
            a = flat.as_strided((count, r, din), (stride, din, 1), o).sum(dim=2)
            e = flat.as_strided((count, r), (stride, 1), o + r * din)
            b = flat.as_strided((count, dout, r), (stride, r, 1), o + r * din + r).sum(dim=1)
            rows.append(e + a + b)
        sums = rows[0] if len(rows) == 1 else torch.cat(rows)
        if self._run_order is None or self._run_order.device != flat.device:
            self._run_order = torch.tensor(_run_order(self._runs, self.offsets), device=flat.device)
        return sums.index_select(0, self._run_order)


CPU_CHUNK_ELEMENTS = 1 << 18  # 1 MiB of float32 per operand: a few operands stay in L2/L3 across an op chain


def _module_aligned_chunks(numels: list[int], target: int) -> list[tuple[slice, int, int]]:
    """Consecutive modules (3 params each) grouped into chunks of at least ``target`` elements (the last may
    be smaller; a single module larger than ``target`` is a chunk of its own)."""
    chunks, start_param, start, pos = [], 0, 0, 0
    for m in range(0, len(numels), 3):
        pos += sum(numels[m:m + 3])
        if pos - start >= target or m + 3 >= len(numels):
            chunks.append((slice(start, pos), start_param, m + 3))
            start_param, start = m + 3, pos
    return chunks


@contextlib.contextmanager
def serial_on_cpu(device: torch.device):
    """Run torch CPU ops single-threaded inside the block (no-op on other devices).

    The per-step update is a chain of memory-bound element-wise ops over a few MB: a second thread buys little
    (one core nearly saturates memory bandwidth), while on a busy machine every op that forks the intra-op pool
    stalls until the other core is free; measured in benchmarks/bench_allocator.py. Results are unchanged: the
    ops are element-wise or reduce into many outputs, each summed by one thread either way.
    """
    if torch.device(device).type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def all_finite(t: torch.Tensor) -> torch.Tensor:
    """0-dim bool: no NaN/Inf in ``t`` (same as ``torch.isfinite(t).all()``, without the bool temporary and
    several times faster on CPU; min and max propagate NaN). No host synchronisation."""
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    lo, hi = torch.aminmax(t)
    return torch.isfinite(lo) & torch.isfinite(hi)


def _strided_runs(layout: LoraLayout) -> list[tuple[int, int, int, int, int]]:
    """Cover the modules with runs (start, count, stride, in, out) of equally shaped modules at equal spacing.

    Modules are grouped by shape and by name with layer numbers blanked (``layer.*.attention.self.query_proj``);
    within a group, modules in flat order are cut into maximal arithmetic runs. A transformer whose layers all
    look alike gives one run per matrix kind (6 for DeBERTa / BERT); anything else still works, with more runs.
    """
    groups: dict[tuple, list[int]] = {}
    for m in range(layout.num_modules):
        kind = re.sub(r"\d+", "*", layout.names[m])
        groups.setdefault((layout.in_features[m], layout.out_features[m], kind), []).append(m)
    runs = []
    for (din, dout, _), members in groups.items():
        offsets = sorted(layout.offsets[m] for m in members)
        i = 0
        while i < len(offsets):
            j = i + 1
            stride = offsets[j] - offsets[i] if j < len(offsets) else 1
            while j < len(offsets) and offsets[j] - offsets[j - 1] == stride:
                j += 1
            runs.append((offsets[i], j - i, stride, din, dout))
            i = j
    return runs


def _run_order(runs, offsets: list[int]) -> list[int]:
    """For every module (in layout order), its row in the concatenation of the runs' results."""
    row_of_offset, row = {}, 0
    for start, count, stride, _, _ in runs:
        for k in range(count):
            row_of_offset[start + k * stride] = row
            row += 1
    return [row_of_offset[o] for o in offsets]
