"""Faces in photos stretched out of proportion: detection recall and how many stay recognisable.

Each LFW photo (the second of identities with two or more) is stretched along its width or
its height by each factor (cubic resampling) and anonymized by the default engine, with and
without the stretch search; the output is resized back to the photo's proportions and its
central face compared, by each oracle, with the original's (recognisable = any oracle at or
above its threshold). Recall counts stretched photos in which a face was found over the
subject's nose.

    python benchmarks/stretch_eval.py --limit 40
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from rotation_eval import photos

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import MTCNNDetector, central_face
from idmrag_plugin.engine.oracles import cosine


def stretched(image: np.ndarray, axis: str, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (round(w * factor), h) if axis == "x" else (w, round(h * factor))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)


def evaluate(engine: FaceAnonymizer, paths: list[Path], detector: MTCNNDetector, axis: str, factor: float) -> dict:
    found = recognisable = total = 0
    seconds = 0.0
    scale = np.array([factor, 1.0]) if axis == "x" else np.array([1.0, factor])
    for path in paths:
        original = np.asarray(Image.open(path).convert("RGB"))
        subject = central_face(detector.detect(original), original.shape)
        if subject is None:
            continue
        total += 1
        start = time.perf_counter()
        result = engine.anonymize(stretched(original, axis, factor))
        seconds += time.perf_counter() - start
        nose = subject.landmarks[2] * scale
        found += any(f.detection.box[0] <= nose[0] <= f.detection.box[2]
                     and f.detection.box[1] <= nose[1] <= f.detection.box[3] for f in result.faces)
        back = cv2.resize(result.pixels, (original.shape[1], original.shape[0]), interpolation=cv2.INTER_AREA)
        recognisable += any(
            float(cosine(o.embed_faces(original, [subject.landmarks]), o.embed_faces(back, [subject.landmarks]))[0])
            >= engine.thresholds[o.name]
            for o in engine.oracles
        )
    return {
        "photos": total,
        "recall": round(found / max(total, 1), 4),
        "recognisable": round(recognisable / max(total, 1), 4),
        "seconds_per_photo": round(seconds / max(total, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--factors", default="1.5,2.5,3,5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/stretch_eval.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    paths = photos(Path(args.lfw), args.limit)
    detector = MTCNNDetector()
    rows: dict[str, dict] = {}
    shared = None
    for stretch_search in (False, True):
        engine = FaceAnonymizer(AnonymizerConfig(stretch_search=stretch_search, cache_size=0), oracles=shared)
        shared = engine.oracles
        for axis in ("x", "y"):
            for factor in (float(f) for f in args.factors.split(",")):
                key = f"stretch_search={stretch_search} {axis}x{factor:g}"
                rows[key] = evaluate(engine, paths, detector, axis, factor)
                print(key, json.dumps(rows[key]), flush=True)
    Path(args.output).write_text(json.dumps({"photos": len(paths), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
