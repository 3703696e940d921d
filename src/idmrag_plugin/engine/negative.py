"""Faces in photographic negatives.

A scanned film negative (archives, old family albums) shows every face with its tones
reversed: dark skin where the face was light, bright eyes and hair. A detector trained on
photos finds no face there (or finds false ones: an eye socket, a nostril), yet one
subtraction (255 - pixel), what any viewer, editor or model downstream can do, gives the photo
back. So the search also looks at every photo's negative (upright, at half size: faces from
40 px); when a face is found only there, the engine works on the negative (where the generator
sees an ordinary face and the oracles judge what the inverted output would show) and reverses
the tones of the redrawn pixels back (every other pixel stays the photo's own).
"""

from __future__ import annotations

import cv2
import numpy as np

from idmrag_plugin.engine.detect import Detection, FaceDetector, box_iou

NEGATIVE_TAG = "@negative"
#: The negative is searched at this scale (faces from min_face_size / NEGATIVE_SCALE px), on a
#: copy at most NEGATIVE_MAX_SIDE long (faces from min_face_size * side / NEGATIVE_MAX_SIDE px).
NEGATIVE_SCALE = 0.5
NEGATIVE_MAX_SIDE = 640
#: A face found in the negative is found again in a cut around it at most this many px long.
REFIND_SIDE = 480
#: A face found only in the negative must score at least this (MTCNN's last stage). The
#: negatives of 200 (positive) LFW photos, searched so, gave 1 face (score 0.94, under it);
#: those of 15 photos without a face (scikit-image's samples, a scene of dogs) none.
NEGATIVE_MIN_SCORE = 0.95


class Negative:
    """The tone reversal of a whole image, and its undoing for redrawn pixels."""

    def apply(self, image: np.ndarray) -> np.ndarray:
        return 255 - image

    def restore(self, original: np.ndarray, negative: np.ndarray, processed: np.ndarray) -> np.ndarray:
        """``processed`` (``negative`` with some regions redrawn) back in ``original``'s tones:
        every pixel the processing left alone is the original's exactly."""
        changed = (processed != negative).any(axis=2, keepdims=True)
        return np.where(changed, 255 - processed, original)


class NegativeSearch(FaceDetector):
    """``detector``'s faces, plus the faces ``negative_detector`` finds upright in the image's
    negative (at NEGATIVE_SCALE, at most NEGATIVE_MAX_SIDE long) where ``detector`` found none
    (tagged NEGATIVE_TAG, their landmarks taken again at full resolution)."""

    def __init__(self, detector: FaceDetector, negative_detector: FaceDetector | None = None, iou: float = 0.3) -> None:
        super().__init__()
        self.detector = detector
        self.negative_detector = negative_detector or detector
        self.iou = iou
        self.name = detector.name

    def _load(self) -> None:
        self.detector.load()
        self.negative_detector.load()

    def _detect(self, image: np.ndarray) -> list[Detection]:
        found = self.detector.detect(image)
        negative = 255 - image
        h, w = negative.shape[:2]
        scale = min(NEGATIVE_SCALE, NEGATIVE_MAX_SIDE / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(negative, size, interpolation=cv2.INTER_AREA)
        factor = np.array([w / size[0], h / size[1]])
        extra: list[Detection] = []
        for d in self.negative_detector.detect(small):
            box = (d.box[0] * factor[0], d.box[1] * factor[1], d.box[2] * factor[0], d.box[3] * factor[1])
            # A negative shows its faces only there; a face the photo itself shows is the photo's
            # (the false faces a detector finds in a negative are no reason to skip this pass).
            if d.score < NEGATIVE_MIN_SCORE or any(box_iou(box, f.box) >= self.iou for f in found + extra):
                continue
            face = self._at_full_resolution(negative, Detection(box, d.score, d.landmarks * factor, d.detector))
            extra.append(Detection(face.box, face.score, face.landmarks, f"{face.detector}{NEGATIVE_TAG}"))
        return found + extra

    def _at_full_resolution(self, negative: np.ndarray, face: Detection) -> Detection:
        """``face`` found again in a full-resolution cut of the negative around it: the
        oracles align what they judge by its landmarks, and at half size they are twice as coarse."""
        x1, y1, x2, y2 = face.box
        side = max(x2 - x1, y2 - y1)
        h, w = negative.shape[:2]
        left, top = int(max(0, x1 - side)), int(max(0, y1 - side))
        right, bottom = int(min(w, x2 + side)), int(min(h, y2 + side))
        cut = np.ascontiguousarray(negative[top:bottom, left:right])
        shrink = min(1.0, REFIND_SIDE / max(cut.shape[:2]))
        if shrink < 1.0:
            cut = cv2.resize(cut, (max(1, round(cut.shape[1] * shrink)), max(1, round(cut.shape[0] * shrink))),
                             interpolation=cv2.INTER_AREA)
        best: Detection | None = None
        for d in self.negative_detector.detect(cut):
            box = (d.box[0] / shrink + left, d.box[1] / shrink + top, d.box[2] / shrink + left, d.box[3] / shrink + top)
            if box_iou(box, face.box) >= 0.5 and (best is None or d.score > best.score):
                best = Detection(box, d.score, d.landmarks / shrink + np.array([left, top], dtype=np.float64), d.detector)
        return best if best is not None else face
