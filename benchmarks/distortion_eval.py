"""Faces in photos stretched out of proportion or cast in one colour: detection recall and
how many stay recognisable.

Each LFW photo (the second of identities with two or more) is distorted (stretched along its
width or height, cubic resampling; or cast in green or cyan, or a grey photo printed in green)
and anonymized by the default engine, with and without the search that looks for such faces
(``stretch_search``, ``grey_search``). What an attacker sees is then compared, by each oracle,
with the original's central face: the output resized back to the photo's proportions, or its
grey levels (recognisable = any oracle at or above its threshold). Recall counts photos in
which a face was found over the subject's nose.

    python benchmarks/distortion_eval.py --limit 40
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from rotation_eval import photos

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import MTCNNDetector, central_face
from idmrag_plugin.engine.oracles import cosine


def stretched(axis: str, factor: float) -> Callable[[np.ndarray], np.ndarray]:
    def distort(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        size = (round(w * factor), h) if axis == "x" else (w, round(h * factor))
        return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    return distort


def grey_of(image: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def cast(weights: tuple[float, float, float], grey_first: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    def distort(image: np.ndarray) -> np.ndarray:
        return ((grey_of(image) if grey_first else image) * np.array(weights)).astype(np.uint8)
    return distort


#: name: (distortion, the switch of the search for it, scale of the subject's nose)
DISTORTIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str, tuple[float, float]]] = {
    "stretched 3x wide": (stretched("x", 3.0), "stretch_search", (3.0, 1.0)),
    "stretched 3x tall": (stretched("y", 3.0), "stretch_search", (1.0, 3.0)),
    "stretched 5x wide": (stretched("x", 5.0), "stretch_search", (5.0, 1.0)),
    "stretched 5x tall": (stretched("y", 5.0), "stretch_search", (1.0, 5.0)),
    "green cast (red, blue x0.3)": (cast((0.3, 1.0, 0.3)), "grey_search", (1.0, 1.0)),
    "cyan cast (red x0.1)": (cast((0.1, 1.0, 1.0)), "grey_search", (1.0, 1.0)),
    "grey printed in green": (cast((0.15, 1.0, 0.15), grey_first=True), "grey_search", (1.0, 1.0)),
}


def evaluate(engine: FaceAnonymizer, paths: list[Path], detector: MTCNNDetector, name: str) -> dict:
    distort, _, scale = DISTORTIONS[name]
    found = recognisable = total = 0
    seconds = 0.0
    for path in paths:
        original = np.asarray(Image.open(path).convert("RGB"))
        subject = central_face(detector.detect(original), original.shape)
        if subject is None:
            continue
        total += 1
        start = time.perf_counter()
        result = engine.anonymize(distort(original))
        seconds += time.perf_counter() - start
        nose = subject.landmarks[2] * np.array(scale)
        found += any(f.detection.box[0] <= nose[0] <= f.detection.box[2]
                     and f.detection.box[1] <= nose[1] <= f.detection.box[3] for f in result.faces)
        seen = cv2.resize(result.pixels, (original.shape[1], original.shape[0]), interpolation=cv2.INTER_AREA)
        views = [seen, grey_of(seen)] if scale == (1.0, 1.0) else [seen]
        recognisable += any(
            float(cosine(o.embed_faces(original, [subject.landmarks]), o.embed_faces(view, [subject.landmarks]))[0])
            >= engine.thresholds[o.name]
            for o in engine.oracles for view in views
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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/distortion_eval.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    paths = photos(Path(args.lfw), args.limit)
    detector = MTCNNDetector()
    rows: dict[str, dict] = {}
    shared = None
    for searching in (False, True):
        engines: dict[str, FaceAnonymizer] = {}
        for name, (_, switch, _) in DISTORTIONS.items():
            if switch not in engines:
                engines[switch] = FaceAnonymizer(AnonymizerConfig(cache_size=0, **{switch: searching}), oracles=shared)
                shared = engines[switch].oracles
            key = f"{switch}={searching}: {name}"
            rows[key] = evaluate(engines[switch], paths, detector, name)
            print(key, json.dumps(rows[key]), flush=True)
    Path(args.output).write_text(json.dumps({"photos": len(paths), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
