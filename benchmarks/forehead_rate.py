"""How often the default engine's faces carry dark smudges on a bare forehead.

LFW photos (the first photo of randomly drawn people) go through the default engine (fixed
secret); each generated face is aligned, in the photo and in the output, with the detection's
landmarks into the 128 px canonical crop, and its ``forehead_smudge`` (the share of the forehead
band darker than the cheeks, beyond the photo's share: :mod:`idmrag_plugin.generation.forehead`)
is read as a user sees it, after the paste. Reports how many faces are over ``SMUDGE_LIMIT``,
with the engine's forehead screen on and, with ``--compare``, off; ``--sheet`` writes the worst
faces (photo, output) side by side.

    python benchmarks/forehead_rate.py --lfw ../shared/data/lfw --photos 150 --compare \
        --sheet /tmp/forehead.png
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from idmrag_plugin import FaceAnonymizer
from idmrag_plugin.engine.align import align_face
from idmrag_plugin.generation.forehead import forehead_smudge
from idmrag_plugin.generation.renderer_generator import SMUDGE_LIMIT

logger = logging.getLogger("forehead_rate")


def smudges(paths: list[Path], screen: bool, secret: bytes) -> list[tuple[float, str, np.ndarray, np.ndarray]]:
    """(smudge, photo name, photo crop, output crop) of every generated face of ``paths``."""
    engine = FaceAnonymizer()
    engine.generator.secret = secret
    if not screen:
        engine.generator.smudged = lambda shown, face: 0.0
    found = []
    for path in paths:
        photo = np.asarray(Image.open(path).convert("RGB"))
        result = engine.anonymize(photo)
        output = np.asarray(result.image)
        for face in result.faces:
            if face.method != "generated":
                continue
            before = align_face(photo, face.detection.landmarks, 128).crop
            after = align_face(output, face.detection.landmarks, 128).crop
            found.append((forehead_smudge(after, before), f"{path.parent.name}#{face.index}", before, after))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, required=True, help="LFW folder (images/<person>/*.jpg)")
    parser.add_argument("--photos", type=int, default=150)
    parser.add_argument("--seed", type=int, default=11, help="which people are drawn")
    parser.add_argument("--secret", default="forehead-rate")
    parser.add_argument("--compare", action="store_true", help="also run with the forehead screen off")
    parser.add_argument("--sheet", type=Path, help="PNG of the worst faces, photo beside output")
    parser.add_argument("--worst", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/forehead_rate.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    people = sorted((args.lfw / "images").iterdir())
    if not people:
        parser.error(f"no people under {args.lfw / 'images'}")
    chosen = np.random.default_rng(args.seed).choice(len(people), min(args.photos, len(people)), replace=False)
    paths = [min(people[i].glob("*.jpg")) for i in chosen]
    report: dict[str, object] = {"photos": len(paths), "limit": SMUDGE_LIMIT}
    sheets = {}
    for screen in ([True, False] if args.compare else [True]):
        found = smudges(paths, screen, args.secret.encode())
        scores = np.array([s for s, *_ in found])
        key = "screen on" if screen else "screen off"
        report[key] = {"faces": len(found), "over limit": int((scores > SMUDGE_LIMIT).sum()),
                       "median": round(float(np.median(scores)), 3),
                       "worst": [(round(s, 3), name) for s, name, *_ in sorted(found, key=lambda f: -f[0])[:args.worst]]}
        print(key, json.dumps(report[key]["faces"]), "faces,", report[key]["over limit"], "over", SMUDGE_LIMIT)
        sheets[key] = sorted(found, key=lambda f: -f[0])[:args.worst]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    if args.sheet:
        tiles = [np.concatenate([cv2.resize(before, (160, 160)), cv2.resize(after, (160, 160))], 1)
                 for key in sheets for _, _, before, after in sheets[key]]
        rows = [np.concatenate(tiles[i:i + 4], 1) for i in range(0, len(tiles) - len(tiles) % 4, 4)]
        Image.fromarray(np.concatenate(rows, 0)).save(args.sheet)


if __name__ == "__main__":
    main()
