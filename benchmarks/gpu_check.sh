#!/usr/bin/env bash
# The GPU check, prepared to run in one go on a machine with a CUDA GPU. From the repository root, with torch
# (CUDA build) and transformers installed; the wheels the machine lacks (peft 0.18.1, datasets) are taken from .whl/
# when it is there (benchmarks/gpu_wheels.sh fetches them):
#
#     OUT=/path/for/results bash benchmarks/gpu_check.sh                # about 8 min on an H100/H200
#     DEVICE=cpu OUT=/tmp/cpu_check bash benchmarks/gpu_check.sh        # the same steps, small, on the CPU
#
# Each step writes its full output to $OUT/<step>.txt (the last line of each is its JSON result) and the step's
# exit code to $OUT/status.txt; a failing step does not stop the others. Most important first, in case time runs
# out: correctness (baseline_adalora keeps PEFT's triplets on the device in fp32 and bf16; a bf16 CLI run per study
# signal ends on the exact budget; SIGTERM mid-run checkpoints and resumes exactly), then throughput in bf16 at
# batch 32 x 256 (plain LoRA vs PEFT's allocator vs ours, every study signal, the allocator's share of a step), then
# several runs per GPU (ablate --runs-per-gpu 1, 2, 4: throughput and peak memory per run), then the allocator
# alone and the op counts. Record the numbers in BENCHMARKS.md with the GPU's name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: cannot install .whl/" | tee -a "$OUT/status.txt"; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
STEP_LIMIT=${STEP_LIMIT:-240}  # seconds per step

python - > "$OUT/environment.txt" 2>&1 <<'PY'
import platform, subprocess, torch, peft, transformers, datasets
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "peft", peft.__version__, "transformers", transformers.__version__, "datasets", datasets.__version__)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout if torch.cuda.is_available() else "")
PY
head -2 "$OUT/environment.txt"
if [ "$DEVICE" = cuda ]; then
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
        echo "gpu_check: no CUDA device (see $OUT/environment.txt)" | tee -a "$OUT/status.txt"; exit 1; }
    SIZE=(--layers 12 --hidden 768); SHAPE=(--batch 32 --seq 256 --steps 20); GRID_STEPS=200; SIGNAL_STEPS=60
    ALLOC=(--repeats 30); OPS=()
else  # the same steps on a model and batches small enough for a CPU
    SIZE=(--layers 2 --hidden 64); SHAPE=(--layers 2 --hidden 64 --vocab 1000 --batch 4 --seq 32 --steps 4)
    GRID_STEPS=30; SIGNAL_STEPS=30
    ALLOC=(--repeats 3 --layers 2 --step-repeats 1); OPS=(--layers 2 --hidden 64)
fi
MODEL="$OUT/model"

step() {  # step NAME COMMAND...
    local name=$1; shift
    echo "+ $name: $*"
    local started=$SECONDS
    (cd benchmarks && timeout "$STEP_LIMIT" "$@") > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - started))s" | tee -a "$OUT/status.txt"
    tail -n 1 "$OUT/$name.txt"; echo
}

step peft_match_fp32 python gpu_peft_match.py --device "$DEVICE" "${SIZE[@]}"
step peft_match_bf16 python gpu_peft_match.py --device "$DEVICE" --bf16 "${SIZE[@]}"
step make_model python gpu_cli_check.py make-model "$MODEL" "${SIZE[@]}"
step cli_signals_bf16 python gpu_cli_check.py signals --model "$MODEL" --out "$OUT/runs_signals" --bf16 \
    --max-steps "$SIGNAL_STEPS"
step cli_resume_bf16 python gpu_cli_check.py resume --model "$MODEL" --out "$OUT/runs_resume" --bf16
step gpu_sanity python gpu_sanity.py --device "$DEVICE" "${SIZE[@]}"
step bench_train_bf16 python bench_train.py --arch deberta-v3-base --device "$DEVICE" --bf16 "${SHAPE[@]}" \
    --signals baseline_adalora,importance_only,plasticity_only,combo --phase-steps 5 --trainer-steps 20 \
    --profile-out "$OUT/profile_step_bf16.txt"
step grid_runs_per_gpu python gpu_cli_check.py grid --model "$MODEL" --out "$OUT/runs_grid" --bf16 \
    --max-steps "$GRID_STEPS" --runs-per-gpu 1 2 4
step bench_allocator_bf16 python bench_allocator.py --device "$DEVICE" --bf16 "${ALLOC[@]}"
step bench_ops python bench_ops.py --device "$DEVICE" "${OPS[@]}"
rm -rf "$MODEL" "$OUT"/runs_*  # what comes back is the step outputs
echo "results in $OUT"
