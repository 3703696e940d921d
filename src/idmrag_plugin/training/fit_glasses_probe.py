"""``idmrag fit-glasses-probe``: fit the probes that read glasses on a photo and on a drawing.

The labels (``glasses_labels.json`` beside this module) are LFW first photos and the default
engine's drawings of the first of them, labelled by eye (see its ``about``). The photos'
central faces are aligned as the engine aligns them (128 px) and described by dlib (and, for the
photo's probe, by the gradients of their eye band); the
drawings are made again by anonymizing the photos in the labels' order with the labels'
pseudonym secret and the glasses screen off (the drawings that were labelled), and aligned at
the photo's landmarks. The drawing's probe is fitted on drawings and
photos, drawings counting ``--drawing-weight`` times a photo; the photo's on photos. Prints the
area under the ROC curve on drawings held out by person and on photos held out (5 folds each),
then fits on everything and writes both probes to one file (see
:mod:`idmrag_plugin.generation.glasses`).

    idmrag fit-glasses-probe --lfw ../shared/data/lfw --output src/idmrag_plugin/data/glasses_probe.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from idmrag_plugin.errors import InvalidImageError
from idmrag_plugin.generation.glasses import (
    DRAWING_FEATURES,
    PHOTO_FEATURES,
    GlassesProbe,
    GlassesProbes,
    eye_band_gradients,
)

logger = logging.getLogger(__name__)

LABELS = Path(__file__).with_name("glasses_labels.json")


#: The photo probe's weight on dlib's descriptor against the eye band's gradients, as a scale of
#: the descriptor before the fit (an L2 penalty three times lighter on it): on photos held out,
#: 0.97 area under the ROC curve against 0.96 unscaled.
PHOTO_DESCRIPTOR_SCALE = 3.0
#: The photo probe's inverse L2 strength (0.97 held out at 1-3, 0.95 at 0.1).
PHOTO_C = 3.0


def described_crops(
    lfw: Path, labels: dict, threads: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The eye band's gradients and dlib's descriptors of the labelled photos' central faces,
    dlib's descriptors of their drawings, and the labelled drawings' names (in order)."""
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

    return eye_band_gradients(np.stack(photos)), describe(photos), describe(drawings), drawn_names


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
    return GlassesProbe(model.coef_[0].astype(np.float64), float(model.intercept_[0]), DRAWING_FEATURES), held_out


def fit_photo_probe(gradients: np.ndarray, descriptors: np.ndarray, wearing: np.ndarray,
                    C: float = PHOTO_C) -> tuple[GlassesProbe, np.ndarray]:
    """The photo's probe (eye-band gradients and dlib's descriptor) fitted on every photo, and
    each photo's reading by a probe fitted without it (5 folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = np.hstack([gradients, descriptors * PHOTO_DESCRIPTOR_SCALE])

    def fit(rows: np.ndarray) -> LogisticRegression:
        return LogisticRegression(C=C, max_iter=5000, class_weight="balanced").fit(x[rows], wearing[rows])

    held_out = np.zeros(len(wearing))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, wearing):
        held_out[test] = fit(train).predict_proba(x[test])[:, 1]
    model = fit(np.arange(len(wearing)))
    weight = model.coef_[0].astype(np.float64)
    weight[gradients.shape[1]:] *= PHOTO_DESCRIPTOR_SCALE  # the probe reads unscaled descriptors
    return GlassesProbe(weight, float(model.intercept_[0]), PHOTO_FEATURES), held_out

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
    photo_g, photo_e, drawn_e, drawn_names = described_crops(args.lfw, labels, args.threads)
    photo_y = np.array(list(labels["photos"].values()), bool)
    drawn_y = np.array([labels["drawings"][name] for name in drawn_names], bool)
    drawing, drawn_held_out = fit_probe(photo_e, photo_y, list(labels["photos"]), drawn_e, drawn_y, drawn_names,
                                        args.C, args.drawing_weight)
    photo, photo_held_out = fit_photo_probe(photo_g, photo_e, photo_y)
    aucs = {}
    for role, truth, held_out, limits in (("drawings held out by person", drawn_y, drawn_held_out, (0.5, 0.6, 0.7)),
                                          ("photos held out", photo_y, photo_held_out, (0.3, 0.5, 0.7))):
        aucs[role] = round(float(roc_auc_score(truth, held_out)), 4)
        logger.info("%s: AUC %.3f; at %s glasses read on %s of those with them and %s of those without", role,
                    aucs[role], " / ".join(map(str, limits)),
                    " / ".join(f"{np.mean(held_out[truth] >= t):.1%}" for t in limits),
                    " / ".join(f"{np.mean(held_out[~truth] >= t):.1%}" for t in limits))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    GlassesProbes(photo=photo, drawing=drawing).save(args.output, provenance=json.dumps({
        "photos": len(photo_y), "drawings": len(drawn_y), "C": args.C, "drawing_weight": args.drawing_weight,
        "photo_C": PHOTO_C, "photo_descriptor_scale": PHOTO_DESCRIPTOR_SCALE, "held_out_auc": aucs}))
    logger.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
