"""Faces in photos reduced to two levels (a fax or photocopy thresholded to black and white, or
quantized to two colours), which no blur restores: how many the engine's search finds, and
whether the ones it misses identify the person any better than chance.

For LFW people with two photos, the first is reduced to two levels and searched by the default
engine's detector. For a face it misses, each oracle compares that face (at the clear photo's
landmarks; as it is and blurred 1, 2 and 3 px, the attacker's choice) with the person's second
photo, and with the first photos of ``--impostors`` other people: a missed face over an
oracle's threshold against the person but not above every impostor identifies no one.

    python benchmarks/two_level_eval.py --lfw ../shared/data/lfw --limit 60 --kind threshold --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import MTCNNDetector, central_face

logger = logging.getLogger("two_level_eval")
KINDS = ("threshold", "two-colour")
BLURS = (1.0, 2.0, 3.0)


def two_level(image: np.ndarray, kind: str) -> np.ndarray:
    """``image`` thresholded at Otsu's level of its grey levels, or quantized to two colours."""
    if kind == "threshold":
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        _, dots = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return np.repeat(dots[..., None], 3, axis=2)
    return np.asarray(Image.fromarray(image).quantize(2).convert("RGB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--limit", type=int, default=60, help="people with two photos")
    parser.add_argument("--kind", choices=KINDS, default="threshold")
    parser.add_argument("--impostors", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="write the counts and each missed face's margins here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    root = Path(args.lfw) / "images"
    if not root.is_dir():
        raise SystemExit(f"no LFW images at {root}")
    people = [p for p in sorted(root.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= 2]
    random.Random(7).shuffle(people)
    engine = FaceAnonymizer(AnonymizerConfig(generator="none", cache_size=0))
    plain = MTCNNDetector()

    def photo(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        image = np.asarray(Image.open(path).convert("RGB"))
        face = central_face(plain.detect(image), image.shape)
        return None if face is None else (image, face.landmarks)

    impostors = [p for p in (photo(min(q.glob("*.jpg"))) for q in people[args.limit: args.limit + args.impostors])
                 if p is not None]

    def unit(embeddings: np.ndarray) -> np.ndarray:
        return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)

    against = {o.name: unit(np.concatenate([o.embed_faces(image, [points]) for image, points in impostors]))
               for o in engine.oracles}
    found, missed = 0, []
    for person in people[: args.limit]:
        first, second = (photo(p) for p in sorted(person.glob("*.jpg"))[:2])
        if first is None or second is None:
            continue
        reduced = two_level(first[0], args.kind)
        nose = first[1][2]
        if any(d.box[0] < nose[0] < d.box[2] and d.box[1] < nose[1] < d.box[3] for d in engine.detector.detect(reduced)):
            found += 1
            continue
        views = [reduced] + [cv2.GaussianBlur(reduced, (0, 0), sigma) for sigma in BLURS]
        margins: dict[str, dict[str, float]] = {}
        for oracle in engine.oracles:
            threshold = engine.thresholds[oracle.name]
            shown = unit(np.concatenate([oracle.embed_faces(view, [first[1]]) for view in views]))
            own = unit(oracle.embed_faces(second[0], [second[1]]))
            margins[oracle.name] = {"person": round(float((own @ shown.T).max()) - threshold, 3),
                                    "impostors_max": round(float((against[oracle.name] @ shown.T).max()) - threshold, 3)}
        missed.append({"person": person.name, "margins": margins})
        logger.info("%s missed: %s", person.name, margins)
    oracles = [o.name for o in engine.oracles]
    report = {
        "kind": args.kind, "found": found, "missed": len(missed), "impostors": len(impostors),
        # over an oracle's threshold against the person's other photo, and above every impostor there
        "matched": {o: sum(m["margins"][o]["person"] >= 0 for m in missed) for o in oracles},
        "identified": {o: sum(m["margins"][o]["person"] >= max(0.0, m["margins"][o]["impostors_max"]) for m in missed)
                       for o in oracles},
        "impostor_over_threshold": {o: sum(m["margins"][o]["impostors_max"] >= 0 for m in missed) for o in oracles},
        "faces": missed,
    }
    logger.info("%s", {k: v for k, v in report.items() if k != "faces"})
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
