#!/usr/bin/env bash
# The wheels the GPU machine lacks, for Python 3.12 on x86-64 (its image has torch, transformers, accelerate and the
# rest; not peft 0.18.1 and datasets). Run here, from the repository root, before carrying .whl/ there:
#
#     bash benchmarks/gpu_wheels.sh          # ~48 MB into .whl/ (git-ignored through .git/info/exclude)
#
# pyarrow is included because datasets 5.2 needs pyarrow>=24, newer than some images have.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    peft==0.18.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pyarrow==24.0.0
du -sh .whl
