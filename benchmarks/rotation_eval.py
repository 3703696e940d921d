"""Faces lying on their side or tilted: detection recall and how many stay recognisable.

Each LFW photo (the second of identities with two or more, so not the calibration's first
photos) is turned by each of ``--angles`` (default 90, 180 and 270 degrees; PIL,
expand=True, bilinear between quarter turns) and anonymized; the output is turned back
(cropped to the photo) and its central face compared, by each oracle, with the original
turned there and back the same way (recognisable = any oracle at or above its threshold).
Recall counts turned photos in which a face was found over the subject's nose. Also times
the engine on the upright photos with each set of detection passes.

    python benchmarks/rotation_eval.py --limit 100 --rotations 0 --rotations 0,90,180,270
    python benchmarks/rotation_eval.py --limit 100 --angles 40,50,130,140,220,230,310,320 \
        --rotations 0,90,180,270 --rotations 0,45,90,135,180,225,270,315
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import MTCNNDetector, central_face
from idmrag_plugin.engine.oracles import cosine


def photos(root: Path, limit: int) -> list[Path]:
    chosen = []
    for folder in sorted(p for p in (root / "images").iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.jpg"))
        if len(files) >= 2:
            chosen.append(files[1])
        if len(chosen) >= limit:
            break
    return chosen


def _turned(image: np.ndarray, angle: int) -> np.ndarray:
    """``image`` turned counter-clockwise by ``angle`` degrees onto a canvas holding all of it."""
    if angle % 90 == 0:
        return np.ascontiguousarray(np.rot90(image, angle // 90))
    return np.asarray(Image.fromarray(image).rotate(angle, expand=True, resample=Image.BILINEAR))


def _turned_back(image: np.ndarray, angle: int, shape: tuple[int, ...]) -> np.ndarray:
    """A turned image turned back, cropped to the original's ``shape`` (centred)."""
    back = _turned(image, -angle % 360)
    top, left = (back.shape[0] - shape[0]) // 2, (back.shape[1] - shape[1]) // 2
    return np.ascontiguousarray(back[top : top + shape[0], left : left + shape[1]])


def _turned_point(point: np.ndarray, angle: int, shape: tuple[int, ...], turned_shape: tuple[int, ...]) -> np.ndarray:
    if angle % 90 == 0:
        h, w = shape[:2]
        x, y = point
        return np.array({0: (x, y), 90: (y, w - 1 - x), 180: (w - 1 - x, h - 1 - y), 270: (h - 1 - y, x)}[angle % 360])
    t = math.radians(angle)
    dx, dy = point[0] - shape[1] / 2, point[1] - shape[0] / 2
    return np.array([turned_shape[1] / 2 + math.cos(t) * dx + math.sin(t) * dy,
                     turned_shape[0] / 2 - math.sin(t) * dx + math.cos(t) * dy])


def evaluate(engine: FaceAnonymizer, paths: list[Path], detector: MTCNNDetector, angles: list[int]) -> dict:
    found = recognisable = total = 0
    upright_ms = []
    for path in paths:
        original = np.asarray(Image.open(path).convert("RGB"))
        subject = central_face(detector.detect(original), original.shape)
        if subject is None:
            continue
        start = time.perf_counter()
        engine.anonymize(original)
        upright_ms.append((time.perf_counter() - start) * 1000)
        for angle in angles:
            total += 1
            result = engine.anonymize(_turned(original, angle))
            back = _turned_back(result.pixels, angle, original.shape)
            reference = original if angle % 90 == 0 else _turned_back(_turned(original, angle), angle, original.shape)
            nose = _turned_point(subject.landmarks[2], angle, original.shape, result.pixels.shape)
            found += any(f.detection.box[0] <= nose[0] <= f.detection.box[2]
                         and f.detection.box[1] <= nose[1] <= f.detection.box[3] for f in result.faces)
            leaked = False
            for oracle in engine.oracles:
                sim = float(cosine(oracle.embed_faces(reference, [subject.landmarks]),
                                   oracle.embed_faces(back, [subject.landmarks]))[0])
                leaked |= sim >= engine.thresholds[oracle.name]
            recognisable += leaked
    return {
        "rotated_photos": total,
        "recall": round(found / max(total, 1), 4),
        "recognisable": round(recognisable / max(total, 1), 4),
        "upright_ms_median": round(statistics.median(upright_ms), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--rotations", action="append", default=None,
                        help="the engine's detection passes, comma-separated; repeat to compare")
    parser.add_argument("--angles", default="90,180,270", help="angles the photos are turned by, comma-separated")
    parser.add_argument("--generator", default="renderer-lcm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="benchmarks/results/rotation_eval.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    paths = photos(Path(args.lfw), args.limit)
    detector = MTCNNDetector()
    base = FaceAnonymizer(AnonymizerConfig(generator="none", rotations=(0,)))
    rows = {}
    for spec in args.rotations or ["0", "0,90,180,270"]:
        config = AnonymizerConfig(generator=args.generator, rotations=tuple(int(a) for a in spec.split(",")))
        engine = FaceAnonymizer(config, oracles=base.oracles)
        rows[spec] = evaluate(engine, paths, detector, [int(a) for a in args.angles.split(",")])
        print(spec, json.dumps(rows[spec]), flush=True)
    out = {"photos": len(paths), "angles": args.angles, "generator": args.generator, "threads": args.threads, "results": rows}
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
