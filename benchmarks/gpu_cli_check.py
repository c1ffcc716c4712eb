"""The device checks that go through the command line, as a user's first real run does (cpu or cuda).

    python benchmarks/gpu_cli_check.py make-model DIR [--layers 12 --hidden 768]
    python benchmarks/gpu_cli_check.py signals  --model DIR --out OUT [--bf16] [--max-steps 60]
    python benchmarks/gpu_cli_check.py resume   --model DIR --out OUT [--bf16] [--signal combo]
    python benchmarks/gpu_cli_check.py grid     --model DIR --out OUT --runs-per-gpu 1 2 4 [--gpu 0]

``make-model`` writes a DeBERTa-v3-base-shaped model folder with random weights (12 layers, hidden 768, FFN 3072,
relative attention; no hub there) and tiny-deberta's tokenizer, which ``--model DIR`` then loads like a
downloaded one. The runs use the embedded ``planted`` task, so no data travels.

- ``signals``: one short ``train`` run per study signal; passes when every run finishes with the exact budget
  (``budget_check_passed`` and ``total_rank == target_budget`` in its summary).
- ``resume``: an uninterrupted run, and the same run stopped by SIGTERM after its 4th allocation (it checkpoints that
  step and exits 75) then resumed with ``--resume True``; passes when the allocations, the signal scores, the final
  ranks and the eval metrics are equal. Both runs use ``--full-determinism True`` (deterministic CUDA kernels), which
  bitwise equality on a GPU needs.
- ``grid``: ``ablate --gpus G --runs-per-gpu K`` over the study signals for each K: the grid's wall time, runs per
  hour, and each run's peak GPU memory (sampled from nvidia-smi every 0.2 s; CPU: not measured).

The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

STUDY = ["baseline_adalora", "importance_only", "plasticity_only", "combo"]
# Short planted runs with the whole schedule in them: warm-up, 8+ allocations, a final fixed-budget phase.
RUN = ["--task", "planted", "--seed", "1", "--max-steps", "60", "--tinit", "10", "--tfinal", "10", "--deltaT", "4",
       "--logging-steps", "10", "--save-strategy", "no", "--eval-strategy", "no", "--no-adapter-effect"]


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "adalora_ablation", *args]


def make_model(folder: Path, layers: int, hidden: int) -> dict:
    import torch
    from bench_ops import deberta_v3_shaped  # same folder: run as python benchmarks/gpu_cli_check.py

    from adalora_ablation.adalora.model import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = deberta_v3_shaped(layers, hidden, vocab=len(tokenizer))
    model.deberta.save_pretrained(folder)  # the encoder alone, as on the hub: each task gets its own head
    tokenizer.save_pretrained(folder)
    return {"model": str(folder), "layers": layers, "hidden": hidden,
            "parameters": sum(p.numel() for p in model.parameters())}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "final_summary.json").read_text())


def run_dir(root: Path, signal_name: str) -> Path:
    return root / "planted" / signal_name / "1"


def train(root: Path, model: str, signal_name: str, extra: list[str]) -> list[str]:
    return cli("train", *RUN, "--model", model, "--signal", signal_name, "--output-root", str(root), *extra)


def check_signals(args) -> dict:
    rows = {}
    for name in STUDY:
        started = time.time()
        extra = precision(args) + ["--max-steps", str(args.max_steps)]
        result = subprocess.run(train(args.out, args.model, name, extra), capture_output=True, text=True)
        row = {"rc": result.returncode, "seconds": round(time.time() - started, 1)}
        if result.returncode == 0:
            s = summary(run_dir(args.out, name))
            row.update(total_rank=s["total_rank"], target_budget=s["target_budget"],
                       budget_check_passed=s["budget_check_passed"])
        else:
            row["error"] = result.stderr.strip().splitlines()[-1:]
        rows[name] = row
    passed = all(r["rc"] == 0 and r["budget_check_passed"] and r["total_rank"] == r["target_budget"]
                 for r in rows.values())
    return {"check": "signals", "passed": passed, "runs": rows}


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def timeless(metrics: dict) -> dict:
    """Eval metrics without the wall-clock ones (runtime, per-second rates), which no two runs share."""
    return {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second"))}


def check_resume(args) -> dict:
    extra = precision(args) + ["--full-determinism", "True", "--save-strategy", "steps", "--save-steps", "1000"]
    straight_root, stopped_root = args.out / "straight", args.out / "stopped"
    subprocess.run(train(straight_root, args.model, args.signal, extra), check=True, capture_output=True)
    proc = subprocess.Popen(train(stopped_root, args.model, args.signal, extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    allocations = run_dir(stopped_root, args.signal) / "rank_pattern.jsonl"
    while proc.poll() is None and len(lines(allocations)) < 4:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    stop_line = [line for line in err.splitlines() if "stopped by" in line]
    resumed = subprocess.run(train(stopped_root, args.model, args.signal, extra + ["--resume", "True"]),
                             capture_output=True, text=True)
    a, b = run_dir(straight_root, args.signal), run_dir(stopped_root, args.signal)
    same = {name: lines(a / name) == lines(b / name) for name in ("rank_pattern.jsonl", "signal_scores.jsonl")}
    if resumed.returncode == 0:
        sa, sb = summary(a), summary(b)
        same["final_ranks"] = sa["final_ranks"] == sb["final_ranks"]
        same["eval_metrics"] = timeless(sa["eval_metrics"]) == timeless(sb["eval_metrics"])
        same["train_loss_rel_diff"] = abs(sa["train_loss"] - sb["train_loss"]) / abs(sa["train_loss"])
    passed = (proc.returncode == 75 and resumed.returncode == 0
              and all(v for k, v in same.items() if k != "train_loss_rel_diff")
              and same.get("train_loss_rel_diff", 1) < 1e-6)
    return {"check": "resume", "passed": passed, "stop_exit": proc.returncode, "stop_line": stop_line[:1],
            "resume_exit": resumed.returncode, "equal": same}


class GpuMemory(threading.Thread):
    """Peak GPU memory per process, sampled from nvidia-smi (the runs are separate processes)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak: dict[str, int] = {}
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
            out = subprocess.run(query, capture_output=True, text=True).stdout
            for line in out.strip().splitlines():
                pid, mib = (part.strip() for part in line.split(","))
                if mib.isdigit():
                    self.peak[pid] = max(self.peak.get(pid, 0), int(mib))
            time.sleep(0.2)


def check_grid(args) -> dict:
    rows = {}
    for k in args.runs_per_gpu:
        root = args.out / f"grid_k{k}"
        shutil.rmtree(root, ignore_errors=True)
        command = cli("ablate", "--task", "planted", "--signals", *STUDY, "--seeds", "1", "--model", args.model,
                      "--output-root", str(root), "--no-share-warmup", *schedule(args.max_steps), *precision(args))
        if args.device == "cuda":
            command += ["--gpus", args.gpu, "--runs-per-gpu", str(k)]
        memory = GpuMemory() if args.device == "cuda" else None
        if memory:
            memory.start()
        started = time.time()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.time() - started
        if memory:
            memory.done.set()
            memory.join()
        rows[f"k{k}"] = {"rc": result.returncode, "seconds": round(seconds, 1),
                         "error": None if result.returncode == 0 else result.stdout.strip().splitlines()[-3:],
                         "runs_per_hour": round(len(STUDY) * 3600 / seconds, 1),
                         "peak_mib_per_run": sorted(memory.peak.values()) if memory else None}
    return {"check": "grid", "passed": all(r["rc"] == 0 for r in rows.values()), "grid": rows}


def schedule(steps: int) -> list[str]:
    """A whole AdaLoRA schedule in a run of this many steps (the presets' tinit/tfinal need thousands)."""
    return ["--max-steps", str(steps), "--tinit", str(steps // 6), "--tfinal", str(steps // 6), "--deltaT", "4",
            "--save-strategy", "no", "--eval-strategy", "no", "--no-adapter-effect"]


def precision(args) -> list[str]:
    return ["--bf16", "True"] if args.bf16 else []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-model")
    make.add_argument("folder", type=Path)
    make.add_argument("--layers", type=int, default=12)
    make.add_argument("--hidden", type=int, default=768)
    for name in ("signals", "resume", "grid"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--bf16", action="store_true")
        p.add_argument("--max-steps", type=int, default=60)
        p.add_argument("--signal", default="combo")
        p.add_argument("--device", default=None, help="cuda when one is visible, else cpu")
        p.add_argument("--gpu", default="0")
        p.add_argument("--runs-per-gpu", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args(argv)
    if args.command == "make-model":
        result = make_model(args.folder, args.layers, args.hidden)
    else:
        import torch

        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        args.out.mkdir(parents=True, exist_ok=True)
        result = {"signals": check_signals, "resume": check_resume, "grid": check_grid}[args.command](args)
        result.update(device=args.device, bf16=args.bf16)
    print(json.dumps(result))
    return 0 if result.get("passed", True) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
