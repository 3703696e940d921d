"""Faces in photos stretched out of proportion.

A photo resized without keeping its aspect ratio (a thumbnail forced square, a banner, a
scan read at the wrong resolution along one axis) stretches every face in it. MTCNN finds a
face stretched up to about twice its width or height (16 of 16 LFW photos and the astronaut
at 2x), and then loses it: at 3x it found 2 of 16. The identity is still all there: resizing
the photo back, what any viewer or editor can do, gives the face back, and dlib's descriptor
of the astronaut stretched 3x and resized back lies 0.03 from her own. So the search also
looks at copies squeezed along each axis by each of SQUEEZES (upright, at most
STRETCH_MAX_SIDE long), which gives a face stretched 2-8x its proportions again. A face found
only there is worked on in the squeezed copy, where the generator sees a face of about its
own proportions and the oracles judge what the photo resized back would show; the redrawn
pixels are then stretched back into the photo (every other pixel stays the photo's own).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from idmrag_plugin.engine.detect import (
    CONFIRM_FACE_SIZE,
    CONFIRM_SIDE,
    DOUBTFUL_TAG,
    MIN_SEARCHED_SIDE,
    Detection,
    FaceDetector,
    box_iou,
    centre_inside,
    scaled_detection,
    upright_look,
)

STRETCH_TAG = "@stretched"
#: Squeeze factors searched along each axis: a face stretched by s is found where s / factor
#: is within MTCNN's reach (up to about 2), so 2 and 4 cover stretches of 2-8.
SQUEEZES = (2, 4)
#: Each squeezed copy is searched at most this long (faces from min_face_size * side /
#: STRETCH_MAX_SIDE px of the copy on larger photos).
STRETCH_MAX_SIDE = 640
#: Smallest face searched for in a squeezed copy, in its pixels: a stretched face is a large
#: one (the copies of a 250x250 photo take 19 ms from 32 px, 30 ms from 20 px).
STRETCH_MIN_FACE = 32
#: A face found only in a squeezed copy must score at least this (MTCNN's last stage), and be
#: found again by a second, upright look at it in that copy.
STRETCH_MIN_SCORE = 0.95

#: A frontal face's eye distance over the drop from its eyes to its mouth (MTCNN's points):
#: median 0.907 over 341 LFW faces, 0.5th-99.5th percentiles 0.55-1.18.
NATURAL_RATIO = 0.907
#: A face the photo shows, found in a squeezed copy too, whose own points say it is stretched at
#: least this much along its eyes is worked on squeezed (no LFW face, turned or tilted, shows
#: more than 1.3).
STRETCHED_WIDE = 1.5
#: A face found in a squeezed copy is taken to be stretched by the copy's factor times at most
#: this much more or less, as its points say: it is worked on at its own proportions, which an
#: attacker restores (drawn and judged at 1.5x, the faces of 4 of 40 LFW photos stretched 3x
#: were recognisable once resized back).
RESIDUAL_LIMIT = 2.0
#: ... and, since the points' estimate is rough (1.9-4.3 for LFW faces stretched 3x; MTCNN draws
#: points towards a face's usual proportions), its drawing is judged again at these multiples of
#: that factor before it is kept.
OTHER_PROPORTIONS = (0.7, 0.85, 1.2, 1.4)

_TURNED = re.compile(r"@(45|90|135|180|225|270|315)\b")
_TAG = re.compile(re.escape(STRETCH_TAG) + r"-([xy])(\d+(?:\.\d+)?)")


def stretch_along(landmarks: np.ndarray, axis: str) -> float:
    """How much a face looks stretched along the image's ``axis`` ("x" or "y") by its five
    points (1: its natural proportions; below 1: squeezed)."""
    points = np.asarray(landmarks, dtype=np.float64)
    eyes = float(np.hypot(*(points[1] - points[0])))
    drop = float(np.hypot(*((points[3] + points[4]) / 2.0 - (points[0] + points[1]) / 2.0)))
    ratio = eyes / max(drop, 1e-6)
    return ratio / NATURAL_RATIO if axis == "x" else NATURAL_RATIO / max(ratio, 1e-6)


def _stretched_face(landmarks: np.ndarray, axis: str) -> bool:
    """Whether a face's points say the image stretches it along ``axis``: its eyes lie along
    that axis and too far apart for their drop to the mouth (an upright face in a widened
    photo, a face on its side in a heightened one). Eyes too close for their drop do not tell:
    a face turned aside has them so (two LFW bystanders in profile were taken for faces
    stretched 2.2 and 4 times their height)."""
    points = np.asarray(landmarks, dtype=np.float64)
    eyes = points[1] - points[0]
    along = 0 if axis == "x" else 1
    return abs(eyes[along]) >= abs(eyes[1 - along]) and stretch_along(points, "x") >= STRETCHED_WIDE


@dataclass(frozen=True)
class Squeeze:
    """The photo squeezed along one axis (``"x"``: its width, ``"y"``: its height) by
    ``factor``, and the way back for redrawn pixels."""

    axis: str
    factor: float

    @property
    def tag(self) -> str:
        return f"{STRETCH_TAG}-{self.axis}{self.factor:.2f}"

    @classmethod
    def of(cls, detection: Detection) -> Squeeze | None:
        """The squeeze a detection was found in (its tag), or None."""
        match = _TAG.search(detection.detector)
        return cls(match.group(1), float(match.group(2))) if match else None

    def fits(self, other: Squeeze | None) -> bool:
        """Whether a face found in ``other`` is worked on in this squeeze's copy (same axis, a
        factor within SHARED_STRETCH)."""
        return (other is not None and other.axis == self.axis
                and max(other.factor, self.factor) <= SHARED_STRETCH * min(other.factor, self.factor))

    def size(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """The squeezed copy's (width, height) for an image of ``shape``."""
        h, w = shape[:2]
        if self.axis == "x":
            return max(1, round(w / self.factor)), h
        return w, max(1, round(h / self.factor))

    def apply(self, image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, self.size(image.shape), interpolation=cv2.INTER_AREA)

    def restore(self, original: np.ndarray, squeezed: np.ndarray, processed: np.ndarray) -> np.ndarray:
        """``processed`` (``squeezed``, this squeeze's copy of ``original``, with some regions
        redrawn) stretched back over ``original``: every pixel near a redrawn one is the
        stretched drawing's, every other pixel the original's exactly."""
        h, w = original.shape[:2]
        changed = (processed != squeezed).any(axis=2).astype(np.uint8)
        # a drawn pixel that happens to equal the squeezed photo's leaves no hole of original pixels
        changed = cv2.dilate(cv2.morphologyEx(changed, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)),
                             np.ones((3, 3), np.uint8))
        if not changed.any():
            return original
        mask = cv2.resize(changed.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0
        back = cv2.resize(processed, (w, h), interpolation=cv2.INTER_CUBIC)
        return np.where(mask[..., None], back, original)

    def resqueezed(self, squeezed: np.ndarray, multiple: float) -> np.ndarray:
        """This squeeze's copy of a photo as squeezing by ``multiple`` times the factor would
        make it."""
        h, w = squeezed.shape[:2]
        size = (max(1, round(w / multiple)), h) if self.axis == "x" else (w, max(1, round(h / multiple)))
        interpolation = cv2.INTER_AREA if multiple > 1.0 else cv2.INTER_CUBIC
        return cv2.resize(squeezed, size, interpolation=interpolation)

    def to_view(self, detection: Detection, shape: tuple[int, ...]) -> Detection:
        """``detection`` (in the coordinates of the image of ``shape``) in the squeezed copy's."""
        return scaled_detection(detection, *self._ratios(shape))

    def from_view(self, detection: Detection, shape: tuple[int, ...]) -> Detection:
        """``detection`` in the squeezed copy of the image of ``shape`` back in the image's."""
        rx, ry = self._ratios(shape)
        return scaled_detection(detection, 1.0 / rx, 1.0 / ry)

    def _ratios(self, shape: tuple[int, ...]) -> tuple[float, float]:
        width, height = self.size(shape)
        return width / shape[1], height / shape[0]


#: Stretched faces along one axis whose factors agree to within this ratio are worked on in one
#: squeezed copy (a photo's faces share its stretch; their points estimate it to about 15%).
SHARED_STRETCH = 1.3


#: A photo is not worked on squeezed when a face it shows at its natural proportions is this
#: many times the size of its largest face found only squeezed (that face at its own proportions):
#: such a photo is at its proportions, its subject plain to see, and the small face a false one
#: in the hair or a bystander the frame cuts (LFW's Kimberly_Stewart_0001 and Alec_Baldwin_0001,
#: 5 and 3 times smaller, the only such faces in 312 photos). Its subject is then redrawn in the
#: photo as it is, and the small face obfuscated there, where the squeeze would have obfuscated
#: the subject instead.
NATURAL_SUBJECT = 2.0


def _size_at_own_proportions(detection: Detection, squeeze: Squeeze | None) -> float:
    """A face's size (square root of its box's area) with its ``squeeze`` (its tag's), if any, undone."""
    x1, y1, x2, y2 = detection.box
    return float(np.sqrt(max(x2 - x1, 0.0) * max(y2 - y1, 0.0) / (squeeze.factor if squeeze else 1.0)))


def working_squeeze(detections: list[Detection]) -> Squeeze | None:
    """The squeeze the photo is worked on in, when a face was found only squeezed: along the
    axis of the most certain such face, by the median factor of those agreeing with it; None
    also where a face at the photo's own proportions outweighs them (see NATURAL_SUBJECT)."""
    tagged = [(d, Squeeze.of(d)) for d in detections]
    stretched = [(d, s) for d, s in tagged if s is not None]
    if not stretched:
        return None
    lead = max(stretched, key=lambda pair: pair[0].score)[1]
    factors = [s.factor for _, s in stretched if lead.fits(s)]
    natural = [_size_at_own_proportions(d, None) for d, s in tagged
               if s is None and DOUBTFUL_TAG not in d.detector and not _stretched_face(d.landmarks, lead.axis)]
    largest_squeezed = max(_size_at_own_proportions(d, s) for d, s in stretched)
    if natural and max(natural) >= NATURAL_SUBJECT * largest_squeezed:
        return None
    return Squeeze(lead.axis, float(np.median(factors)))


class StretchSearch(FaceDetector):
    """``detector``'s faces, plus the faces ``stretch_detector`` finds upright in the image
    squeezed along either axis by each of ``squeezes`` where ``detector`` found none (tagged
    with their squeeze, see :class:`Squeeze`; in the image's coordinates)."""

    def __init__(self, detector: FaceDetector, stretch_detector: FaceDetector | None = None,
                 squeezes: tuple[float, ...] = SQUEEZES, iou: float = 0.3) -> None:
        super().__init__()
        self.detector = detector
        self.stretch_detector = stretch_detector or detector
        self.squeezes = tuple(Squeeze(axis, factor) for factor in squeezes for axis in ("x", "y"))
        self.iou = iou
        self.name = detector.name

    def _load(self) -> None:
        self.detector.load()
        self.stretch_detector.load()

    def _detect(self, image: np.ndarray) -> list[Detection]:
        found = self.detector.detect(image)
        candidates = sorted(((d, copy) for squeeze in self.squeezes for d, copy in self._candidates(image, squeeze)),
                            key=lambda pair: -pair[0].score)
        extra: list[Detection] = []
        for det, (copy, landmarks) in candidates:
            clashing = [f for f in found + extra if box_iou(det.box, f.box) >= self.iou
                        or centre_inside(det.box, f.box) or centre_inside(f.box, det.box)]
            # a face the photo shows is the photo's (most faces are found squeezed too), unless
            # its own points say it is stretched along the axis this copy squeezes (its points in
            # the copy do not tell: MTCNN draws them towards a face's usual proportions, and the
            # astronaut's face squeezed to half its width looked squeezed by 0.82), or only a
            # turned pass found it: an upright face stretched, read as one lying on its side
            axis = Squeeze.of(det).axis  # type: ignore[union-attr]
            if any(f in extra or not (_stretched_face(f.landmarks, axis) or _TURNED.search(f.detector))
                   for f in clashing):
                continue
            if upright_look(self.stretch_detector, copy, landmarks, CONFIRM_FACE_SIZE, CONFIRM_SIDE) is not None:
                found = [f for f in found if not any(f is c for c in clashing)]
                extra.append(det)
        return found + extra

    def _candidates(self, image: np.ndarray, squeeze: Squeeze) -> list[tuple[Detection, tuple[np.ndarray, np.ndarray]]]:
        """The faces scoring STRETCH_MIN_SCORE that ``stretch_detector`` finds upright in
        ``image`` squeezed by ``squeeze`` (at most STRETCH_MAX_SIDE long), in ``image``'s
        coordinates, each tagged with the squeeze that gives it its own proportions (see
        RESIDUAL_LIMIT), with the copy and its landmarks there (for the second look)."""
        width, height = squeeze.size(image.shape)
        scale = min(1.0, STRETCH_MAX_SIDE / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if min(size) < MIN_SEARCHED_SIDE:
            return []
        copy = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        rx, ry = image.shape[1] / size[0], image.shape[0] / size[1]
        found = []
        for d in self.stretch_detector.detect(copy):
            if d.score < STRETCH_MIN_SCORE:
                continue
            residual = min(max(stretch_along(d.landmarks, squeeze.axis), 1.0 / RESIDUAL_LIMIT), RESIDUAL_LIMIT)
            own = Squeeze(squeeze.axis, max(1.0, squeeze.factor * residual))
            found.append((scaled_detection(Detection(d.box, d.score, d.landmarks, d.detector + own.tag), rx, ry),
                          (copy, d.landmarks)))
        return found
