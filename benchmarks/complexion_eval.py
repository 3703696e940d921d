"""Whether a pseudonym is drawn in the person's complexion: the first drawing's lightness beside
the photo's, for the darkest faces and for others.

Groups: the first photos of ``--pool`` LFW identities, split into the ``--per-group`` with the
darkest faces and ``--per-group`` drawn from the rest (UTKFace's labelled chips are cut too
tight: the renderer draws from the context around the face, and a chip has almost none). For
each face the default engine's generator draws the person's first pseudonym into their aligned
crop, and the median
CIELAB L* of the cheeks and nose (:func:`~idmrag_plugin.generation.attributes.face_lightness`)
of that raw drawing, before the blend tones it to the photo, is compared with the photo's. A
drawing much lighter than the photo is a face of another complexion that the blend then darkens
into pale features on dark skin. The renderer's drawing of the person's *own* code is measured
beside it: how close the renderer itself comes. ``--sheet`` writes a picture (per face: the
photo's crop, its own code drawn, the pseudonym drawn, the pseudonym as the engine pastes it).

    python benchmarks/complexion_eval.py --pool 600 --per-group 40 --threads 1 --sheet /tmp/complexion.png
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

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer, UnfitDrawingError
from idmrag_plugin.engine.align import align_face
from idmrag_plugin.engine.detect import MTCNNDetector, central_face
from idmrag_plugin.engine.generator import GenerationRequest
from idmrag_plugin.generation.attributes import face_lightness

logger = logging.getLogger("complexion_eval")

def darkest_faces(root: Path, pool: int, per_group: int, seed: int, detector: MTCNNDetector,
                  crop_size: int) -> dict[str, list[Path]]:
    """The ``per_group`` first photos of ``pool`` LFW identities whose faces are darkest, and
    ``per_group`` drawn from the others."""
    paths, tones = [], []
    for folder in sorted(p for p in (root / "images").iterdir() if p.is_dir())[:pool]:
        path = min(folder.glob("*.jpg"))
        image = np.asarray(Image.open(path).convert("RGB"))
        face = central_face(detector.detect(image), image.shape)
        if face is not None:
            paths.append(path)
            tones.append(face_lightness(align_face(image, face.landmarks, crop_size).crop[None])[0])
    order = np.argsort(tones, kind="stable")
    rest = order[per_group:]
    drawn = np.random.default_rng(seed).choice(len(rest), min(per_group, len(rest)), replace=False)
    return {"darkest": [paths[i] for i in order[:per_group]], "others": [paths[i] for i in sorted(rest[drawn])]}


def first_drawings(engine: FaceAnonymizer, image: np.ndarray, detector: MTCNNDetector):
    """(crop, own code drawn, pseudonym drawn, pseudonym pasted) for the photo's central face, or None."""
    face = central_face(detector.detect(image), image.shape)
    if face is None:
        return None
    generator = engine.generator
    crop = align_face(image, face.landmarks, engine.config.crop_size).crop
    drawn: list[np.ndarray] = []
    composite = generator._composite

    def keep(picture: np.ndarray, *args, **kwargs) -> np.ndarray:
        drawn.append(picture)
        return composite(picture, *args, **kwargs)

    generator._composite = keep  # the raw drawing, before the blend tones it to the photo
    try:
        pasted = generator.generate(GenerationRequest(face=crop, attempt=0, seed=0))
    except UnfitDrawingError:
        return None  # nothing fit to show at a first attempt: the engine would make another
    finally:
        del generator._composite
    id_mu, attr_mu = generator._encoded(crop)
    own = generator._render(id_mu, crop, attr_mu, generator.mask_grow_for(0))[0]
    side = crop.shape[0]

    def sized(picture: np.ndarray) -> np.ndarray:
        return cv2.resize(picture, (side, side), interpolation=cv2.INTER_AREA)

    return crop, sized(own), sized(drawn[-1]), pasted


def evaluate(engine: FaceAnonymizer, groups: dict[str, list[Path]], sheet_rows: int,
             detector: MTCNNDetector) -> tuple[dict, list]:
    results, rows = {}, []
    for group, paths in groups.items():
        gaps, own_gaps, faces = [], [], []
        for number, path in enumerate(paths):
            drawings = first_drawings(engine, np.asarray(Image.open(path).convert("RGB")), detector)
            if drawings is None:
                continue
            crop, own, drawn, pasted = drawings
            photo, own_l, drawn_l = face_lightness(np.stack([crop, own, drawn]))
            gaps.append(drawn_l - photo)
            own_gaps.append(own_l - photo)
            faces.append({"photo": path.parent.name + "/" + path.name, "lightness": photo,
                          "pseudonym_minus_photo": drawn_l - photo, "own_code_minus_photo": own_l - photo})
            if number < sheet_rows:
                rows.append(np.concatenate([crop, own, drawn, pasted], axis=1))
        gaps_a, own_a = np.array(gaps), np.array(own_gaps)
        results[group] = {
            "count": len(gaps),
            "pseudonym_minus_photo_mean": round(float(gaps_a.mean()), 1),
            "pseudonym_abs_gap_median": round(float(np.median(np.abs(gaps_a))), 1),
            "pseudonym_abs_gap_p90": round(float(np.quantile(np.abs(gaps_a), 0.9)), 1),
            "own_code_minus_photo_mean": round(float(own_a.mean()), 1),
            "own_code_abs_gap_median": round(float(np.median(np.abs(own_a))), 1),
            "faces": faces,
        }
        logger.info("%s: %s", group, {k: v for k, v in results[group].items() if k != "faces"})
    return results, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--pool", type=int, default=600, help="LFW identities whose darkest faces are taken")
    parser.add_argument("--per-group", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--secret", default="complexion-eval", help="the pseudonym secret")
    parser.add_argument("--weights", default=None, help="a code LCM folder in place of the packaged one")
    parser.add_argument("--sheet", default=None, help="write a picture of the first faces of each group here")
    parser.add_argument("--sheet-rows", type=int, default=4, help="faces per group on the sheet")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/complexion.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    root = Path(args.lfw)
    if not (root / "images").is_dir():
        raise SystemExit(f"no LFW images under {root}: pass --lfw")
    engine = FaceAnonymizer(AnonymizerConfig(threads=args.threads, generator_weights=args.weights))
    engine.generator.secret = args.secret.encode()  # the same pseudonyms for every run and model compared
    detector = MTCNNDetector()
    groups = darkest_faces(root, args.pool, args.per_group, args.seed, detector, engine.config.crop_size)
    results, rows = evaluate(engine, groups, args.sheet_rows, detector)
    report = {"pool": args.pool, "per_group": args.per_group, "secret": args.secret, "seed": args.seed, "weights": args.weights or "packaged",
              "groups": results}
    output = Path(args.output or "benchmarks/results/complexion.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    if args.sheet and rows:
        Image.fromarray(np.concatenate(rows, axis=0)).save(args.sheet)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
