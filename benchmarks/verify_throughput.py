"""How many faces the oracles verify per second, batched (issue 14's GPU figure).

One face's verification is what the engine runs per attempt: dlib's descriptor on its chip and
FaceNet on the aligned crop and on the whole box. The crops are made once (chip extraction and
warping are CPU work done per image, not measured here); the batch is embedded ``--repeats``
times per oracle and the median kept.

    python benchmarks/verify_throughput.py --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time

import numpy as np
import skimage.data

from idmrag_plugin.engine.detect import MTCNNDetector
from idmrag_plugin.engine.oracles import build_oracle
from idmrag_plugin.engine.views import box_crop
from idmrag_plugin.pipeline import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads on a CPU")
    parser.add_argument("--oracle-runtime", default="auto", choices=["auto", "torch", "onnxruntime"],
                        help="what runs the oracles' networks on a CPU (AnonymizerConfig.oracle_runtime)")
    parser.add_argument("--screened", action="store_true",
                        help="FaceNet through its int8 screening copy (what the engine runs first on ONNX Runtime; "
                             "near-threshold similarities are then recomputed exactly)")
    parser.add_argument("--out", default="benchmarks/results/verify_throughput.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    image = skimage.data.astronaut()
    (face,) = MTCNNDetector(device="cpu").detect(image)
    rng = np.random.default_rng(0)
    timings: dict[str, float] = {}
    for name in ("dlib", "facenet"):
        oracle = build_oracle(name, device, runtime=args.oracle_runtime, threads=args.threads)
        oracle.load()
        crops = []
        for _ in range(args.batch):  # the same face, jittered, so no two crops are equal
            landmarks = face.landmarks + rng.normal(0, 1.0, face.landmarks.shape)
            crops.append(oracle.crops(image, [landmarks])[0])
        views = [np.stack(crops)]
        if oracle.box_view:
            views.append(np.stack([box_crop(image, face, oracle.input_size)] * args.batch))
        batch = np.concatenate(views)
        embed = oracle.embed_screen if args.screened else oracle.embed
        if args.screened and not oracle.screens and name == "facenet":
            raise SystemExit("FaceNet has no int8 screening copy here (it needs ONNX Runtime on a CPU)")
        embed(batch)  # warm-up (and CUDA kernels)
        runs = []
        for _ in range(args.repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            embed(batch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - start)
        timings[name] = statistics.median(runs)
    per_batch = sum(timings.values())
    result = {
        "device": device if device == "cpu" else f"{device} ({torch.cuda.get_device_name(0)})",
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "ms per batch by oracle": {k: round(v * 1000, 1) for k, v in timings.items()},
        "faces verified per second": round(args.batch / per_batch, 1),
        "command": "python benchmarks/verify_throughput.py " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
            for k, v in vars(args).items() if v not in (None, False) and k != "out"),
    }
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
