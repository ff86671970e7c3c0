#!/usr/bin/env bash
# GPU figures: student_small fp16 frames/s and peak inference memory at batch 1, and peak training
# memory at batch 1 (student alone; student + frozen teacher for online distillation), with the
# trainer's default memory saving (checkpointing auto); then `monoocc bench memory` on CUDA (AMP):
# one training step and inference per config, with checkpointing auto and off side by side.
#
# Self-contained: run from the repository root on a machine with CUDA and PyTorch + torchvision +
# PyYAML installed (nothing is downloaded; weights are random, speed and memory do not depend on
# them). With the device tool: run(command="bash scripts/bench_gpu.sh"); the JSON lands in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script measures the GPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -m monoocc_ros.benchmarks.gpu --json "${OUT:-.}/bench_gpu.json" "$@"
for mode in auto off; do
  "$PY" -m monoocc_ros.cli bench memory --device cuda --checkpointing "$mode" --limit-gib 1000 \
    --json "${OUT:-.}/bench_memory_$mode.json"
done
