"""Faces in photographic negatives.

A scanned film negative (archives, old family albums) shows every face with its tones
reversed: dark skin where the face was light, bright eyes and hair. A detector trained on
photos finds no face there (or finds false ones: an eye socket, a nostril), yet one
subtraction (255 - pixel), what any viewer, editor or model downstream can do, gives the photo
back. So the search also looks at every photo's negative (upright, at half size: faces from
40 px; see :mod:`idmrag_plugin.engine.retoned`); when a face is found only there, the engine works on the negative (where the generator
sees an ordinary face and the oracles judge what the inverted output would show) and reverses
the tones of the redrawn pixels back (every other pixel stays the photo's own).
"""

from __future__ import annotations

import numpy as np

from idmrag_plugin.engine.detect import FaceDetector
from idmrag_plugin.engine.retoned import RetonedSearch

NEGATIVE_TAG = "@negative"
# The negatives of 200 (positive) LFW photos, searched at half size, at most 640 px long, gave
# 1 face (score 0.94, under the 0.95 a face found only there must score); those of 15 photos
# without a face (scikit-image's samples, a scene of dogs) none.


class Negative:
    """The tone reversal of a whole image, and its undoing for redrawn pixels."""

    def apply(self, image: np.ndarray) -> np.ndarray:
        return 255 - image

    def restore(self, original: np.ndarray, negative: np.ndarray, processed: np.ndarray) -> np.ndarray:
        """``processed`` (``negative`` with some regions redrawn) back in ``original``'s tones:
        every pixel the processing left alone is the original's exactly."""
        changed = (processed != negative).any(axis=2, keepdims=True)
        return np.where(changed, 255 - processed, original)


class NegativeSearch(RetonedSearch):
    """``detector``'s faces, plus the faces ``negative_detector`` finds upright in the image's
    negative where ``detector`` found none (tagged NEGATIVE_TAG)."""

    tag = NEGATIVE_TAG

    def __init__(self, detector: FaceDetector, negative_detector: FaceDetector | None = None, iou: float = 0.3) -> None:
        super().__init__(detector, negative_detector, iou)

    def retoned(self, image: np.ndarray) -> np.ndarray:
        return 255 - image
