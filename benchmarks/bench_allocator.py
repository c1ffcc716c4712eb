"""Per-optimizer-step allocator cost, every signal vs PEFT's own RankAllocator, on DeBERTa-v3-base-shaped adapters.

    python benchmarks/bench_allocator.py [--device cpu|cuda] [--bf16] [--repeats N] [--threads T]

The model is a DebertaV2ForSequenceClassification with DeBERTa-v3-base's encoder (12 layers, hidden 768, FFN 3072,
12 heads) and a 128-token vocabulary, wrapped by PEFT's get_peft_model with AdaLoRA (init_r 12) on Q, K, V,
attention output, FFN in and FFN out of every layer: 72 modules, 216 adapter tensors, ~2.0M adapter elements.
One real training step (forward, backward, AdamW) gives the gradients (E is made non-zero first, else A and B
get none) and the step time the allocator is compared to (``--bf16``: that step under bf16 autocast, as the
Trainer's ``--bf16`` runs it; several times shorter on a GPU, so every share grows).

Timed, per allocator, interleaved in random order over ``--repeats`` rounds, median reported:
  update      RankAllocator.update_ipt: the score update that runs at every optimizer step
  allocate    RankAllocator.mask_to_budget at a mid-schedule budget: what an allocation step adds (every deltaT
              steps; every step with the paper preset's deltaT=1)
  final       RankAllocator.mask_using_rank_pattern: what every step of the final phase costs
Shares are of the measured training step: ``share_update`` for an ordinary step, ``share_alloc_step`` for an
allocation step (update + allocate), the worst case. The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

import torch
from peft import AdaLoraConfig, get_peft_model
from peft.tuners.adalora.layer import RankAllocator
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

from adalora_ablation.adalora.allocator import SignalRankAllocator
from adalora_ablation.adalora.model import detect_target_modules
from adalora_ablation.signals import SIGNALS, SignalConfig

PEFT = "peft_native"


def deberta_v3_base_shaped(layers: int, vocab: int = 128) -> DebertaV2ForSequenceClassification:
    config = DebertaV2Config(
        vocab_size=vocab, hidden_size=768, num_hidden_layers=layers, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=512, relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
        share_att_key=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1, position_biased_input=False,
        type_vocab_size=0, layer_norm_eps=1e-7, num_labels=2, pooler_hidden_size=768, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    return DebertaV2ForSequenceClassification(config)


def peft_triplet_scores(peft_allocator: RankAllocator, layout) -> torch.Tensor:
    """PEFT 0.18.1's mask_to_budget triplet scores (modules x r, layout order), op for op, from its own EMAs."""
    rows = []
    for key in layout.keys:
        score = {part: peft_allocator._element_score(key % part) for part in ("lora_A", "lora_E", "lora_B")}
        ipt_ab = torch.cat([torch.mean(score["lora_A"], dim=1, keepdim=True),
                            torch.mean(score["lora_B"], dim=0, keepdim=False).view(-1, 1)], dim=1)
        rows.append(peft_allocator._combine_ipt(score["lora_E"], ipt_ab))
    return torch.stack(rows)


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=30, help="timed rounds per allocator (median reported)")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--init-r", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--batch", type=int, default=None, help="step-time batch (default cpu 8, cuda 32)")
    ap.add_argument("--seq", type=int, default=None, help="step-time sequence length (default cpu 128, cuda 320)")
    ap.add_argument("--step-repeats", type=int, default=None, help="timed training steps (default cpu 3, cuda 10)")
    ap.add_argument("--bf16", action="store_true", help="time the training step under bf16 autocast")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_allocator: --device cuda but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (32 if cuda else 8)
    seq = args.seq or (320 if cuda else 128)
    step_repeats = args.step_repeats or (10 if cuda else 3)
    load_before = os.getloadavg()

    # -- model, adapters, one real training step -----------------------------------------------------------------
    torch.manual_seed(args.seed)
    model = deberta_v3_base_shaped(args.layers)
    target = detect_target_modules(model)
    total_step, tinit, tfinal = 1000, 100, 100
    peft_config = AdaLoraConfig(task_type="SEQ_CLS", target_modules=target, modules_to_save=["pooler", "classifier"],
                                init_r=args.init_r, target_r=4, tinit=tinit, tfinal=tfinal, deltaT=10,
                                total_step=total_step)
    pm = get_peft_model(model, peft_config).to(device)
    pm.train()
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_E" in n:
                p.normal_(0.0, 0.02)  # PEFT starts E at zero, which would leave A and B without gradient
    inner = pm.base_model.model
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randint(5, 128, (batch, seq), generator=gen).to(device)
    y = torch.randint(0, 2, (batch,), generator=gen).to(device)

    def train_step():
        opt.zero_grad(set_to_none=False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = pm(input_ids=x, labels=y).loss
        loss.backward()
        opt.step()

    timed(train_step, device)  # warm-up
    step_times = [timed(train_step, device) for _ in range(step_repeats)]
    step_s = statistics.median(step_times)
    opt.zero_grad(set_to_none=False)
    pm(input_ids=x, labels=y).loss.backward()  # leave real gradients in .grad for the allocators
    opt = None  # free the optimizer state before the allocators are measured

    lora = [(n, p) for n, p in pm.named_parameters() if "lora_" in n]
    n_modules = sum("lora_E" in n for n, _ in lora)
    n_elements = sum(p.numel() for _, p in lora)
    grads_finite = all(bool(torch.isfinite(p.grad).all()) for _, p in lora)

    # -- allocators ----------------------------------------------------------------------------------------------
    allocators = {PEFT: RankAllocator(inner, peft_config, "default")}
    for name in SIGNALS:
        allocators[name] = SignalRankAllocator(inner, peft_config, "default", name, SignalConfig(seed=args.seed))
    budget, _ = allocators[PEFT].budget_schedule((tinit + total_step - tfinal) // 2)  # mid-schedule
    for a in allocators.values():  # warm-up: buffers, caches, lazy init
        for _ in range(3):
            a.update_ipt(inner)
    patterns = {k: a.mask_to_budget(inner, budget) for k, a in allocators.items()}
    # Same gradients, same updates: baseline_adalora must pick exactly PEFT's triplets (no ties in real scores).
    same_as_peft = {k: list(v) for k, v in patterns["baseline_adalora"].items()} == \
        {k: list(v) for k, v in patterns[PEFT].items()}
    # And the triplet scores themselves, bit for bit, against PEFT's per-module ops on PEFT's own EMAs.
    ours_scores = allocators["baseline_adalora"].signal.scores()
    peft_scores = peft_triplet_scores(allocators[PEFT], allocators["baseline_adalora"].layout)
    scores_bitwise = bool(torch.equal(ours_scores, peft_scores))
    scores_max_rel_diff = float(((ours_scores - peft_scores).abs() / peft_scores.abs().clamp_min(1e-30)).max())

    rng = random.Random(args.seed)
    order = list(allocators)

    minima = {}

    def interleaved(what, fn, rounds):
        times = {k: [] for k in order}
        for _ in range(rounds):
            rng.shuffle(order)
            for k in order:
                times[k].append(timed(lambda k=k: fn(k, allocators[k]), device))
        minima[what] = {k: min(v) for k, v in times.items()}
        return {k: statistics.median(v) for k, v in times.items()}

    update = interleaved("update", lambda k, a: a.update_ipt(inner), args.repeats)
    allocate = interleaved("allocate", lambda k, a: a.mask_to_budget(inner, budget), max(5, args.repeats // 3))
    final = interleaved("final", lambda k, a: a.mask_using_rank_pattern(inner, patterns[k]), args.repeats)
    load_after = os.getloadavg()

    # -- report --------------------------------------------------------------------------------------------------
    ms = lambda s: round(s * 1e3, 3)  # noqa: E731
    rows = {}
    for k in allocators:
        alloc_step = update[k] + allocate[k]
        rows[k] = {
            "update_ms": ms(update[k]), "allocate_ms": ms(allocate[k]), "final_ms": ms(final[k]),
            "update_speedup_vs_peft": round(update[PEFT] / update[k], 2),
            "alloc_step_speedup_vs_peft": round((update[PEFT] + allocate[PEFT]) / alloc_step, 2),
            "final_speedup_vs_peft": round(final[PEFT] / final[k], 2),
            "share_update_pct": round(100 * update[k] / step_s, 3),
            "share_alloc_step_pct": round(100 * alloc_step / step_s, 3),
            "update_ms_min": ms(minima["update"][k]),
            "update_speedup_vs_peft_of_minima": round(minima["update"][PEFT] / minima["update"][k], 2),
        }
    print(f"device {device} ({torch.cuda.get_device_name(device) if cuda else cpu_model_name()}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load avg {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}")
    print(f"adapters: {n_modules} modules x init_r {args.init_r}, {len(lora)} tensors, {n_elements:,} elements; "
          f"gradients finite: {grads_finite}")
    print(f"training step ({'bf16 autocast' if args.bf16 else 'fp32'}, batch {batch} x {seq} tokens, fwd+bwd+AdamW): "
          f"median {step_s * 1e3:.1f} ms of "
          f"{step_repeats}")
    print(f"baseline_adalora's rank pattern at budget {budget} identical to PEFT's: {same_as_peft}; triplet scores "
          f"bitwise equal: {scores_bitwise} (largest relative difference {scores_max_rel_diff:.2e})")
    print(f"allocator timings, median of {args.repeats} interleaved rounds ({max(5, args.repeats // 3)} for allocate):")
    head = f"{'allocator':18s} {'update ms':>10s} {'x PEFT':>7s} {'allocate ms':>12s} {'alloc-step x PEFT':>18s} " \
           f"{'final ms':>9s} {'x PEFT':>7s} {'share upd %':>12s} {'share alloc %':>14s}"
    print(head)
    for k, r in rows.items():
        print(f"{k:18s} {r['update_ms']:10.3f} {r['update_speedup_vs_peft']:7.2f} {r['allocate_ms']:12.3f} "
              f"{r['alloc_step_speedup_vs_peft']:18.2f} {r['final_ms']:9.3f} {r['final_speedup_vs_peft']:7.2f} "
              f"{r['share_update_pct']:12.3f} {r['share_alloc_step_pct']:14.3f}")
    print("fastest of the rounds (less sensitive to other load): update ms " + ", ".join(
        f"{k} {r['update_ms_min']:.3f} (x{r['update_speedup_vs_peft_of_minima']:.2f})" for k, r in rows.items()))
    ours = [k for k in rows if k != PEFT]
    result = {
        "bench": "bench_allocator",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "modules": n_modules,
        "adapter_elements": n_elements,
        "step_ms": ms(step_s),
        "step_batch": [batch, seq],
        "repeats": args.repeats,
        "load_avg": [round(load_before[0], 2), round(load_after[0], 2)],
        "baseline_pattern_equals_peft": same_as_peft,
        "baseline_scores_bitwise_equal_peft": scores_bitwise,
        "baseline_scores_max_rel_diff": scores_max_rel_diff,
        "precision": "bf16" if args.bf16 else "fp32",
        "speedup_vs_peft": rows["baseline_adalora"]["update_speedup_vs_peft"],
        "speedup_vs_peft_of_minima": rows["baseline_adalora"]["update_speedup_vs_peft_of_minima"],
        "alloc_step_speedup_vs_peft": rows["baseline_adalora"]["alloc_step_speedup_vs_peft"],
        "final_speedup_vs_peft": rows["baseline_adalora"]["final_speedup_vs_peft"],
        "max_step_share_pct": max(rows[k]["share_update_pct"] for k in ours),
        "max_alloc_step_share_pct": max(rows[k]["share_alloc_step_pct"] for k in ours),
        "peft_step_share_pct": rows[PEFT]["share_update_pct"],
        "allocators": rows,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
