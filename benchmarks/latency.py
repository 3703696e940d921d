"""End-to-end CPU latency per image, split by stage (median of repeated runs).

    python benchmarks/latency.py --scene ../shared/data/scenes/2008_002079.jpg --repeats 5
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics

import numpy as np
import skimage.data
from PIL import Image

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer, FaceGenerator, GenerationRequest
from idmrag_plugin.engine.align import align_face


class OtherPersonGenerator(FaceGenerator):
    """Stands in for a learned generator: pastes the cameraman's face (one oracle pass)."""

    name = "other-person"

    def __init__(self, face: np.ndarray) -> None:
        self.face = face

    def generate(self, request: GenerationRequest) -> np.ndarray:
        return self.face


def measure(engine: FaceAnonymizer, image: np.ndarray, repeats: int) -> dict:
    engine.anonymize(image)  # warm-up: models load once
    runs = [engine.anonymize(image) for _ in range(repeats)]
    stages = sorted({k for r in runs for k in r.timings_ms})
    return {
        "faces": len(runs[0].faces),
        "methods": runs[0].counts(),
        "median_ms": {k: round(statistics.median(r.timings_ms.get(k, 0.0) for r in runs), 1) for k in stages},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scene", required=True, help="a large multi-face photo")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/latency.json")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--oracle-runtime", default="auto", choices=["auto", "torch", "onnxruntime"],
                        help="what runs the oracles' networks (AnonymizerConfig.oracle_runtime)")
    parser.add_argument("--detector-runtime", default="torch", choices=["auto", "torch", "onnxruntime"],
                        help="what runs MTCNN's networks (AnonymizerConfig.detector_runtime)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    def config(**settings) -> AnonymizerConfig:
        # cache_size=0: repeated runs of one image must compute, not hit the result cache
        return AnonymizerConfig(cache_size=0, threads=args.threads, oracle_runtime=args.oracle_runtime,
                                detector_runtime=args.detector_runtime, **settings)

    base = FaceAnonymizer(config(generator="none"))
    camera = np.repeat(skimage.data.camera()[..., None], 3, axis=2)
    (det,) = base.detector.detect(camera)
    swap = FaceAnonymizer(config(), generator=OtherPersonGenerator(align_face(camera, det.landmarks, 128).crop),
                          detector=base.detector, oracles=base.oracles)
    one_face = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((250, 250)))
    scene = np.asarray(Image.open(args.scene).convert("RGB"))
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "oracle_runtime": args.oracle_runtime,
        "detector_runtime": args.detector_runtime,
    }
    vae, renderer, renderer_lcm = (FaceAnonymizer(config(generator=name), detector=base.detector, oracles=base.oracles)
                                   for name in ("vae-decode", "renderer", "renderer-lcm"))
    upright = FaceAnonymizer(config(rotations=(0,), border_search=False), oracles=base.oracles)
    quarter_turns = FaceAnonymizer(config(rotations=(0, 90, 180, 270)), oracles=base.oracles)
    engines = (
        ("obfuscate (generator none)", base),
        ("fixed other face + verify (2 oracles)", swap),
        ("vae-decode + verify (2 oracles)", vae),
        ("renderer + verify (2 oracles)", renderer),
        ("renderer-lcm@1 (default) + verify (2 oracles)", renderer_lcm),
        (f"default engine ({AnonymizerConfig().generator}), quarter turns only (rotations=0,90,180,270)", quarter_turns),
        (f"default engine ({AnonymizerConfig().generator}), upright detection only (rotations=0, no border search)", upright),
    )
    for engine_name, engine in engines:
        for image_name, image in (("250x250 one face", one_face), (f"{scene.shape[1]}x{scene.shape[0]} scene", scene)):
            key = f"{engine_name} | {image_name}"
            results[key] = measure(engine, image, args.repeats)
            print(key, json.dumps(results[key]))
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
