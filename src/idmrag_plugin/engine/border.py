"""Faces cut by the image border.

A face the frame cuts through (the person at the edge of a group photo, a crop that took half a
face) is still personal data, but a detector trained on whole faces misses it once about half
of it is gone: MTCNN lost the astronaut's face cut at its middle from the left, or below the
eyes from the top. Mirroring the image across its border completes such a face (a half face
and its mirror image make a whole, symmetric one), so one more upright pass over the image
padded by reflection finds it. Only detections that cross the border are taken from that
pass (the full search finds the others), and only when a fair share of the box lies inside
the image.
"""

from __future__ import annotations

import cv2
import numpy as np

from idmrag_plugin.engine.detect import (
    CONFIRM_FACE_SIZE,
    CONFIRM_SIDE,
    Detection,
    FaceDetector,
    hangs_from,
    suppress_overlaps,
    upright_look,
)

#: Reflection added on every side, as a share of the image's shorter side.
BORDER_PAD = 0.25
#: Smallest share of a cut face's box that must lie inside the image for it to count.
MIN_VISIBLE = 0.25
#: ... and smallest width and height of that part, in the image's pixels: a sliver of a few
#: pixels identifies no one, and the corners of a mirrored image make face-like patterns there.
MIN_VISIBLE_SIDE = 12
#: Smallest (whole) face the border pass looks for: half of it, what a cut shows, is 16 px;
#: halves of smaller faces identify no one, and each step down costs (12 / size)^2 more.
BORDER_MIN_FACE = 32
#: The padded image is searched at most this long (bounded cost on big photos; faces cut by
#: their border are searched down to min_face_size * side / BORDER_MAX_SIDE pixels there).
BORDER_MAX_SIDE = 1024


class BorderDetector(FaceDetector):
    """``detector``'s faces, plus the faces cut by the image border that ``border_detector``
    (one upright pass) finds on the image padded by reflection."""

    def __init__(
        self,
        detector: FaceDetector,
        border_detector: FaceDetector,
        pad: float = BORDER_PAD,
        max_side: int = BORDER_MAX_SIDE,
        iou: float = 0.3,
    ) -> None:
        super().__init__()
        self.detector = detector
        self.border_detector = border_detector
        self.pad = pad
        self.max_side = max_side
        self.iou = iou
        self.name = detector.name

    def _load(self) -> None:
        self.detector.load()
        self.border_detector.load()

    def _detect(self, image: np.ndarray) -> list[Detection]:
        whole = self.detector.detect(image)
        cut = [det for det in self.cut_faces(image) if self._cut_face_holds(image, det, whole)]
        return suppress_overlaps(whole + cut, self.iou)

    def _cut_face_holds(self, image: np.ndarray, det: Detection, whole: list[Detection]) -> bool:
        """Whether a cut face stays: always, unless it hangs from a whole face (see
        :data:`~idmrag_plugin.engine.detect.HANGING_SHARE`: the reflection of a subject's chin
        and collar past the bottom edge); then only when a second look at it, turned upright and
        mirrored past the border as the padded search saw it, finds it again. Real cut faces
        beside or behind a whole one are not second-guessed: a cut face's second look loses real
        ones (an eye and a nose at the edge)."""
        if not any(hangs_from(det.box, other.box) for other in whole):
            return True
        return upright_look(self.border_detector, image, det.landmarks, CONFIRM_FACE_SIZE, CONFIRM_SIDE) is not None

    def cut_faces(self, image: np.ndarray) -> list[Detection]:
        """Faces crossing the image border, in the image's coordinates (boxes and landmarks
        may lie partly outside it)."""
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / ((1 + 2 * self.pad) * max(height, width)))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        pad = min(round(self.pad * min(image.shape[:2])), min(image.shape[:2]) - 1)
        if pad < 1:
            return []
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
        found = []
        for det in self.border_detector.detect(padded):
            x1, y1, x2, y2 = ((v - pad) / scale for v in det.box)
            if x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height:
                continue  # a whole face: the full search's
            area = max(x2 - x1, 1e-6) * max(y2 - y1, 1e-6)
            seen_x = max(0.0, min(x2, width) - max(x1, 0.0))
            seen_y = max(0.0, min(y2, height) - max(y1, 0.0))
            if seen_x * seen_y / area < MIN_VISIBLE or min(seen_x, seen_y) < MIN_VISIBLE_SIDE:
                continue  # a mirror image in the padding, or a sliver of a face
            found.append(Detection((x1, y1, x2, y2), det.score, (det.landmarks - pad) / scale, f"{det.detector}@border"))
        return found
