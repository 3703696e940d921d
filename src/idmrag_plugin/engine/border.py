"""Faces cut by the image border.

A face the frame cuts through (the person at the edge of a group photo, a crop that took half a
face) is still personal data, but a detector trained on whole faces misses it once about half
of it is gone: MTCNN lost the astronaut's face cut at its middle from the left, or below the
eyes from the top. Mirroring the image across its border completes such a face (a half face
and its mirror image make a whole, symmetric one), so one more upright pass over the image
padded by reflection finds it. Only detections that cross the border are taken from that
pass (the full search finds the others), and only when a fair share of the box lies inside
the image.

A close-up cut on every side (eyes, nose and mouth filling the frame, the jaw and forehead
past it: a tight crop, a face too near the camera) is missed by both: MTCNN finds no face in
it, and its reflection is no face either. Framed in grey it is a face again (the astronaut's
eyes-to-mouth crop, found at 0.98-1.00 with a grey frame of a quarter to a whole of its
side), and one still recognisable: dlib's descriptor of that crop, found so, lies 0.36 from
her whole face's (its same-person threshold is 0.6). So a second, cheap look searches the
image framed in grey for such faces too, at every quarter turn (a close-up photographed
sideways), with the same rules, and each face it finds must be found again by a second,
upright look framed in grey (a subject's torso cut below the eyes,
framed so, made a "face" of the whole frame).
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
    run_batched,
    suppress_overlaps,
    unrotated,
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
#: The close-up look's grey frame on every side, as a share of the image's longer side.
CLOSE_UP_PAD = 0.5
#: ... its grey (8-bit, every channel).
CLOSE_UP_GREY = 128
#: The faces the close-up look is for are larger than the image: it searches a copy whose
#: shorter side is this long (enlarged or shrunk), where they are 40 px and more...
CLOSE_UP_SHORT_SIDE = 80
#: ... and whose framed copy is at most this long (an elongated image is shrunk further).
CLOSE_UP_MAX_SIDE = 384


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
        may lie partly outside it): those the image padded by reflection shows, and the
        close-ups that the image framed in grey shows."""
        return self.reflected_cut_faces(image) + self.close_ups(image)

    def reflected_cut_faces(self, image: np.ndarray) -> list[Detection]:
        """The faces crossing the border that one upright pass finds on the image padded by
        reflection (``pad`` of its shorter side)."""
        scale = min(1.0, self.max_side / ((1 + 2 * self.pad) * max(image.shape[:2])))
        small = _resized(image, scale)
        pad = min(round(self.pad * min(small.shape[:2])), min(small.shape[:2]) - 1)
        if pad < 1:
            return []
        padded = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
        return self._crossing(padded, [0], pad, scale, image.shape, "@border")

    def close_ups(self, image: np.ndarray) -> list[Detection]:
        """The faces crossing the border that a pass at every quarter turn (one batch: a
        close-up photographed sideways is as much a face) finds on the image framed in grey
        (``CLOSE_UP_PAD`` of its longer side), each found again by an upright second look framed
        so: the frame's own outline can make a "face" of the whole image."""
        height, width = image.shape[:2]
        scale = min(CLOSE_UP_SHORT_SIDE / min(height, width),
                    CLOSE_UP_MAX_SIDE / ((1 + 2 * CLOSE_UP_PAD) * max(height, width)))
        small = _resized(image, scale)
        pad = max(1, round(CLOSE_UP_PAD * max(small.shape[:2])))
        padded = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_CONSTANT,
                                    value=(CLOSE_UP_GREY,) * small.shape[2])
        return [det for det in self._crossing(padded, [0, 1, 2, 3], pad, scale, image.shape, "@close-up")
                if upright_look(self.border_detector, image, det.landmarks, CONFIRM_FACE_SIZE, CONFIRM_SIDE,
                                fill=CLOSE_UP_GREY) is not None]

    def _crossing(self, padded: np.ndarray, turns: list[int], pad: int, scale: float, shape: tuple[int, ...],
                  tag: str) -> list[Detection]:
        """The faces ``border_detector`` finds on ``padded`` (the image scaled by ``scale``,
        ``pad`` px added on every side) turned by each of ``turns``, in the coordinates of the
        image of ``shape``, that cross its border with a fair share of their box inside it."""
        height, width = shape[:2]
        turned = [np.ascontiguousarray(np.rot90(padded, k)) if k else padded for k in turns]
        found = []
        for k, detections in zip(turns, run_batched(self.border_detector, turned), strict=True):
            for det in detections:
                det = unrotated(Detection(det.box, det.score, det.landmarks, det.detector + tag), k, padded.shape)
                x1, y1, x2, y2 = ((v - pad) / scale for v in det.box)
                if x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height:
                    continue  # a whole face: the full search's
                area = max(x2 - x1, 1e-6) * max(y2 - y1, 1e-6)
                seen_x = max(0.0, min(x2, width) - max(x1, 0.0))
                seen_y = max(0.0, min(y2, height) - max(y1, 0.0))
                if seen_x * seen_y / area < MIN_VISIBLE or min(seen_x, seen_y) < MIN_VISIBLE_SIDE:
                    continue  # a mirror image in the padding, or a sliver of a face
                found.append(Detection((x1, y1, x2, y2), det.score, (det.landmarks - pad) / scale, det.detector))
        return found


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` scaled by ``scale`` (area-averaged down, cubic up)."""
    if scale == 1.0:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC)
