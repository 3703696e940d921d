"""Drawings against their photo's focus: how many faces fail closed, how many attempts they take
and how many drawings keep clearly more fine detail than the photo's face (a crisp face pasted
into a defocused head), with the late attempts' allowance set by ``--wider-allowance``.

The default engine (fresh, fixed pseudonym secret) runs on the first photos of ``--limit`` LFW
people (shuffled by ``--seed``) and on the scenes; each drawn face's detail is compared with the
photo's at its landmarks (``generation.sharpness.sharper_by``).

    python benchmarks/focus_eval.py --lfw ../shared/data/lfw --scenes ../shared/data/scenes \
        --limit 100 --seed 21 --wider-allowance inf   # the late attempts' drawings as drawn
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.align import align_face
from idmrag_plugin.generation import renderer_generator
from idmrag_plugin.generation.renderer_generator import WIDER_MASK_FROM_ATTEMPT
from idmrag_plugin.generation.sharpness import sharper_by
from idmrag_plugin.report import GENERATED

logger = logging.getLogger("focus_eval")
#: A drawing with this many times its photo's fine detail is counted as a crisp face in a soft head.
CRISP = 1.6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--scenes", default="../shared/data/scenes")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--secret", default="late")
    parser.add_argument("--wider-allowance", type=float, default=None,
                        help="the late attempts' allowance (inf: as drawn); default: the package's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="write each face's row here (JSON)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.wider_allowance is not None:
        renderer_generator.WIDER_ALLOWANCE = args.wider_allowance
    photos = sorted(Path(args.lfw, "images").glob("*/*_0001.jpg"))
    if not photos:
        raise SystemExit(f"no LFW photos under {args.lfw}/images")
    random.Random(args.seed).shuffle(photos)
    photos = photos[: args.limit] + sorted(Path(args.scenes).glob("*.jpg"))
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0, threads=args.threads))
    engine.generator.secret = args.secret.encode()
    rows, start = [], time.perf_counter()
    for path in photos:
        image = np.asarray(Image.open(path).convert("RGB"))
        result = engine.anonymize(image)
        for face in result.faces:
            if face.method != GENERATED and face.attempts == 0:
                continue  # obfuscated without a drawing (found only in another copy, doubtful)
            detail = 0.0
            if face.method == GENERATED:
                photo = align_face(image, face.detection.landmarks, 128).crop
                shown = align_face(result.pixels, face.detection.landmarks, 128).crop
                detail = float(sharper_by(shown, photo))
            rows.append({"photo": path.name, "face": face.index, "method": face.method,
                         "attempts": face.attempts, "detail_over_photo": round(detail, 3)})
    drawn = [r for r in rows if r["method"] == GENERATED]
    late = [r for r in drawn if r["attempts"] > WIDER_MASK_FROM_ATTEMPT]
    summary = {
        "wider_allowance": renderer_generator.WIDER_ALLOWANCE,
        "faces": len(rows),
        "failed_closed": len(rows) - len(drawn),
        "mean_attempts": round(float(np.mean([r["attempts"] for r in rows])), 3) if rows else 0.0,
        "late_drawings": len(late),
        f"drawings_over_{CRISP}x_detail": sum(r["detail_over_photo"] > CRISP for r in drawn),
        "seconds": round(time.perf_counter() - start, 1),
    }
    logger.info("%s", json.dumps(summary))
    if args.output:
        Path(args.output).write_text(json.dumps({"summary": summary, "faces": rows}, indent=1))


if __name__ == "__main__":
    main()
