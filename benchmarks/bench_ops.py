"""Ops and host synchronisations per allocator step, every signal and PEFT's own RankAllocator, counted exactly.

    python benchmarks/bench_ops.py [--layers 12] [--hidden 768] [--init-r 12] [--device cpu|cuda] [--verbose]

On a GPU every op is at least one kernel launch (a few microseconds each, plus Python dispatch), and every host
synchronisation stalls the CPU until the GPU has caught up, so for adapters of this size (~2M elements, a few
passes of tens of microseconds on a modern GPU) the op count, not the arithmetic, is the cost. Counting them
needs no GPU: the script runs the allocator on the accelerator path (``LoraLayout.accelerator_path``, forced on
CPU: one chunk, the finite flag kept on the device, no host reads) and records it with ``torch.profiler``.

Counted, per allocator, on a real PEFT AdaLoRA model of a DeBERTa-v3-shaped config (default: DeBERTa-v3-base's
encoder, 72 modules, init_r 12, ~2M adapter elements; the counts depend on the model's structure, not its size):
  update      RankAllocator.update_ipt, what every optimizer step before the final phase runs
  allocate    mask_to_budget plus the training callback's allocation record (the logs), what an allocation step
              adds (every deltaT steps; every step with the paper preset's deltaT=1)
  final       mask_using_rank_pattern, what every step of the final phase runs
ops: aten ops that are not views, outermost only (an op's own sub-ops are not counted again); syncs: reads of a
tensor's value on the host (``aten::_local_scalar_dense``: item/bool/int/float), Python-level copies to the host
(``tolist``/``numpy``/``cpu``) and tensors built from host data (``aten::lift_fresh``: a blocking copy to the
device). Targets (every signal): update <= 20 ops and 0 syncs, allocate <= 40 ops and <= 1 sync. The last printed
line is one JSON object; tests/test_bench_ops.py asserts the targets for every registered signal.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import sys
import tempfile
import time

import torch
from peft import AdaLoraConfig, get_peft_model
from peft.tuners.adalora.layer import RankAllocator
from torch.profiler import ProfilerActivity, profile
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

from adalora_ablation.adalora.allocator import install_allocator
from adalora_ablation.adalora.callback import AdaLoraCallback
from adalora_ablation.adalora.model import detect_target_modules
from adalora_ablation.signals import SIGNALS, SignalConfig

PEFT = "peft_native"
TARGETS = {"update_ops": 20, "update_syncs": 0, "alloc_ops": 40, "alloc_syncs": 1}
SYNC_OPS = ("aten::_local_scalar_dense", "aten::lift_fresh")
HOST_READS = ("tolist", "numpy", "cpu")


@functools.cache
def is_view_op(name: str) -> bool:
    """An aten op every overload of which returns an alias of its input without writing it (view, reshape, to,
    detach, ...): no kernel of its own; where it does copy (reshape of a non-contiguous tensor, to another dtype),
    the copy is a sub-op (clone, _to_copy) and counted as such."""
    schemas = [s for s in torch._C._jit_get_schemas_for_operator(name)
               if s.returns and str(s.returns[0].type).startswith(("Tensor", "List[Tensor]"))]  # not list/str ops
    if not schemas:
        return False
    for schema in schemas:
        alias = schema.returns[0].alias_info if schema.returns else None
        if alias is None or alias.is_write:
            return False
    return True


@contextlib.contextmanager
def counting_host_reads(counter: collections.Counter):
    """Count ``Tensor.tolist/numpy/cpu`` calls: on an accelerator each is a device-to-host copy."""
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            counter[f"Tensor.{name}"] += 1
            return original(self, *args, **kwargs)
        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def count_ops(fn) -> dict:
    """Run ``fn`` once under the profiler: {"ops", "syncs", "op_names", "sync_names"}."""
    reads = collections.Counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof, counting_host_reads(reads):
        fn()
    ops, syncs = collections.Counter(), collections.Counter(reads)
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        if event.name in SYNC_OPS:
            syncs[event.name] += 1
        if is_view_op(event.name):
            continue
        parent, nested = event.cpu_parent, False
        while parent is not None:
            if parent.name.startswith("aten::") and not is_view_op(parent.name):
                nested = True
                break
            parent = parent.cpu_parent
        if not nested:
            ops[event.name] += 1
    return {"ops": sum(ops.values()), "syncs": sum(syncs.values()), "op_names": dict(ops.most_common()),
            "sync_names": dict(syncs)}


def deberta_v3_shaped(layers: int, hidden: int, vocab: int = 128) -> DebertaV2ForSequenceClassification:
    """DeBERTa-v3-base's architecture (relative attention, shared attention key, FFN 4 x hidden), any size."""
    config = DebertaV2Config(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
        intermediate_size=4 * hidden, max_position_embeddings=512, relative_attention=True, position_buckets=256,
        norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
        position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7, num_labels=2, pooler_hidden_size=hidden,
    )
    return DebertaV2ForSequenceClassification(config)


def build(layers: int, hidden: int, init_r: int, device: torch.device, seed: int):
    """A PEFT AdaLoRA model with non-zero E and random gradients on every adapter (as after a backward)."""
    torch.manual_seed(seed)
    total_step, tinit, tfinal = 1000, 100, 100
    model = deberta_v3_shaped(layers, hidden)
    config = AdaLoraConfig(task_type="SEQ_CLS", target_modules=detect_target_modules(model), init_r=init_r,
                           target_r=max(init_r // 3, 1), tinit=tinit, tfinal=tfinal, deltaT=10, total_step=total_step,
                           modules_to_save=["pooler", "classifier"])
    pm = get_peft_model(model, config).to(device)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                if "lora_E" in n:
                    p.normal_(0.0, 0.02)  # PEFT starts E at zero
                p.grad = torch.randn_like(p)
    return pm, config


def measure(pm, config, name: str, seed: int) -> dict:
    """Counts for one allocator (PEFT's own, or ours with signal ``name``) on the accelerator path."""
    inner = pm.base_model.model
    modules = sum("lora_E" in n for n, _ in inner.named_parameters())
    budget = (config.init_r + config.target_r) * modules // 2  # mid-schedule
    if name == PEFT:
        allocator, record = RankAllocator(inner, config, "default"), lambda: None
    else:
        allocator = install_allocator(pm, name, SignalConfig(seed=seed))
        allocator.layout.accelerator_path = True  # what a GPU runs; the default on CPU is the chunked path
        run_dir = tempfile.mkdtemp(prefix="bench_ops_")
        callback = AdaLoraCallback(pm, allocator, run_dir, write_files=True)

        def record():
            allocation, allocator.last_allocation = allocator.last_allocation, None
            callback._record_allocation(500, 1.0, allocation)

    def allocate():
        pattern = allocator.mask_to_budget(inner, budget)
        record()
        return pattern

    e_before = [p.detach().clone() for n, p in inner.named_parameters() if "lora_E" in n]
    for _ in range(2):  # warm-up: buffers, index tensors, cached constants
        allocator.update_ipt(inner)
    pattern = allocate()
    allocator.mask_using_rank_pattern(inner, pattern)
    counts = {
        "update": count_ops(lambda: allocator.update_ipt(inner)),
        "alloc": count_ops(allocate),
        "final": count_ops(lambda: allocator.mask_using_rank_pattern(inner, pattern)),
    }
    with torch.no_grad():  # the next allocator starts from the same adapters
        for p, e in zip([p for n, p in inner.named_parameters() if "lora_E" in n], e_before):
            p.copy_(e)
    return counts


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768, help="hidden size (FFN: 4 x hidden)")
    ap.add_argument("--init-r", type=int, default=12)
    ap.add_argument("--device", default="cpu", help="cpu (default; the accelerator path is forced) or cuda")
    ap.add_argument("--signals", default=None, help="comma-separated (default: every registered signal)")
    ap.add_argument("--no-peft", action="store_true", help="skip PEFT's own allocator (slow to profile)")
    ap.add_argument("--verbose", action="store_true", help="print the ops of every count")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_ops: --device cuda but torch.cuda.is_available() is False")
    started = time.perf_counter()
    pm, config = build(args.layers, args.hidden, args.init_r, device, args.seed)
    signals = args.signals.split(",") if args.signals else list(SIGNALS)
    names = ([] if args.no_peft else [PEFT]) + signals
    rows = {}
    for name in names:
        counts = measure(pm, config, name, args.seed)
        rows[name] = {f"{what}_{k}": c[k] for what, c in counts.items() for k in ("ops", "syncs")}
        if args.verbose:
            for what, c in counts.items():
                print(f"{name} {what}: {c['ops']} ops {c['op_names']}; {c['syncs']} syncs {c['sync_names']}")
    lora = [p for n, p in pm.named_parameters() if "lora_" in n]
    modules = len(lora) // 3
    print(f"device {device} (accelerator path), torch {torch.__version__}; {modules} modules x "
          f"init_r {args.init_r}, {len(lora)} adapter tensors, {sum(p.numel() for p in lora):,} elements")
    print(f"{'allocator':18s} {'update ops':>10s} {'syncs':>6s} {'alloc ops':>10s} {'syncs':>6s} {'final ops':>10s} "
          f"{'syncs':>6s}")
    for name, r in rows.items():
        print(f"{name:18s} {r['update_ops']:10d} {r['update_syncs']:6d} {r['alloc_ops']:10d} {r['alloc_syncs']:6d} "
              f"{r['final_ops']:10d} {r['final_syncs']:6d}")
    ours = {k: v for k, v in rows.items() if k != PEFT}
    result = {
        "bench": "bench_ops",
        "device": str(device),
        "torch": torch.__version__,
        "modules": modules,
        "adapter_elements": sum(p.numel() for p in lora),
        **{f"max_{key}": max(r[key] for r in ours.values()) for key in next(iter(ours.values()))},
        "targets": TARGETS,
        "targets_met": all(r[k] <= limit for r in ours.values() for k, limit in TARGETS.items()),
        "allocators": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
