#!/usr/bin/env bash
# The GPU check of issue 10, prepared to run in one go on a machine with a CUDA GPU (none was available when it
# was written). From the repository root, with torch (CUDA build), peft 0.18.1 and transformers installed:
#
#     OUT=/path/for/results bash benchmarks/gpu_check.sh        # ~6-10 min on an H100/H200
#
# Each step writes its full output to $OUT/<step>.txt (the last line of each is its JSON result) and the step's
# exit code to $OUT/status.txt; a failing step does not stop the others. Most important first, in case time
# runs out: correctness on the GPU, then the allocator's share of a fp32 and a bf16 DeBERTa-v3-base step, then
# end-to-end throughput (every signal vs PEFT's loop vs plain LoRA) with the phase breakdown and the Trainer's
# share, then the op counts measured on the GPU itself. Record the numbers in BENCHMARKS.md with the GPU's name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
STEP_LIMIT=${STEP_LIMIT:-240}  # seconds per step

python - > "$OUT/environment.txt" 2>&1 <<'PY'
import platform, subprocess, torch, peft, transformers
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "peft", peft.__version__, "transformers", transformers.__version__)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
PY
cat "$OUT/environment.txt" | head -2
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_check: no CUDA device (see $OUT/environment.txt)" | tee -a "$OUT/status.txt"; exit 1; }

step() {  # step NAME COMMAND...
    local name=$1; shift
    echo "+ $name: $*"
    local started=$SECONDS
    (cd benchmarks && timeout "$STEP_LIMIT" "$@") > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - started))s" | tee -a "$OUT/status.txt"
    tail -n 1 "$OUT/$name.txt"; echo
}

step gpu_sanity python gpu_sanity.py --device cuda
step bench_allocator_fp32 python bench_allocator.py --device cuda --repeats 30
step bench_allocator_bf16 python bench_allocator.py --device cuda --repeats 30 --bf16
step bench_train_bf16 python bench_train.py --arch deberta-v3-base --device cuda --bf16 --batch 32 --seq 128 \
    --steps 20 --phase-steps 5 --trainer-steps 40 --profile-out "$OUT/profile_step_bf16.txt"
step bench_train_fp32 python bench_train.py --arch deberta-v3-base --device cuda --batch 32 --seq 128 \
    --steps 20 --phase-steps 5 --trainer-steps 40 --profile-out "$OUT/profile_step_fp32.txt"
step bench_train_bf16_deltaT1 python bench_train.py --arch deberta-v3-base --device cuda --bf16 --batch 32 \
    --seq 128 --steps 20 --deltaT 1 --phase-steps 0 --no-lora
step bench_ops_cuda python bench_ops.py --device cuda
echo "results in $OUT"
