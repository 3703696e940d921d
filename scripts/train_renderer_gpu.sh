#!/usr/bin/env bash
# One prepared GPU run of `idmrag train-renderer` at 128 px (the device tool's machine: torch
# preinstalled, no network). Expects gpu_data/faces128_train.npz (JPEG-packed, under 64 MiB):
#   python -c "from pathlib import Path; from idmrag_plugin.training.data import pack_dataset; \
#              print(pack_dataset(Path('runs/faces128.npz'), Path('gpu_data/faces128_train.npz'), size=128, quality=92))"
# Resumes a CPU run when its checkpoint is carried as gpu_data/renderer_checkpoint.pt and the
# sizes match; checkpoints every minute, so a run cut short still returns weights.
# Writes OUT/renderer (safetensors + sha256), OUT/samples.png and the log under $OUT.
set -euo pipefail
OUT=${OUT:-runs/renderer_gpu}
MINUTES=${MINUTES:-8}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ -f gpu_data/renderer_checkpoint.pt ]; then cp gpu_data/renderer_checkpoint.pt "$OUT/checkpoint.pt"; fi
python3 -m idmrag_plugin.training.train_renderer \
  --data gpu_data/faces128_train.npz --output "$OUT" --size 128 --base-channels 32 --max-channels 256 \
  --disc-channels 64 --batch ${BATCH:-64} --minutes "$MINUTES" --checkpoint-every 100000 \
  --checkpoint-minutes 1 --weight dlib=1 --weight attr=1 2>&1 | tee "$OUT/train.log"
