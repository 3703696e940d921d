#!/usr/bin/env bash
# One prepared GPU run: fine-tune the shipped codes model under several loss weightings at once
# (the 64 px model leaves an H100/H200 mostly idle, so the runs share it), score each on the
# validation identities with benchmarks/codes_quick_eval.py, and pack each model under $OUT.
# Expects $TRAIN (default gpu_data/faces64_train.npz) and gpu_data/faces64_val.npz, made by
#   python -c "from pathlib import Path; from idmrag_plugin.training.data import pack_dataset as p; \
#     p(Path('runs/faces128.npz'), Path('gpu_data/faces64_train.npz')); \
#     p(Path('runs/faces128.npz'), Path('gpu_data/faces64_val.npz'), split='val')"
# Runs g and h need emb_dlib: pack from training.data.add_embeddings' output instead, e.g.
#   add_embeddings(Path('runs/faces128.npz'), Path('runs/faces128_dlib.npz'), build_oracle('dlib'))  # ~17 min, 2 CPUs
#   pack_dataset(Path('runs/faces128_dlib.npz'), Path('gpu_data/faces64_train_dlib_q75.npz'), quality=75)  # 46.3 MB
# The device takes at most 64 MiB of tree and data together, and returns at most 64 MB of files
# (a tar with the dlib student is ~12 MB: bring back five runs at most), e.g.
#   TRAIN=gpu_data/faces64_train_dlib_q75.npz CONFIGS="b g h" OUT=$OUT MINUTES=6 bash scripts/codes_sweep_gpu.sh
# with carry gpu_data/faces64_train_dlib_q75.npz and gpu_data/faces64_val.npz.
# DLIB_STUDENT=FILE adds a dlib student distilled beforehand (e.g. on the CPU:
#   python -m idmrag_plugin.training.train_codes --data gpu_data/faces64_train_dlib_q75.npz --output runs/dlib_student \
#     --init src/idmrag_plugin/data --batch 128 --minutes 45 --student-share 1 --steps 0 --weight swap_id_dlib=1)
# to the starting model, so the device spends its minutes on the VAE. Without gpu_data/faces64_val.npz
# (when the carry limit leaves no room for it) the quick evaluation is skipped.
set -uo pipefail
OUT=${OUT:-runs/sweep}
MINUTES=${MINUTES:-5.5}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import idmrag_plugin.training.train_codes" || exit 3

declare -A RUNS=(
  [a]="--weight attr_adv=2 --weight attr_pair=1 --weight swap_id=1 --weight club=0.05 --weight supcon=0.5"
  [b]="--weight attr_pair=3 --weight swap_id=1.5 --weight supcon=0.5"
  [c]="--weight attr_adv=3 --weight kl_attr=1e-2 --weight swap_id=1.5 --weight supcon=0.5"
  [d]="--weight attr_pair=2 --weight attr_adv=1 --weight kl_attr=1e-2 --weight swap_id=2 --weight id_dec=1 --weight supcon=0.5"
  [e]="--weight attr_pair=5 --weight swap_id=1 --weight supcon=0.5 --lr 2e-4"
  [f]="--weight attr_adv=5 --weight attr_pair=2 --weight swap_id=2 --weight swap_cycle=1 --weight supcon=0.5"
  # g, h: the shipped recipe (b) plus a dlib-distilled student judging swaps; need emb_dlib in $TRAIN
  [g]="--weight attr_pair=3 --weight swap_id=1.5 --weight supcon=0.5 --weight swap_id_dlib=1.5 --weight id_dec_dlib=0.5"
  [h]="--weight attr_pair=3 --weight swap_id=1.5 --weight supcon=0.5 --weight swap_id_dlib=3"
  [i]="--weight attr_pair=3 --weight swap_id=2 --weight supcon=0.5 --weight swap_id_dlib=3 --weight id_dec_dlib=1"
  # j, k: after the dlib student learned centred targets (a different loss scale from g-i's raw ones)
  [j]="--weight attr_pair=3 --weight swap_id=1.5 --weight supcon=0.5 --weight swap_id_dlib=1.5 --weight id_dec_dlib=0.5"
  [k]="--weight attr_pair=3 --weight swap_id=1.5 --weight supcon=1 --weight swap_id_dlib=3 --weight id_dec_dlib=1"
)
# CONFIGS="b g h" runs a subset (default: all; at most 6 come back: 8 files per call); rerunning on a
# warm machine resumes each from its checkpoint in /tmp.
INIT=/tmp/sweep_init
mkdir -p "$INIT" && cp -r src/idmrag_plugin/data/. "$INIT"/
[ -n "${DLIB_STUDENT:-}" ] && cp "$DLIB_STUDENT" "$INIT/identity_student_dlib.safetensors"
read -r -a NAMES <<<"${CONFIGS:-${!RUNS[*]}}"
for name in "${NAMES[@]}"; do
  # shellcheck disable=SC2086
  python3 -m idmrag_plugin.training.train_codes --data "${TRAIN:-gpu_data/faces64_train.npz}" --output "/tmp/sweep/$name" \
    --checkpoint "/tmp/sweep_$name.pt" --init "$INIT" --batch "${BATCH:-256}" --lr 1e-4 \
    --penalty-warmup 500 --minutes "$MINUTES" --checkpoint-every 100000 ${RUNS[$name]} \
    >"/tmp/sweep_$name.log" 2>&1 &
done
wait
if [ -f gpu_data/faces64_val.npz ]; then
  python3 benchmarks/codes_quick_eval.py --data gpu_data/faces64_val.npz src/idmrag_plugin/data "${NAMES[@]/#//tmp/sweep/}" \
    >"$OUT/quick_eval.json" 2>/tmp/quick_eval.log; tail -3 /tmp/quick_eval.log
  cat "$OUT/quick_eval.json"
fi
for name in "${NAMES[@]}"; do
  cp "/tmp/sweep_$name.log" "/tmp/sweep/$name/train.log"
  echo "$name: ${RUNS[$name]}" >>"$OUT/runs.txt"
  grep "vae step" "/tmp/sweep_$name.log" | tail -1 | cut -c1-300
  extra=(); [ -f "/tmp/sweep/$name/identity_student_dlib.safetensors" ] && extra=("$name/identity_student_dlib.safetensors")
  tar -C /tmp/sweep -cf "$OUT/$name.tar" "$name/codes_vae" "$name/train.log" "$name/train_summary.json" "${extra[@]}" || true
done
ls -la "$OUT"
