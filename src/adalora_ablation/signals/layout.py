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

from ..module_names import short_module_name


class LoraLayout:
    """The A, E, B parameters of every adapted module, in a fixed order, plus flat gather/split helpers.

    ``accelerator_path`` selects how the per-step work is done: False (CPU) in cache-sized chunks with host reads
    where they are free; True (any other device) as few, large ops with no host synchronisation. It defaults to
    the adapters' device; benchmarks/bench_ops.py sets it on CPU to count the ops an accelerator would run.
    """

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
        self.accelerator_path = self.device.type != "cpu"
        # Where module m starts in the flat order, and its (in, out) sizes.
        self.offsets = [sum(self.numels[: 3 * m]) for m in range(self.num_modules)]
        self.in_features = [a.shape[1] for a in self.A]
        self.out_features = [b.shape[0] for b in self.B]
        self._runs = _strided_runs(self)
        self._grids_a = _grids(self, "A")
        self._grids_b = _grids(self, "B")
        self._chunks = _module_aligned_chunks(self.numels, CPU_CHUNK_ELEMENTS)
        self._work_buffers: dict[str, torch.Tensor] = {}
        self._param_views: dict[tuple, list[torch.Tensor]] = {}  # per-parameter views into a reused flat buffer
        self._device_tensors: dict[tuple, torch.Tensor] = {}  # indices and constants, built once per device

    def e_key(self, m: int) -> str:
        """PEFT's rank_pattern key for module m (the full name of its lora_E parameter)."""
        return self.keys[m] % "lora_E"

    # -- flat gather / split -----------------------------------------------------------------------------------
    def flat_weights(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """All adapter weights in the flat order (a copy; written into ``out`` when given)."""
        return self._gather(self.params, out)

    def flat_grads(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """All adapter gradients in the flat order, zeros for a parameter without one (written into ``out``)."""
        return self._gather([p.grad for p in self.params], out)

    def _gather(self, tensors: list[torch.Tensor | None], out: torch.Tensor | None) -> torch.Tensor:
        """One ``_foreach_copy_`` of every tensor into its slot of ``out``: a single op (a few fused kernels on a
        GPU) instead of a reshape per parameter plus a cat. Views into a reused buffer are built once."""
        if out is None:
            out = torch.empty(self.numel, device=self.params[0].device, dtype=self.params[0].dtype)
            views = self._views_of(out)
        else:
            key = (out.data_ptr(), out.numel(), out.dtype, out.device)
            views = self._param_views.get(key)
            if views is None:
                views = self._param_views[key] = self._views_of(out)
        with torch.no_grad():
            if any(t is None for t in tensors):  # a parameter that got no gradient this step: zeros
                torch._foreach_zero_([v for v, t in zip(views, tensors) if t is None])
                views = [v for v, t in zip(views, tensors) if t is not None]
                tensors = [t for t in tensors if t is not None]
            if tensors:
                torch._foreach_copy_(views, tensors)
        return out

    def _views_of(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [v.view(p.shape) for v, p in zip(torch.split(flat, self.numels), self.params)]

    def weights_range(self, first: int, end: int, out: torch.Tensor) -> torch.Tensor:
        """The weights of ``params[first:end]``, flat, gathered into ``out`` (sized to fit)."""
        if first == 0 and end == len(self.params):
            return self.flat_weights(out=out)
        return torch.cat([p.detach().reshape(-1) for p in self.params[first:end]], out=out)

    def chunks(self, device: torch.device | None = None) -> list[tuple[slice, int, int]]:
        """(flat slice, first param, end param) covering the flat order, for element-wise updates.

        On CPU, whole modules grouped into chunks of about ``CPU_CHUNK_ELEMENTS``: a chain of element-wise ops
        then runs on data that stays in cache instead of streaming every full-size temporary through memory
        (measured in benchmarks/bench_allocator.py). On the accelerator path one chunk: a GPU wants few, large
        kernels.
        """
        if self.accelerator_path or (device is not None and torch.device(device).type != "cpu"):
            return [(slice(0, self.numel), 0, len(self.params))]
        return self._chunks

    def max_chunk(self, device: torch.device | None = None) -> int:
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
            if buf is not None:  # views into the old buffer would keep it alive
                self._param_views = {k: v for k, v in self._param_views.items() if k[0] != buf.data_ptr()}
            buf = self._work_buffers[name] = torch.empty(numel, device=device, dtype=dtype)
        return buf[:numel]

    def check_finite_(self, g: torch.Tensor) -> torch.Tensor | bool:
        """Whether the flat gradients ``g`` are all finite; when they are not, ``g`` is zeroed in place, so that
        every score computed from it stays finite (and ``ema_`` leaves the averages unchanged).

        Accelerator path: a 0-dim bool tensor, without a host synchronisation, in 3 ops: the sum in float64 is
        finite exactly when every float32 element is (NaN and Inf propagate; float32 values cannot overflow it).
        CPU: a bool, read for free (``all_finite``, faster there), and ``g`` is touched only on a bad step."""
        if not self.accelerator_path:
            finite = bool(all_finite(g))
            if not finite:
                g.zero_()
            return finite
        finite = torch.isfinite(torch.sum(g, dtype=torch.float64))
        torch.where(finite, g, self._constant("zero", g.dtype, g.device), out=g)
        return finite

    def _constant(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, dtype, torch.device(device))
        if key not in self._device_tensors:
            self._device_tensors[key] = torch.zeros((), dtype=dtype, device=device)
        return self._device_tensors[key]

    def split(self, flat: torch.Tensor):
        """Per-module views (A: r x in, E: r x 1, B: out x r) of a flat per-element tensor."""
        views = [v.view(p.shape) for v, p in zip(torch.split(flat, self.numels), self.params)]
        return [(views[3 * m], views[3 * m + 1], views[3 * m + 2]) for m in range(self.num_modules)]

    def combine_elements(self, element_score: torch.Tensor) -> torch.Tensor:
        """Triplet scores (modules x r) from per-element scores, exactly as PEFT's ``mask_to_budget`` combines them:
        E score + (mean over the A row + mean over the B column), bit for bit.

        A handful of ops for all modules: each mean runs over a strided view that covers a whole grid of equally
        shaped, equally spaced modules (e.g. Q, K, V, attention output and FFN-in of every layer: they all have
        768 inputs), reducing every row exactly as PEFT's per-module ``torch.mean`` does, and writes straight into
        the modules' rows of the result; the E entries are one gather.
        """
        flat = element_score if element_score.is_contiguous() else element_score.contiguous()
        r, shape = self.r, (self.num_modules, self.r)
        mean_a = self.work_buffer("combine_a", self.num_triplets, flat.dtype, flat.device).view(shape)
        mean_b = self.work_buffer("combine_b", self.num_triplets, flat.dtype, flat.device).view(shape)
        with serial_on_cpu(flat.device):  # small ops: the intra-op pool only adds stalls
            for grid in self._grids_a:  # mean over each A row
                torch.mean(grid.source(flat, r), dim=-1, out=grid.target(mean_a))
            for grid in self._grids_b:  # mean over each B column
                torch.mean(grid.source(flat, r), dim=-2, out=grid.target(mean_b))
            e = flat.index_select(0, self._index("e", flat.device)).view(shape)
            return e + mean_a.add_(mean_b)  # PEFT: E + (A mean + B mean)

    def triplet_sums(self, flat: torch.Tensor) -> torch.Tensor:
        """Sum of a flat per-element tensor over each triplet's elements (A row, E entry, B column): modules x r.

        CPU: E + sum(A row) + sum(B column) from ``triplet_part_sums``. Accelerator path: one gather into triplet
        order and one segmented sum, deterministic (no atomics).
        """
        if not flat.is_contiguous():
            flat = flat.contiguous()
        if self.accelerator_path:
            by_triplet = flat.index_select(0, self._index("triplet_order", flat.device))
            sums = torch.segment_reduce(by_triplet, "sum", offsets=self._index("triplet_offsets", flat.device),
                                        unsafe=True)  # unsafe: skips checks that would read the device
            return sums.view(self.num_modules, self.r)
        a, e, b = self.triplet_part_sums(flat)
        return e + a + b

    def triplet_part_sums(self, flat: torch.Tensor) -> torch.Tensor:
        """(sum over the A row, the E entry, sum over the B column) of a flat per-element tensor, for every triplet:
        a (3, modules, r) tensor.

        Computed over strided views that cover whole runs of equally shaped, equally spaced modules (e.g. the query
        projections of all layers) at once: a handful of reductions, one concatenation and one reordering instead
        of an index_add_ over every element (which is slow on CPU) or a Python loop over modules.
        """
        if not flat.is_contiguous():
            flat = flat.contiguous()
        base, r = flat.storage_offset(), self.r
        a_sums, e_entries, b_sums = [], [], []
        for start, count, stride, din, dout in self._runs:
            o = base + start
            a_sums.append(flat.as_strided((count, r, din), (stride, din, 1), o).sum(dim=2))
            e_entries.append(flat.as_strided((count, r), (stride, 1), o + r * din))
            b_sums.append(flat.as_strided((count, dout, r), (stride, r, 1), o + r * din + r).sum(dim=1))
        parts = torch.cat(a_sums + e_entries + b_sums)  # (3 x modules, r): A sums, E entries, B sums, in run order
        return parts.index_select(0, self._index("run_order3", flat.device)).view(3, self.num_modules, r)

    def mask_E_(self, keep: torch.Tensor) -> None:
        """Zero the E entries of every triplet that ``keep`` (modules x r, bool) drops, as PEFT's ``masked_fill_``
        does (a masked entry becomes +0.0 whatever it held), in three ops for all modules."""
        with torch.no_grad():
            stacked = torch.stack(self.E)  # modules x r x 1
            masked = torch.where(keep.view(*keep.shape, 1), stacked, 0.0)
            torch._foreach_copy_(self.E, masked.unbind(0))

    def _index(self, name: str, device: torch.device) -> torch.Tensor:
        """Index tensors that depend only on the layout, built on the host once per device."""
        key = (name, torch.device(device))
        if key not in self._device_tensors:
            self._device_tensors[key] = _build_index(self, name).to(device)
        return self._device_tensors[key]


class _Grid:
    """Modules whose A (or B) parts lie on a 2-D grid in the flat order: module ``m0 + i * outer_m + j * inner_m``
    has its part at ``o0 + i * outer_o + j * inner_o``, for i < outer, j < inner, all with the same ``size``
    (in_features for A, out_features for B)."""

    def __init__(self, part, m0, o0, outer, outer_m, outer_o, inner, inner_m, inner_o, size):
        self.part, self.m0, self.o0, self.size = part, m0, o0, size
        self.outer, self.outer_m, self.outer_o = outer, outer_m, outer_o
        self.inner, self.inner_m, self.inner_o = inner, inner_m, inner_o

    def source(self, flat: torch.Tensor, r: int) -> torch.Tensor:
        """(outer, inner, r, in) view of the grid's A parts, or (outer, inner, out, r) of its B parts."""
        rows, cols = (r, self.size) if self.part == "A" else (self.size, r)
        return flat.as_strided((self.outer, self.inner, rows, cols), (self.outer_o, self.inner_o, cols, 1),
                               flat.storage_offset() + self.o0)

    def target(self, out: torch.Tensor) -> torch.Tensor:
        """(outer, inner, r) view of the grid's modules' rows in a (modules x r) tensor."""
        r = out.shape[1]
        return out.as_strided((self.outer, self.inner, r), (self.outer_m * r, self.inner_m * r, 1),
                              out.storage_offset() + self.m0 * r)


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


def _arithmetic_runs(points: list[tuple[int, int]]) -> list[tuple[int, int, int, int, int]]:
    """Cut (module, offset) points, in order, into maximal runs (m0, o0, count, dm, do) at constant spacing."""
    runs, i = [], 0
    while i < len(points):
        j = i + 1
        dm, do = (points[j][0] - points[i][0], points[j][1] - points[i][1]) if j < len(points) else (0, 0)
        while j < len(points) and (points[j][0] - points[j - 1][0], points[j][1] - points[j - 1][1]) == (dm, do):
            j += 1
        if j - i == 1:
            dm, do = 0, 0
        runs.append((points[i][0], points[i][1], j - i, dm, do))
        i = j
    return runs


def _grids(layout: LoraLayout, part: str) -> list[_Grid]:
    """Cover every module's A (or B) part with a few 2-D grids (see ``_Grid``).

    First, per matrix kind (name with layer numbers blanked) and size, maximal 1-D runs at constant spacing in
    both module index and flat offset: one per kind when all layers look alike. Then runs of equal length and
    spacing whose starts are themselves equally spaced merge into one grid: for DeBERTa the A parts of Q, K, V,
    attention output and FFN-in of every layer (all 768 inputs) are one grid, FFN-out's another.
    """
    r = layout.r
    size = layout.in_features if part == "A" else layout.out_features

    def part_offset(m: int) -> int:
        return layout.offsets[m] + (0 if part == "A" else r * layout.in_features[m] + r)

    kinds: dict[tuple, list[int]] = {}
    for m in range(layout.num_modules):
        kinds.setdefault((re.sub(r"\d+", "*", layout.names[m]), size[m]), []).append(m)
    families: dict[tuple, list[tuple[int, int]]] = {}  # runs of the same shape: (count, dm, do, size) -> starts
    for (_, n), members in kinds.items():
        for m0, o0, count, dm, do in _arithmetic_runs([(m, part_offset(m)) for m in members]):
            families.setdefault((count, dm, do, n), []).append((m0, o0))
    grids = []
    for (count, dm, do, n), starts in families.items():
        for m0, o0, outer, outer_m, outer_o in _arithmetic_runs(sorted(starts)):
            grids.append(_Grid(part, m0, o0, outer, outer_m, outer_o, count, dm, do, n))
    return grids


def _build_index(layout: LoraLayout, name: str) -> torch.Tensor:
    """Host-side index tensors: "e" (flat position of every E entry, triplet order), "run_order" and "run_order3"
    (see ``triplet_part_sums``), "triplet_order" (every element, grouped by triplet: A row, E entry, B column) and
    "triplet_offsets" (where each triplet's group starts in it, plus the end)."""
    r = layout.r
    if name == "run_order":
        return torch.tensor(_run_order(layout._runs, layout.offsets))
    if name == "run_order3":  # the same for the A sums, E entries and B sums stacked (triplet_part_sums)
        order = torch.tensor(_run_order(layout._runs, layout.offsets))
        return torch.cat([order + k * layout.num_modules for k in range(3)])
    if name == "e":
        return torch.cat([torch.arange(r) + o + r * din for o, din in zip(layout.offsets, layout.in_features)])
    if name == "triplet_order":
        groups = []
        for o, din, dout in zip(layout.offsets, layout.in_features, layout.out_features):
            a = o + torch.arange(r * din).view(r, din)
            e = o + r * din + torch.arange(r).view(r, 1)
            b = o + r * din + r + torch.arange(dout).view(1, dout) * r + torch.arange(r).view(r, 1)
            groups.append(torch.cat([a, e, b], dim=1).view(-1))
        order = torch.cat(groups)
        return order.int() if layout.numel < 2**31 else order
    if name == "triplet_offsets":
        lengths = torch.tensor([din + 1 + dout for din, dout in zip(layout.in_features, layout.out_features)])
        return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths.repeat_interleave(r), 0)])
    raise KeyError(name)
