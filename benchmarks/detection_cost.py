"""What the face search costs, detector alone: the border search on and off, and MTCNN's
cascade against facenet-pytorch's own ``detect_face``, alternated in one process so that the
machine's drift hits both sides alike.

    python benchmarks/detection_cost.py --scene ../shared/data/scenes/obama_and_biden.jpg
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import MTCNNDetector


def _facenet_cascade(self: MTCNNDetector, images: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """facenet-pytorch's own detect_face, in the cascade's output format (the reference)."""
    from facenet_pytorch.models.utils.detect_face import detect_face

    with torch.inference_mode():
        boxes, points = detect_face(images, self.min_face_size, self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet,
                                    list(self.thresholds), self._mtcnn.factor, "cpu")
    return ([np.asarray(b.tolist(), dtype=np.float64).reshape(-1, 5) for b in boxes],
            [np.asarray(p.tolist(), dtype=np.float64).reshape(-1, 5, 2) for p in points])


def _alternate(runs: dict[str, callable], repeats: int) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for i in range(repeats):
        order = list(runs.items()) if i % 2 == 0 else list(runs.items())[::-1]
        for name, run in order:
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: {"fastest_ms": round(min(t), 1), "median_ms": round(statistics.median(t), 1)} for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", required=True, help="a large multi-face photo")
    parser.add_argument("--repeats", type=int, default=10, help="runs of each side on the scene (4x on small photos)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/detection_cost.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    engines = {on: FaceAnonymizer(AnonymizerConfig(generator="none", cache_size=0, threads=args.threads, border_search=on))
               for on in (False, True)}
    photos = {
        "250x250 astronaut": np.asarray(Image.fromarray(skimage.data.astronaut()).resize((250, 250))),
        "512x512 astronaut": skimage.data.astronaut(),
        "scene": np.asarray(Image.open(args.scene).convert("RGB")),
    }
    cascade = MTCNNDetector._cascade
    report: dict[str, dict] = {"threads": args.threads}
    for name, photo in photos.items():
        repeats = args.repeats if name == "scene" else 4 * args.repeats
        report[f"{name}: border search"] = _alternate({
            "without": lambda p=photo: engines[False].detector.detect(p),
            "with (default)": lambda p=photo: engines[True].detector.detect(p),
        }, repeats)

        def with_cascade(p: np.ndarray = photo, impl=cascade) -> None:
            MTCNNDetector._cascade = impl
            engines[False].detector.detect(p)

        report[f"{name}: MTCNN cascade (no border search)"] = _alternate({
            "facenet-pytorch detect_face": lambda p=photo: with_cascade(p, _facenet_cascade),
            "engine cascade": lambda p=photo: with_cascade(p, cascade),
        }, repeats)
        MTCNNDetector._cascade = cascade
        print(name, json.dumps({k: v for k, v in report.items() if k.startswith(name)}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
