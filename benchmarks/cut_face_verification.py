"""Why faces cut by the frame fail closed: the default engine against a real other person's face.

    python benchmarks/cut_face_verification.py --lfw ../shared/data/lfw --limit 60 --share 0.45

Each LFW photo's central face is cut by one border (left, right, top, bottom in turn, as in
``border_eval.py``) so that ``--share`` of its box lies outside the frame, then anonymized twice:
by the default engine, and by an engine whose generator pastes the cameraman's face (scikit-image;
a real, different person) in one attempt. The whole photos are the control. Where even a real
other person's face is "still recognisable as the original", the oracles' views of the cut face
(largely the frame's fill and the photo around the face, the same before and after) decide the
verdict, not the face drawn there.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import skimage.data
from border_eval import _cut  # the same cuts as the detection benchmark
from latency import OtherPersonGenerator  # pastes one fixed real face

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.align import align_face
from idmrag_plugin.engine.detect import central_face
from idmrag_plugin.image_io import load_rgb

logger = logging.getLogger("cut_face_verification")
SIDES = ("left", "right", "top", "bottom")


def _subject(result, visible: tuple[float, ...]):
    """The report of the face overlapping the visible part of the cut face most, if any."""
    x1, y1, x2, y2 = visible

    def overlap(face) -> float:
        bx1, by1, bx2, by2 = face.detection.box
        return max(0.0, min(x2, bx2) - max(x1, bx1)) * max(0.0, min(y2, by2) - max(y1, by1))

    best = max(result.faces, key=overlap, default=None)
    return best if best is not None and overlap(best) > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--share", type=float, default=0.45, help="share of the face's box outside the frame")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/cut_face_verification.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(args.threads)
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0, threads=args.threads))
    engine.generator.secret = b"cut-face-verification".ljust(32, b"\0")
    camera = np.repeat(skimage.data.camera()[..., None], 3, axis=2)
    (camera_face,) = engine.detector.detect(camera)
    other = FaceAnonymizer(AnonymizerConfig(cache_size=0, max_attempts=1, threads=args.threads),
                           generator=OtherPersonGenerator(align_face(camera, camera_face.landmarks, 128).crop),
                           detector=engine.detector, oracles=engine.oracles)
    photos = sorted(Path(args.lfw, "images").glob("*/*.jpg"))
    rng = np.random.default_rng(0)
    photos = [photos[i] for i in rng.choice(len(photos), args.limit, replace=False)]
    counts = {name: Counter() for name in ("default engine", "other real face, 1 attempt")}
    reasons = {name: Counter() for name in counts}
    for i, path in enumerate(photos):
        image = load_rgb(path, 10**8)
        face = central_face(engine.detector.detect(image), image.shape)
        if face is None:
            continue
        cut, visible = _cut(image, face.box, SIDES[i % 4], args.share)
        for name, anonymizer in (("default engine", engine), ("other real face, 1 attempt", other)):
            for kind, photo, box in (("whole", image, face.box), ("cut", cut, visible)):
                report = _subject(anonymizer.anonymize(photo), box)
                if report is None:
                    counts[name][f"{kind}: not found"] += 1
                    continue
                counts[name][f"{kind}: faces"] += 1
                counts[name][f"{kind}: failed closed"] += report.method != "generated"
                if kind == "cut" and report.method != "generated":
                    reasons[name][report.reason.removeprefix("still recognisable as the original by ")] += 1
    summary = {}
    for name, c in counts.items():
        summary[name] = {kind: c[f"{kind}: failed closed"] / max(c[f"{kind}: faces"], 1) for kind in ("whole", "cut")}
        summary[name]["faces"] = {kind: c[f"{kind}: faces"] for kind in ("whole", "cut")}
        logger.info("%-28s failed closed: whole %.1f%% of %d, cut %.1f%% of %d; cut faces' reasons: %s", name,
                    100 * summary[name]["whole"], c["whole: faces"], 100 * summary[name]["cut"], c["cut: faces"],
                    dict(reasons[name].most_common(4)))
    with open(args.out, "w") as handle:
        json.dump({"command": "python benchmarks/cut_face_verification.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "out"), "summary": summary,
            "reasons": {k: dict(v) for k, v in reasons.items()}}, handle, indent=2)


if __name__ == "__main__":
    main()
