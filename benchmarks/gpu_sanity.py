"""Correctness on a GPU of what the CPU tests cannot reach: the allocator on CUDA tensors vs the same on CPU.

    python benchmarks/gpu_sanity.py [--device cuda]

Same PEFT AdaLoRA model and gradients on CPU and on the GPU; for every signal, a few score updates (one with a
NaN gradient, which must update no EMA) and one allocation. Reported: whether the rank patterns agree, the
largest relative difference of the triplet scores (the GPU's reductions round differently: expect ~1e-6 for
signals that sum over triplets, 0 where the ops are element-wise), and whether the NaN step was skipped.
``random`` draws from the GPU's own generator there, so its pattern differs by design. Last line: JSON.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from adalora_ablation.adalora.allocator import install_allocator
from adalora_ablation.signals import SIGNALS, SignalConfig
from bench_ops import build  # same folder: run as python benchmarks/gpu_sanity.py


def run(pm, name: str, budget: int, nan_step: int):
    inner = pm.base_model.model
    allocator = install_allocator(pm, name, SignalConfig(seed=0))
    lora = [p for n, p in inner.named_parameters() if "lora_" in n]
    for step in range(4):
        if step == nan_step:
            saved = lora[0].grad.view(-1)[0].item()
            lora[0].grad.view(-1)[0] = float("nan")
            before = {k: v.clone() for k, v in allocator.signal.buffers.items()}
        allocator.update_ipt(inner)
        if step == nan_step:
            lora[0].grad.view(-1)[0] = saved
            skipped = all(torch.equal(before[k], v) for k, v in allocator.signal.buffers.items())
    pattern = allocator.mask_to_budget(inner, budget)
    return pattern, allocator.last_allocation["scores"].double().cpu(), skipped, int(allocator.nonfinite_steps)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    args = ap.parse_args(argv)
    cpu, config = build(args.layers, args.hidden, 12, torch.device("cpu"), 0)
    gpu = copy.deepcopy(cpu).to(args.device)
    for (_, src), (_, dst) in zip(cpu.named_parameters(), gpu.named_parameters()):
        if src.grad is not None:  # deepcopy leaves .grad behind
            dst.grad = src.grad.to(args.device)
    modules = sum("lora_E" in n for n, _ in cpu.named_parameters())
    budget = (config.init_r + config.target_r) * modules // 2
    e_start = {n: p.detach().clone() for n, p in cpu.named_parameters() if "lora_E" in n}
    rows = {}
    for name in SIGNALS:
        results = []
        for pm in (cpu, gpu):
            with torch.no_grad():  # every signal starts from the same adapters
                for n, p in pm.named_parameters():
                    if n in e_start:
                        p.copy_(e_start[n])
            results.append(run(pm, name, budget, nan_step=1))
        (p_cpu, s_cpu, skip_cpu, nf_cpu), (p_gpu, s_gpu, skip_gpu, nf_gpu) = results
        rel = ((s_gpu - s_cpu).abs() / s_cpu.abs().clamp_min(1e-30)).max().item()
        rows[name] = {"pattern_equal": p_cpu == p_gpu, "scores_max_rel_diff": rel,
                      "nan_step_skipped": skip_cpu and skip_gpu, "nonfinite_steps": [nf_cpu, nf_gpu]}
        print(f"{name:18s} pattern equal {p_cpu == p_gpu!s:5s}  scores max rel diff {rel:.2e}  NaN step skipped "
              f"{skip_cpu and skip_gpu}  nonfinite_steps cpu/gpu {nf_cpu}/{nf_gpu}")
    result = {"bench": "gpu_sanity", "device": args.device,
              "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else args.device,
              "signals": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
