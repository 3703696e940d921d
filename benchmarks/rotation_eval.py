"""Faces lying on their side: detection recall and how many stay recognisable.

Each LFW photo (the second of identities with two or more, so not the calibration's first
photos) is turned by 90, 180 and 270 degrees (PIL, expand=True) and anonymized; the
output is turned back and its central face compared, by each oracle, with the original's
(recognisable = any oracle at or above its threshold). Recall counts rotated photos in
which a face was found over the subject's face. Also times the default engine on the
upright photos with one and with four detection passes.

    python benchmarks/rotation_eval.py --limit 100 --rotations 0 --rotations 0,90,180,270
"""

from __future__ import annotations

import argparse
import json
import logging
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


def evaluate(engine: FaceAnonymizer, paths: list[Path], detector: MTCNNDetector) -> dict:
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
        for angle in (90, 180, 270):
            total += 1
            rotated = Image.fromarray(original).rotate(angle, expand=True)
            result = engine.anonymize(rotated)
            back = np.asarray(Image.fromarray(result.pixels).rotate(-angle, expand=True))
            cx, cy = subject.landmarks[2]
            w = original.shape[1]
            h = original.shape[0]
            # the subject's nose in the rotated frame (PIL turns counter-clockwise)
            nose = {90: (cy, w - 1 - cx), 180: (w - 1 - cx, h - 1 - cy), 270: (h - 1 - cy, cx)}[angle]
            found += any(f.detection.box[0] <= nose[0] <= f.detection.box[2]
                         and f.detection.box[1] <= nose[1] <= f.detection.box[3] for f in result.faces)
            leaked = False
            for oracle in engine.oracles:
                sim = float(cosine(oracle.embed_faces(original, [subject.landmarks]),
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
    parser.add_argument("--rotations", action="append", default=None, help="comma-separated; repeat to compare")
    parser.add_argument("--generator", default="vae-decode")
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
        rows[spec] = evaluate(engine, paths, detector)
        print(spec, json.dumps(rows[spec]), flush=True)
    out = {"photos": len(paths), "generator": args.generator, "threads": args.threads, "results": rows}
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
