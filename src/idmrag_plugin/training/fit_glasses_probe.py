"""``idmrag fit-glasses-probe``: fit the probe that reads glasses from dlib's descriptor.

The labels (``glasses_labels.json`` beside this module) are LFW first photos and the default
engine's drawings of the first of them, labelled by eye (see its ``about``). The photos'
central faces are aligned as the engine aligns them (128 px) and described by dlib; the
drawings are made again by anonymizing the photos in the labels' order with the labels'
pseudonym secret and the glasses screen off (the drawings that were labelled), and aligned at
the photo's landmarks. Drawings count ``--drawing-weight`` times a photo: the probe judges
drawings. Prints the area under the ROC curve on drawings held out by person (5 folds), then
fits on everything and writes the probe (see :mod:`idmrag_plugin.generation.glasses`).

    idmrag fit-glasses-probe --lfw ../shared/data/lfw --output src/idmrag_plugin/data/glasses_probe.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from idmrag_plugin.errors import InvalidImageError
from idmrag_plugin.generation.glasses import GlassesProbe

logger = logging.getLogger(__name__)

LABELS = Path(__file__).with_name("glasses_labels.json")


def described_crops(lfw: Path, labels: dict, threads: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """dlib's descriptors of the labelled photos' central faces and of their drawings, and
    the labelled drawings' names (in order)."""
    from PIL import Image

    from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
    from idmrag_plugin.engine.align import align_face
    from idmrag_plugin.engine.detect import central_face
    from idmrag_plugin.engine.oracles import build_oracle

    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0, threads=threads, keep_glasses=False))
    engine.generator.secret = labels["drawings_secret"].encode()
    reader = build_oracle("dlib", device="cpu")
    photos, drawings, drawn_names = [], [], []
    for index, name in enumerate(labels["photos"]):
        image = np.asarray(Image.open(lfw / "images" / name).convert("RGB"))
        face = central_face(engine.detector.detect(image), image.shape)
        if face is None:
            raise InvalidImageError(f"no face found in {name}; the labels describe its central face")
        photos.append(align_face(image, face.landmarks, 128).crop)
        if index < labels["drawn_photos"]:
            drawn = np.asarray(engine.anonymize(image).image)
            if name in labels["drawings"]:
                drawings.append(align_face(drawn, face.landmarks, 128).crop)
                drawn_names.append(name)
        if (index + 1) % 80 == 0:
            logger.info("%d of %d photos described", index + 1, len(labels["photos"]))

    def describe(crops: list[np.ndarray]) -> np.ndarray:
        batch = np.stack(crops)
        return np.concatenate([reader.embed_aligned(batch[i:i + 32]) for i in range(0, len(batch), 32)])

    return describe(photos), describe(drawings), drawn_names


def fit_probe(photo_e: np.ndarray, photo_y: np.ndarray, photo_names: list[str], drawn_e: np.ndarray,
              drawn_y: np.ndarray, drawn_names: list[str], C: float = 1.0,
              drawing_weight: float = 3.0) -> tuple[GlassesProbe, np.ndarray]:
    """The probe fitted on every photo and drawing, and each drawing's reading by a probe
    fitted without it, its fold's other drawings, and its person's photo (5 folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    def fit(photo_rows: np.ndarray, drawn_rows: np.ndarray) -> LogisticRegression:
        x = np.concatenate([photo_e[photo_rows], drawn_e[drawn_rows]])
        y = np.concatenate([photo_y[photo_rows], drawn_y[drawn_rows]])
        weight = np.concatenate([np.ones(len(photo_rows)), np.full(len(drawn_rows), drawing_weight)])
        return LogisticRegression(C=C, max_iter=5000, class_weight="balanced").fit(x, y, sample_weight=weight)

    held_out = np.zeros(len(drawn_y))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(drawn_e, drawn_y):
        people = {drawn_names[i] for i in test}  # a person's photo leaves with their drawing
        photo_rows = np.array([i for i, name in enumerate(photo_names) if name not in people])
        held_out[test] = fit(photo_rows, train).predict_proba(drawn_e[test])[:, 1]
    model = fit(np.arange(len(photo_y)), np.arange(len(drawn_y)))
    return GlassesProbe(model.coef_[0].astype(np.float64), float(model.intercept_[0]), "dlib"), held_out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="idmrag fit-glasses-probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw"))
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--drawing-weight", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sklearn.metrics import roc_auc_score

    labels = json.loads(args.labels.read_text())
    photo_e, drawn_e, drawn_names = described_crops(args.lfw, labels, args.threads)
    photo_y = np.array(list(labels["photos"].values()), bool)
    drawn_y = np.array([labels["drawings"][name] for name in drawn_names], bool)
    probe, held_out = fit_probe(photo_e, photo_y, list(labels["photos"]), drawn_e, drawn_y, drawn_names,
                                args.C, args.drawing_weight)
    auc = roc_auc_score(drawn_y, held_out)
    logger.info("drawings held out by person: AUC %.3f; at 0.5 / 0.6 / 0.7 glasses read on %s of those with "
                "them and %s of those without", auc,
                " / ".join(f"{np.mean(held_out[drawn_y] >= t):.0%}" for t in (0.5, 0.6, 0.7)),
                " / ".join(f"{np.mean(held_out[~drawn_y] >= t):.0%}" for t in (0.5, 0.6, 0.7)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    probe.save(args.output, provenance=json.dumps({
        "photos": len(photo_y), "drawings": len(drawn_y), "C": args.C, "drawing_weight": args.drawing_weight,
        "held_out_drawings_auc": round(float(auc), 4)}))
    logger.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
