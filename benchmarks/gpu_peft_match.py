"""baseline_adalora against PEFT's own allocator on one device and precision: the kept triplets at every step.

    python benchmarks/gpu_peft_match.py --device cuda [--bf16] [--layers 12 --hidden 768] [--steps 60]

The loop PEFT documents for AdaLoRA (forward, backward, AdamW step, ``update_and_allocate``, zero_grad) on a
DeBERTa-v3-base-shaped model (random weights, random token batches), run twice from the same seed: once with PEFT's
RankAllocator, once after ``install_allocator(model, "baseline_adalora")``. With deterministic algorithms on, both
runs see the same gradients, so the rank pattern after every step and every loss must be equal. ``--bf16`` runs the
forward under bf16 autocast, as the Trainer's ``--bf16`` does. The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from bench_ops import deberta_v3_shaped  # same folder: run as python benchmarks/gpu_peft_match.py
from peft import AdaLoraConfig, get_peft_model

from adalora_ablation.adalora.allocator import install_allocator
from adalora_ablation.adalora.model import detect_target_modules
from adalora_ablation.signals import SignalConfig


def run(args, ours: bool) -> tuple[list, list]:
    torch.manual_seed(args.seed)
    model = deberta_v3_shaped(args.layers, args.hidden, vocab=1000)
    tinit, tfinal = args.steps // 6, args.steps // 6
    config = AdaLoraConfig(task_type="SEQ_CLS", target_modules=detect_target_modules(model), init_r=12, target_r=4,
                           tinit=tinit, tfinal=tfinal, deltaT=2, total_step=args.steps,
                           modules_to_save=["pooler", "classifier"])
    pm = get_peft_model(model, config).to(args.device)
    if ours:
        install_allocator(pm, "baseline_adalora", SignalConfig())
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(args.seed + 1)
    patterns, losses = [], []
    for step in range(args.steps):
        x = torch.randint(5, 1000, (args.batch, args.seq), generator=g).to(args.device)
        y = torch.randint(0, 2, (args.batch,), generator=g).to(args.device)
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = pm(input_ids=x, labels=y).loss
        loss.backward()
        opt.step()
        pm.base_model.update_and_allocate(step)
        rp = pm.peft_config["default"].rank_pattern
        patterns.append(None if rp is None else {k: [bool(v) for v in m] for k, m in rp.items()})
        losses.append(loss.item())
        opt.zero_grad()
    return patterns, losses


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(True)
    plain, plain_losses = run(args, ours=False)
    ours, our_losses = run(args, ours=True)
    allocations = [i for i, p in enumerate(plain) if p is not None]
    moved = len({json.dumps(plain[i], sort_keys=True) for i in allocations})
    differ = [i for i in range(args.steps) if plain[i] != ours[i]]
    result = {"device": args.device, "bf16": args.bf16, "steps": args.steps, "allocation_steps": len(allocations),
              "distinct_patterns": moved, "patterns_equal": not differ, "first_differing_step": differ[:1],
              "losses_equal": plain_losses == our_losses,
              "final_total_rank": sum(map(sum, plain[-1].values())) if plain[-1] else None}
    result["passed"] = result["patterns_equal"] and result["losses_equal"] and moved > 1
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    raise SystemExit(0 if main()["passed"] else 1)
