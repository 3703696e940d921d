"""Faces in photographic negatives.

A scanned film negative (archives, old family albums) shows every face with its tones
reversed: dark skin where the face was light, bright eyes and hair. A detector trained on
photos finds no face there, yet one subtraction (255 - pixel), what any viewer, editor or
model downstream can do, gives the photo back. So when the search finds no face in a photo, it
looks once more at the photo's negative (upright, at half size: faces from 40 px); when a face
is found only there, the engine works on the negative (where the generator sees an ordinary
face and the oracles judge what the inverted output would show) and reverses the tones of the
redrawn pixels back (every other pixel stays the photo's own).

Photos with a face already found are not searched again: a collage of a negative and a
positive shows its positive faces only.
"""

from __future__ import annotations

import cv2
import numpy as np

from idmrag_plugin.engine.detect import Detection, FaceDetector

NEGATIVE_TAG = "@negative"
#: The negative is searched at this scale (faces from min_face_size / NEGATIVE_SCALE px).
NEGATIVE_SCALE = 0.5
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
    """``detector``'s faces; when it finds none, the faces ``negative_detector`` finds upright in
    the image's negative at NEGATIVE_SCALE (tagged NEGATIVE_TAG)."""

    def __init__(self, detector: FaceDetector, negative_detector: FaceDetector | None = None) -> None:
        super().__init__()
        self.detector = detector
        self.negative_detector = negative_detector or detector
        self.name = detector.name

    def _load(self) -> None:
        self.detector.load()
        self.negative_detector.load()

    def _detect(self, image: np.ndarray) -> list[Detection]:
        found = self.detector.detect(image)
        if found:
            return found
        h, w = image.shape[:2]
        size = (max(1, round(w * NEGATIVE_SCALE)), max(1, round(h * NEGATIVE_SCALE)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        scale = np.array([w / size[0], h / size[1]])
        return [
            Detection(
                (d.box[0] * scale[0], d.box[1] * scale[1], d.box[2] * scale[0], d.box[3] * scale[1]),
                d.score, d.landmarks * scale, f"{d.detector}{NEGATIVE_TAG}",
            )
            for d in self.negative_detector.detect(255 - small)
            if d.score >= NEGATIVE_MIN_SCORE
        ]
