#!/usr/bin/env bash
# The checks that need a GPU, as one short run on a lent device (issue 16, items 4 and 5):
#   1. the device tests on CUDA (each also runs on the CPU in CI: tests/test_*_devices.py);
#   2. a SmolLM2-135M conversion on the GPU (bf16 autocast, torch.compile, fused AdamW) for
#      MINUTES minutes, whose train.jsonl logs tokens/s, TFLOP/s and MFU (conversion/throughput.py).
# Usage: bash scripts/gpu_check.sh [MINUTES] ; small result files land in $OUT (never weights).
# The device has no network: carry the venv (or wheels) and the cache holding smollm2 and sotu.
set -euo pipefail
OUT=${OUT:-runs/gpu-check}
MINUTES=${1:-5}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

python -m pytest -q -p no:randomly tests/test_conversion_devices.py tests/test_analyses_devices.py \
    2>&1 | tail -5 | tee "$OUT/pytest.txt"

# 64 x 512 tokens per step; 3,000 steps would be 98 M tokens: --max-minutes stops the run and
# writes the MDM as it stands (train.jsonl says how far it got).
ar2mdm convert --model smollm2 --data sotu --out /tmp/gpu-check-mdm --overwrite \
    --device cuda --bf16 --compile on --seq-len 512 --batch-size 64 --lr 2e-4 --warmup 30 \
    --steps 3000 --max-minutes "$MINUTES" --eval-every 250 --log-every 10 2>&1 | tail -3
cp /tmp/gpu-check-mdm/train.jsonl /tmp/gpu-check-mdm/ar2mdm.json "$OUT/"
python - "$OUT/train.jsonl" <<'EOF' | tee "$OUT/throughput.txt"
import json, statistics, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "train"][3:]  # after compiling
for key in ("tokens_per_s", "tflops", "mfu"):
    values = [r[key] for r in rows if key in r]
    if values:
        print(f"{key}: median {statistics.median(values):.4g} over {len(values)} logged steps")
EOF
