#!/usr/bin/env bash
# One prepared GPU run of `idmrag train-lcm` (the device tool's machine: torch preinstalled,
# no network, so diffusers and huggingface-hub must travel with the tree:
#   pip install --target gpu_data/pylib --no-deps diffusers huggingface-hub
# plus whatever of their pure-Python dependencies the device lacks; the script stops at once if
# `import diffusers` fails there). Expects gpu_data/faces64_train.npz
# (see scripts/train_codes_gpu.sh). Scales the CPU defaults up: wider UNet and autoencoder,
# bigger batch. Writes OUT/teacher, OUT/lcm and the log under $OUT (or ./runs/lcm_gpu).
set -euo pipefail
OUT=${OUT:-runs/lcm_gpu}
MINUTES=${MINUTES:-8}
mkdir -p "$OUT"
export PYTHONPATH=src:gpu_data/pylib PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import diffusers; print('diffusers', diffusers.__version__)"
python3 -m idmrag_plugin.training.train_lcm \
  --data gpu_data/faces64_train.npz --output "$OUT" --checkpoint /tmp/lcm_checkpoint.pt \
  --autoencoder-channels 64,128 --unet-channels 64,128,256 --cross-attention-dim 128 \
  --batch ${BATCH:-256} --minutes "$MINUTES" --shares 0.2,0.45,0.35 --checkpoint-every 2000 2>&1 | tee "$OUT/train.log"
