"""Replaced faces judged by attackers who align faces their own way.

The engine verifies (and the README's benchmark judges) a replaced face through the crop its
own detector's landmarks cut, on the original and on the output alike. An attacker has no such
landmarks: they detect the face on the output themselves. Each LFW photo (the second of
identities with two or more) is anonymized by the default engine, and every face it *generated*
is compared with the original's subject by (margins to the engine's thresholds per face in
the output's ``faces``)

* ``engine``: both oracles through the original's landmarks on both images (the bench's view);
* ``redetected``: MTCNN run afresh on the output, its landmarks for the output's crop (its
  own on the original for the original's);
* ``jittered``: the output's crop through the original's landmarks moved by Gaussian noise
  (``--jitter`` px, ``--draws`` draws; the worst draw counts), as another landmark model would;
* ``redetected_box``: FaceNet over the whole box MTCNN finds afresh on the output, unaligned
  (the engine's box view, ``facenet@box``, with the attacker's box on the output);
* ``jpeg``: both oracles through the engine's landmarks on the output as the integrations hand it
  on (JPEG, quality 92) and recompressed further downstream (quality 75), the worse counting;
* ``face_recognition``: dlib's own pipeline end to end, as the face_recognition library runs it
  (HOG detector, 5-point predictor, 150 px chip, descriptor), matched at its default tolerance
  (Euclidean distance below 0.6), and at the engine's dlib threshold (cosine).

A face counts as recognised in a view when an oracle's similarity reaches the engine's
threshold for it. Faces the attacker's detector does not find on the output count as not
recognised (and are reported).

    python benchmarks/attacker_eval.py --limit 300 --threads 2
    python benchmarks/attacker_eval.py --limit 300 --threads 2 --no-margins \
        --output benchmarks/results/attacker_eval_no_margins.json
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from border_eval import _cut  # the same cuts as the detection benchmark
from PIL import Image
from rotation_eval import photos  # the same photos: the second of each identity

from idmrag_plugin import AnonymizationResult, AnonymizerConfig, FaceAnonymizer, FaceReport
from idmrag_plugin.engine.detect import MTCNNDetector, box_iou, central_face
from idmrag_plugin.engine.oracles import cosine, face_model_file
from idmrag_plugin.engine.views import box_crop, box_view_name

FACE_RECOGNITION_TOLERANCE = 0.6
JPEG_QUALITIES = (92, 75)
CUT_SIDES = ("left", "right", "top", "bottom")


class FaceRecognitionPipeline:
    """dlib end to end, as ``face_recognition.face_encodings`` computes it."""

    def __init__(self) -> None:
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(face_model_file("shape_predictor_5_face_landmarks.dat")))
        self.model = dlib.face_recognition_model_v1(str(face_model_file("dlib_face_recognition_resnet_model_v1.dat")))

    def encode(self, image: np.ndarray, near_box) -> np.ndarray | None:
        rects = self.detector(image, 1)
        best, best_iou = None, 0.3
        for rect in rects:
            iou = box_iou((rect.left(), rect.top(), rect.right(), rect.bottom()), near_box)
            if iou >= best_iou:
                best, best_iou = rect, iou
        if best is None:
            return None
        shape = self.predictor(image, best)
        return np.asarray(self.model.compute_face_descriptor(image, shape, 1))


def anonymized_cut(engine: FaceAnonymizer, original: np.ndarray, box: tuple[float, ...], number: int,
                   share: float) -> tuple[np.ndarray, AnonymizationResult, FaceReport | None]:
    """``original`` with the face at ``box`` cut by one border (the ``number``-th of
    ``CUT_SIDES`` in turn, ``share`` of the box outside, as border_eval.py cuts it), the engine's
    result on it, and the engine's face for the cut one (None when it found none there)."""
    cut_photo, visible = _cut(original, box, CUT_SIDES[number % 4], share)
    cut_photo = np.ascontiguousarray(cut_photo)
    result = engine.anonymize(cut_photo)
    face = max(result.faces, key=lambda f: box_iou(f.detection.box, visible), default=None)
    if face is None or box_iou(face.detection.box, visible) < 0.3:
        face = None
    return cut_photo, result, face


def _nearest(detections: list, box: tuple[float, ...]):
    """The detection overlapping ``box`` most (IoU at least 0.3), or None."""
    near = [d for d in detections if box_iou(d.box, box) >= 0.3]
    return max(near, key=lambda d: box_iou(d.box, box)) if near else None


def evaluate(engine: FaceAnonymizer, paths: list[Path], jitter: float, draws: int, seed: int,
             cut: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    detector = MTCNNDetector()
    pipeline = FaceRecognitionPipeline()
    thresholds = {o.name: engine.thresholds[o.name] for o in engine.oracles}
    counts = {"engine": 0, "redetected": 0, "jittered": 0, "redetected_box": 0, "jpeg": 0,
              "face_recognition_0.6": 0, "face_recognition_threshold": 0}
    missed = {"redetected": 0, "face_recognition": 0}
    worst = {k: [] for k in ("engine", "redetected", "jittered", "redetected_box", "jpeg")}
    faces = 0
    cases = []
    methods: dict[str, int] = {}
    attempts = []
    shifted_views = 0
    for number, path in enumerate(paths):
        original = np.asarray(Image.open(path).convert("RGB"))
        subject = central_face(detector.detect(original), original.shape)
        if subject is None:
            continue
        if cut:
            # the engine's detection of the cut face is the one judged
            original, result, face = anonymized_cut(engine, original, subject.box, number, cut)
            if face is None:
                continue
            subject = face.detection
        else:
            result = engine.anonymize(original)
            face = next((f for f in result.faces if box_iou(f.detection.box, subject.box) >= 0.5), None)
            if face is None:
                continue
        methods[face.method] = methods.get(face.method, 0) + 1
        if face.method != "generated":
            continue
        attempts.append(face.attempts)
        shifted_views += any(v.oracle.endswith("@shifted") for v in face.verdicts)
        faces += 1
        output = result.pixels
        jpegs = [np.asarray(Image.open(io.BytesIO(result.to_bytes("JPEG", quality)))) for quality in JPEG_QUALITIES]
        # the attacker's own detector on each image (on a whole photo, its face on the original
        # is the subject; on a cut one the engine's border search found the subject, MTCNN alone
        # may find the part in the frame with other landmarks, or nothing)
        again_face = _nearest(detector.detect(output), subject.box)
        own_original = _nearest(detector.detect(original), subject.box) if cut else subject
        if own_original is None:
            again_face = None
        missed["redetected"] += again_face is None
        margins = {view: -1.0 for view in worst}
        row: dict[str, object] = {"photo": path.name, "attempts": face.attempts}
        for oracle in engine.oracles:
            before = oracle.embed_faces(original, [subject.landmarks])
            t = thresholds[oracle.name]
            sim = float(cosine(before, oracle.embed_faces(output, [subject.landmarks]))[0])
            row[oracle.name] = round(sim - t, 4)
            shifted = [v.similarity for v in face.verdicts if v.oracle == f"{oracle.name}@shifted"]
            row[f"{oracle.name}@shifted"] = round(shifted[0] - t, 4) if shifted else None
            margins["engine"] = max(margins["engine"], sim - t)
            if again_face is not None:
                redetected = float(cosine(oracle.embed_faces(original, [own_original.landmarks]),
                                          oracle.embed_faces(output, [again_face.landmarks]))[0]) - t
                row[f"{oracle.name}@redetected"] = round(redetected, 4)
                margins["redetected"] = max(margins["redetected"], redetected)
            moved = [subject.landmarks + rng.normal(0.0, jitter, subject.landmarks.shape) for _ in range(draws)]
            jittered = float(np.max(cosine(np.repeat(before, draws, axis=0), oracle.embed_faces(output, moved)))) - t
            row[f"{oracle.name}@jittered"] = round(jittered, 4)
            margins["jittered"] = max(margins["jittered"], jittered)
            jpeg = float(np.max(cosine(np.repeat(before, len(jpegs), axis=0),
                                       np.concatenate([oracle.embed_faces(j, [subject.landmarks]) for j in jpegs])))) - t
            row[f"{oracle.name}@jpeg"] = round(jpeg, 4)
            margins["jpeg"] = max(margins["jpeg"], jpeg)
            if oracle.box_view and again_face is not None:
                t_box = engine.thresholds[box_view_name(oracle.name)]
                box = float(cosine(oracle.embed(box_crop(original, own_original, oracle.input_size)[None]),
                                   oracle.embed(box_crop(output, again_face, oracle.input_size)[None]))[0]) - t_box
                row[f"{oracle.name}@redetected_box"] = round(box, 4)
                margins["redetected_box"] = max(margins["redetected_box"], box)
        for view, margin in margins.items():
            worst[view].append(margin)
            counts[view] += margin >= 0
        a, b = pipeline.encode(original, subject.box), pipeline.encode(output, subject.box)
        if a is None or b is None:
            missed["face_recognition"] += b is None and a is not None
        else:
            distance, sim = float(np.linalg.norm(a - b)), float(cosine(a[None], b[None])[0])
            counts["face_recognition_0.6"] += distance < FACE_RECOGNITION_TOLERANCE
            counts["face_recognition_threshold"] += sim >= thresholds["dlib"]
            row.update(face_recognition_distance=round(distance, 4), face_recognition=round(sim - thresholds["dlib"], 4))
        for view, margin in margins.items():
            row[f"worst_{view}"] = round(margin, 4)
        cases.append(row)
    return {
        "subject_faces": methods,
        "generated_faces": faces,
        "mean_attempts": round(float(np.mean(attempts)), 3) if attempts else None,
        "faces_with_shifted_view": shifted_views,
        "recognised": {k: round(v / max(faces, 1), 4) for k, v in counts.items()},
        "recognised_count": counts,
        "attacker_found_no_face": missed,
        "worst_margin_p99": {k: round(float(np.quantile(v, 0.99)), 4) for k, v in worst.items() if v},
        "faces": cases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--jitter", type=float, default=1.5, help="landmark noise, pixels (std)")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--secret", default="attacker_eval", help="pseudonym secret (same faces run to run)")
    parser.add_argument("--no-margins", action="store_true",
                        help="verify without the alignment margins and shifted views (the engine before them)")
    parser.add_argument("--cut", type=float, default=0.0,
                        help="cut each face by one border so that this share of its box is outside the frame")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="benchmarks/results/attacker_eval.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    engine = FaceAnonymizer(AnonymizerConfig())
    engine.generator.secret = args.secret.encode()
    if args.no_margins:
        for oracle in engine.oracles:
            oracle.alignment_margin, oracle.shift_margin = 0.0, -1.0
    out = {"photos": args.limit, "jitter_px": args.jitter, "draws": args.draws, "margins": not args.no_margins,
           "cut": args.cut,
           **evaluate(engine, photos(Path(args.lfw), args.limit), args.jitter, args.draws, args.seed, args.cut)}
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "faces"}, indent=2))


if __name__ == "__main__":
    main()
