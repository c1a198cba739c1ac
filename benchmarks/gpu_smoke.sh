#!/usr/bin/env bash
# GPU smoke check of the launch strategies (issue 12), for a node with 2 or more NVIDIA GPUs; about
# 5 minutes. It has NOT been run on a GPU yet: no GPU was available to this project.
#
#   benchmarks/gpu_smoke.sh [N]      N GPUs per launch (default 2)
#
# What it runs and what each step must print:
# 1. `python -m dakd.cli plan llama2-7b-sheared-2.7b --gpus 4 --gpu-memory 80`: the memory table and
#    three recommendation lines (no GPU needed; a sanity check of the installation).
# 2. tests/test_strategies.py with DAKD_STRATEGY_GPUS=N: the tiny pair trained under ddp, fsdp
#    (FSDP2), deepspeed_zero2 and deepspeed_zero3 on N GPUs with bf16 compute and float32 master
#    weights, interrupted after epoch 0 and resumed, compared with one GPU. Must end with
#    "6 passed" (4 strategies, the bf16 lr-1e-5 check, the collective non-finite check); a
#    "skipped" line means DeepSpeed is not installed (pip install deepspeed).
# 3. nvidia-smi's view while nothing runs: no process of ours may be left on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-2}"
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
"$PY" -c "import torch, sys; n = torch.cuda.device_count(); print(f'{n} GPU(s):', [torch.cuda.get_device_name(i) for i in range(n)]); sys.exit(0 if n >= $N else 1)" \
  || { echo "gpu_smoke.sh: fewer than $N GPUs visible" >&2; exit 2; }
echo "== 1. plan"
"$PY" -m dakd.cli plan llama2-7b-sheared-2.7b --gpus 4 --gpu-memory 80 | tail -4
echo "== 2. every strategy on $N GPUs"
DAKD_STRATEGY_GPUS="$N" "$PY" -m pytest -q -p no:cacheprovider tests/test_strategies.py
echo "== 3. nothing left on the GPUs"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv || true
