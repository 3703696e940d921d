"""Faces across a 360-degree panorama's seam: found whole, recognisable once joined again, and
how the seam looks.

Each LFW photo (the second of identities with two or more) is set beside itself upside down
(a canvas twice as wide as high, with no second upright face) and rolled so that its central
face stands across the left and right edges, ``--shares`` of the face's width at the right
edge. The default engine anonymizes it with and without ``seam_search``; the output is rolled
back, as a 360-degree viewer joins the edges, and compared by each oracle with the original's
central face (recognisable = any oracle at or above its threshold). Found counts photos with a
face found across the seam (tagged ``@seam``); the
seam step is the mean difference between the two columns either side of the seam over the
face's rows (two halves of different drawings show as a step).

    python benchmarks/seam_eval.py --limit 30
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rotation_eval import photos

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import MTCNNDetector, central_face
from idmrag_plugin.engine.oracles import cosine
from idmrag_plugin.engine.seam import SEAM_TAG


def panorama(photo: np.ndarray, box: tuple[float, float, float, float], share: float) -> tuple[np.ndarray, int]:
    """``photo`` beside itself upside down, rolled so that ``share`` of the face ``box``'s width
    lies at the right edge; and the roll (columns to the left)."""
    canvas = np.concatenate([photo, np.ascontiguousarray(photo[::-1, ::-1])], axis=1)
    cut = round(box[0] + share * (box[2] - box[0]))
    return np.ascontiguousarray(np.roll(canvas, -cut, axis=1)), cut


def evaluate(engine: FaceAnonymizer, paths: list[Path], detector: MTCNNDetector, share: float) -> dict:
    found = recognisable = total = 0
    steps, seconds = [], 0.0
    for path in paths:
        original = np.asarray(Image.open(path).convert("RGB"))
        subject = central_face(detector.detect(original), original.shape)
        if subject is None:
            continue
        total += 1
        image, cut = panorama(original, subject.box, share)
        start = time.perf_counter()
        result = engine.anonymize(image)
        seconds += time.perf_counter() - start
        found += any(SEAM_TAG in f.detection.detector for f in result.faces)
        joined = np.ascontiguousarray(np.roll(result.pixels, cut, axis=1)[:, : original.shape[1]])
        recognisable += any(
            float(cosine(o.embed_faces(original, [subject.landmarks]), o.embed_faces(joined, [subject.landmarks]))[0])
            >= engine.thresholds[o.name] for o in engine.oracles)
        rows = slice(max(0, int(subject.box[1])), int(subject.box[3]))
        steps.append(float(np.abs(joined[rows, cut].astype(int) - joined[rows, cut - 1].astype(int)).mean()))
    return {
        "photos": total,
        "found_across": round(found / max(total, 1), 4),
        "recognisable": round(recognisable / max(total, 1), 4),
        "seam_step_median": round(float(np.median(steps)) if steps else 0.0, 2),
        "seconds_per_photo": round(seconds / max(total, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.3, 0.7])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/seam_eval.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    paths = photos(Path(args.lfw), args.limit)
    detector = MTCNNDetector()
    rows: dict[str, dict] = {}
    oracles = None
    for searching in (False, True):
        engine = FaceAnonymizer(AnonymizerConfig(cache_size=0, seam_search=searching), oracles=oracles)
        oracles = engine.oracles
        for share in args.shares:
            key = f"seam_search={searching}: {share:g} of the face at the right edge"
            rows[key] = evaluate(engine, paths, detector, share)
            print(key, json.dumps(rows[key]), flush=True)
    Path(args.output).write_text(json.dumps({"photos": len(paths), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
