"""Faces cut by the image border: how many the detector finds, with and without the border search.

    python benchmarks/border_eval.py --lfw ../shared/data/lfw --limit 200

Each LFW photo's central face (found on the whole photo) is cut by one border (left, right,
top or bottom, in turn) so that a given share of its box lies outside the frame; a face counts
as found when a detection overlaps its visible part by at least half of that part. Whole
photos show the false detections the border search adds (detections beyond the one face).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import central_face


def _cut(image: np.ndarray, box: tuple[float, ...], side: str, share: float) -> tuple[np.ndarray, tuple[float, ...]]:
    """The photo cut so that ``share`` of the box's width (or height) is outside the frame,
    and the visible part of the box in the cut photo's coordinates."""
    x1, y1, x2, y2 = box
    if side == "left":
        c = round(x1 + share * (x2 - x1))
        return image[:, c:], (0, y1, x2 - c, y2)
    if side == "right":
        c = round(x2 - share * (x2 - x1))
        return image[:, :c], (x1, y1, c, y2)
    if side == "top":
        c = round(y1 + share * (y2 - y1))
        return image[c:], (x1, 0, x2, y2 - c)
    c = round(y2 - share * (y2 - y1))
    return image[:c], (x1, y1, x2, c)


def _covered(visible: tuple[float, ...], boxes: list[tuple[float, ...]]) -> bool:
    vx1, vy1, vx2, vy2 = visible
    area = max(vx2 - vx1, 1e-6) * max(vy2 - vy1, 1e-6)
    for x1, y1, x2, y2 in boxes:
        inter = max(0.0, min(x2, vx2) - max(x1, vx1)) * max(0.0, min(y2, vy2) - max(y1, vy1))
        if inter / area >= 0.5:
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--shares", default="0.3,0.45,0.6", help="shares of the face cut off")
    parser.add_argument("--out", default="benchmarks/results/border_eval.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    files = sorted(Path(args.lfw, "images").glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no LFW photos under {args.lfw}/images")
    files = files[:: max(1, len(files) // args.limit)][: args.limit]
    engines = {
        on: FaceAnonymizer(AnonymizerConfig(generator="none", cache_size=0, threads=args.threads, border_search=on))
        for on in (False, True)
    }
    shares = [float(s) for s in args.shares.split(",")]
    sides = ["left", "right", "top", "bottom"]
    found = {on: {s: 0 for s in shares} for on in engines}
    extra = {on: 0 for on in engines}
    total = 0
    for i, path in enumerate(files):
        image = np.asarray(Image.open(path).convert("RGB"))
        face = central_face(engines[False].detector.detect(image), image.shape)
        if face is None:
            continue
        total += 1
        side = sides[i % 4]
        for on, engine in engines.items():
            extra[on] += max(0, len(engine.detector.detect(image)) - 1)
            for share in shares:
                cut, visible = _cut(image, face.box, side, share)
                boxes = [d.box for d in engine.detector.detect(np.ascontiguousarray(cut))]
                found[on][share] += _covered(visible, boxes)
    report = {
        "photos": total,
        "found_share_cut_off": {
            ("border search" if on else "without"): {str(s): round(found[on][s] / total, 4) for s in shares} for on in engines
        },
        "extra_detections_on_whole_photos": {("border search" if on else "without"): extra[on] for on in engines},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
