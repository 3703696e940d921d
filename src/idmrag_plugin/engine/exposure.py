"""Faces in under- or overexposed photos.

A face in a photo taken at night, or washed out by haze or backlight, spans a few grey levels
that a detector reads as flat: MTCNN found nothing in the astronaut with its tones scaled to
7% (every pixel below 18 of 255) or squeezed into the top fifth. Yet stretching the levels,
what any viewer, editor or model downstream can do, brings the face back whole. So when an
image's tones are that narrow or that dark, the search looks once more at a levelled copy (its
tones stretched to the full range, then brought to a mid-grey median) and adds what it finds
there. When one of its faces was found only there, the engine replaces the photo's faces in the levelled copy, where the generator
sees a face of ordinary contrast and the oracles can judge it, and brings the redrawn pixels
back to the photo's tones (every other pixel stays the photo's own).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from idmrag_plugin.engine.detect import Detection, FaceDetector, box_iou, suppress_overlaps

#: An image whose tones (0.5th to 99.5th percentile of luminance) span fewer grey levels than
#: this is levelled. Of 3,000 LFW, UTKFace and scene photos, 0.1% span fewer than 96.
NARROW_RANGE = 96
#: ... and so is one whose median luminance, after stretching, is below DARK_MEDIAN (a face in
#: the dark beside a lamp; 4.6% of those photos have medians under 30, mostly dark studio
#: backgrounds). A bright median is no sign of a hidden face: it is a white backdrop.
DARK_MEDIAN = 24
#: A face only the levelled copy shows must score at least this (MTCNN's last stage). Levelling
#: amplifies noise: of 3,000 LFW, UTKFace and scene photos, 4 had such faces, all on cheeks,
#: hair or background, scoring 0.73-0.84; the astronaut levelled from 3-7% of its tones or from
#: a washed-out or lamp-lit copy scores 0.97-1.0.
LEVELLED_MIN_SCORE = 0.9
#: The levelled copy's median luminance.
TARGET_MEDIAN = 110
#: Levels are read from a copy at most this long (the percentiles barely move).
PROBE_SIDE = 256
#: The end of the detector name of a face found on the levelled copy.
LEVELLED_TAG = "@levelled"

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Levels:
    """A tone curve (a lookup table) that levels one image, and its inverse."""

    table: np.ndarray  # uint8 (256,), non-decreasing

    def apply(self, image: np.ndarray) -> np.ndarray:
        return cv2.LUT(np.ascontiguousarray(image), self.table)

    def restore(self, original: np.ndarray, levelled: np.ndarray, processed: np.ndarray) -> np.ndarray:
        """``processed`` (``levelled`` with some regions redrawn) back in ``original``'s tones:
        every pixel the processing left alone is the original's exactly, the redrawn ones go
        through the inverse curve."""
        # the darkest original level that levels to at least v; but for 0, the brightest that
        # levels to 0: the curve's clipped ends (every level past the photo's brightest levels
        # to 255, every one below its darkest to 0) map back to the photo's own range
        levels = np.arange(256)
        first = np.searchsorted(self.table, levels, side="left")
        last = np.searchsorted(self.table, levels, side="right") - 1
        inverse = np.clip(np.where(levels == 0, last, first), 0, 255).astype(np.uint8)
        back = cv2.LUT(np.ascontiguousarray(processed), inverse)
        changed = (processed != levelled).any(axis=2, keepdims=True)
        return np.where(changed, back, original)


def levels_of(image: np.ndarray) -> Levels | None:
    """The curve that stretches the RGB uint8 ``image``'s tones to the full range and brings
    its median to mid-grey, or None when its tones need no levelling (they span NARROW_RANGE
    levels or more and the stretched median is not dark)."""
    side = max(image.shape[:2])
    probe = image
    if side > PROBE_SIDE:
        scale = PROBE_SIDE / side
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        probe = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    luma = probe.reshape(-1, 3).astype(np.float32) @ _LUMA
    lo, hi = np.percentile(luma, [0.5, 99.5])
    span = max(float(hi - lo), 4.0)
    median = (float(np.median(luma)) - lo) / span * 255.0
    if hi - lo >= NARROW_RANGE and median >= DARK_MEDIAN:
        return None
    median = min(max(median, 1.0), 254.0)
    gamma = np.log(TARGET_MEDIAN / 255.0) / np.log(median / 255.0)
    curve = np.clip((np.arange(256, dtype=np.float32) - lo) / span, 0.0, 1.0) ** gamma
    return Levels(np.round(curve * 255.0).astype(np.uint8))


def levelled(image: np.ndarray) -> np.ndarray | None:
    """``image`` levelled (see :func:`levels_of`), or None when its tones need no levelling."""
    levels = levels_of(image)
    return None if levels is None else levels.apply(image)


class LevellingDetector(FaceDetector):
    """``detector``'s faces, plus those it finds on the levelled copy of an image whose tones
    are narrow, dark or washed out (see :func:`levelled`); other images cost nothing more."""

    def __init__(self, detector: FaceDetector, iou: float = 0.3) -> None:
        super().__init__()
        self.detector = detector
        self.iou = iou
        self.name = detector.name

    def _load(self) -> None:
        self.detector.load()

    def _detect(self, image: np.ndarray) -> list[Detection]:
        found = self.detector.detect(image)
        copy = levelled(image)
        if copy is None:
            return found
        # only faces the photo itself does not show: a face found in both keeps the photo's
        # detection (and the photo is then worked on as it is)
        extra = [Detection(d.box, d.score, d.landmarks, f"{d.detector}{LEVELLED_TAG}") for d in self.detector.detect(copy)
                 if d.score >= LEVELLED_MIN_SCORE and all(box_iou(d.box, other.box) < self.iou for other in found)]
        return suppress_overlaps(found + extra, self.iou) if extra else found
