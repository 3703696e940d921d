"""How much a face cut by the frame can tell its oracles: each view's similarity with the face
blanked out.

The engine judges a face the frame cuts through crops that reach past the frame: dlib's chips
fill that part with black, FaceNet's crops mirror the photo there. Where most of a chip is that
fill, on the original and on the output alike, the oracle sees two nearly equal crops whatever is
drawn in the frame. This measures it: the second photo of ``--limit`` LFW identities, its face
cut by one border in turn (as ``attacker_eval.py --cut`` cuts it), is anonymized by the default
engine; then every oracle compares the cut photo with the same photo whose face (its detection
box grown 1.7x, the widest obfuscation) is filled with grey, through the engine's landmarks. A
face whose *blank* similarity reaches the oracle's threshold (less its alignment margin, as the
engine's aligned view is judged) is one no drawing can be told apart from the original by that
view's threshold alone: it sits there even with no face at all.

    python benchmarks/blank_views.py --limit 160 --cut 0.3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from attacker_eval import anonymized_cut  # the same cuts as the attacker eval
from PIL import Image
from rotation_eval import photos  # the same photos: the second of each identity

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import Detection, MTCNNDetector, central_face
from idmrag_plugin.engine.obfuscate import WIDENINGS
from idmrag_plugin.engine.oracles import cosine

GREY = 128


def blanked(image: np.ndarray, detection: Detection, grow: float = WIDENINGS[-1]) -> np.ndarray:
    """``image`` with ``detection``'s box grown ``grow`` times (about its centre) filled with grey."""
    x1, y1, x2, y2 = detection.box
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    half_w, half_h = (x2 - x1) * grow / 2.0, (y2 - y1) * grow / 2.0
    out = image.copy()
    top, bottom = max(0, round(cy - half_h)), max(0, round(cy + half_h))
    left, right = max(0, round(cx - half_w)), max(0, round(cx + half_w))
    out[top:bottom, left:right] = GREY
    return out


def evaluate(engine: FaceAnonymizer, paths: list[Path], cut: float) -> dict:
    detector = MTCNNDetector()
    faces = []
    for number, path in enumerate(paths):
        original = np.asarray(Image.open(path).convert("RGB"))
        subject = central_face(detector.detect(original), original.shape)
        if subject is None:
            continue
        cut_photo, _, face = anonymized_cut(engine, original, subject.box, number, cut)
        if face is None:
            continue
        blank = blanked(cut_photo, face.detection)
        row: dict[str, object] = {"photo": path.name, "method": face.method, "attempts": face.attempts}
        for oracle in engine.oracles:
            before = oracle.embed_faces(cut_photo, [face.detection.landmarks])
            similarity = float(cosine(before, oracle.embed_faces(blank, [face.detection.landmarks]))[0])
            row[f"{oracle.name}_blank_margin"] = round(similarity - engine.thresholds[oracle.name]
                                                       + oracle.alignment_margin, 4)
        faces.append(row)
    summary: dict[str, object] = {}
    for method in sorted({f["method"] for f in faces}):
        mine = [f for f in faces if f["method"] == method]
        summary[method] = {"faces": len(mine), **{
            f"{oracle.name}_blank_at_threshold": sum(f[f"{oracle.name}_blank_margin"] >= 0 for f in mine)
            for oracle in engine.oracles}}
    return {"by_method": summary, "faces": faces}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--limit", type=int, default=160)
    parser.add_argument("--cut", type=float, default=0.3,
                        help="share of each face's box cut off by one border")
    parser.add_argument("--secret", default="blank_views", help="pseudonym secret (same faces run to run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="benchmarks/results/blank_views.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0))
    engine.generator.secret = args.secret.encode()
    out = {"photos": args.limit, "cut": args.cut, "grow": WIDENINGS[-1],
           **evaluate(engine, photos(Path(args.lfw), args.limit), args.cut)}
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["by_method"], indent=2))


if __name__ == "__main__":
    main()
