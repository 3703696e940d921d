#!/usr/bin/env bash
# One prepared GPU run of the codes training (the device tool's machine: torch preinstalled,
# no network). Expects gpu_data/faces64_train.npz made by:
#   python -c "from pathlib import Path; from idmrag_plugin.training.data import pack_dataset; \
#              print(pack_dataset(Path('runs/faces128.npz'), Path('gpu_data/faces64_train.npz')))"
# Writes the VAE, the identity student and the log under $OUT (or ./runs/gpu when unset).
set -euo pipefail
OUT=${OUT:-runs/gpu}
MINUTES=${MINUTES:-7}
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m idmrag_plugin.training.train_codes \
  --data gpu_data/faces64_train.npz --output "$OUT" --checkpoint /tmp/codes_checkpoint.pt \
  --size 64 --base-channels 32 --batch ${BATCH:-256} --lr 2e-4 --minutes "$MINUTES" \
  --student-steps 6000 --student-share 0.2 --checkpoint-every 2000 2>&1 | tee "$OUT/train.log"
