"""Faces in film negatives: detection recall and how many stay recognisable.

Each LFW photo (the second of identities with two or more) is turned into its negative
(255 - pixel) and anonymized by the default engine, with and without the negative search;
the output is turned positive again and its central face compared, by each oracle, with the
original's (recognisable = any oracle at or above its threshold). Recall counts negatives in
which a face was found over the subject's nose.

    python benchmarks/negative_eval.py --limit 100
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rotation_eval import photos

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import MTCNNDetector, central_face
from idmrag_plugin.engine.oracles import cosine


def evaluate(engine: FaceAnonymizer, paths: list[Path], detector: MTCNNDetector) -> dict:
    found = recognisable = total = 0
    for path in paths:
        original = np.asarray(Image.open(path).convert("RGB"))
        subject = central_face(detector.detect(original), original.shape)
        if subject is None:
            continue
        total += 1
        result = engine.anonymize(255 - original)
        nose = subject.landmarks[2]
        found += any(f.detection.box[0] <= nose[0] <= f.detection.box[2]
                     and f.detection.box[1] <= nose[1] <= f.detection.box[3] for f in result.faces)
        positive = 255 - result.pixels
        recognisable += any(
            float(cosine(o.embed_faces(original, [subject.landmarks]), o.embed_faces(positive, [subject.landmarks]))[0])
            >= engine.thresholds[o.name]
            for o in engine.oracles
        )
    return {
        "negatives": total,
        "recall": round(found / max(total, 1), 4),
        "recognisable": round(recognisable / max(total, 1), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/negative_eval.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    paths = photos(Path(args.lfw), args.limit)
    detector = MTCNNDetector()
    rows = {}
    shared = None
    for negative_search in (False, True):
        engine = FaceAnonymizer(AnonymizerConfig(negative_search=negative_search, cache_size=0), oracles=shared)
        shared = engine.oracles
        rows[f"negative_search={negative_search}"] = evaluate(engine, paths, detector)
        print(negative_search, json.dumps(rows[f"negative_search={negative_search}"]), flush=True)
    Path(args.output).write_text(json.dumps({"photos": len(paths), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
