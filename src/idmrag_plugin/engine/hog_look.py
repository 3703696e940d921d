"""A second detector's look: the faces dlib's HOG detector finds that the MTCNN searches missed.

A detector misses some faces another finds at once, and an attacker may look with either.
MTCNN missed 4 of 20 LFW faces with a black bar over the eyes (a censor bar), which dlib's
HOG detector found and dlib's descriptor still matched to the person; and its second stage
rejects one of the 18 hand-marked faces of the PASCAL VOC scenes (a 37 px face, plainly
visible), which HOG finds. On ordinary photos the look adds almost nothing: of 629 photos
(LFW, UTKFace, the scenes, scikit-image's), HOG found one face that the searches had not.

It looks upright at the photo enlarged as much as HOG_PIXELS allows, up to twice (faces from
about 40 px), and at its own size (or only at a copy shrunk to HOG_PIXELS, on photos larger
than that: faces from about 80 px of that copy): about 20 ms on a 250x250 photo, 50-60 ms on
larger ones.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from idmrag_plugin.engine.detect import (
    MIN_SEARCHED_SIDE,
    TURNED_ON_UPRIGHT_SHARE,
    TURNED_PASSES,
    Detection,
    DlibHOGDetector,
    FaceDetector,
    share_on,
    suppress_overlaps,
)

#: The most pixels HOG looks at (after enlarging): about 50 ms on this CPU.
HOG_PIXELS = 800_000
#: A face only HOG finds must score at least this SVM margin (0 is HOG's own threshold): the
#: barred LFW faces MTCNN missed scored 0.29-1.18 at one scale or the other, the 37 px scene face
#: 0.89, while the one false face HOG finds in scikit-image's photos (the astronaut's mission
#: patch, enlarged) scores 0.06-0.12.
MIN_MARGIN = 0.25
MIN_SCORE = 1 / (1 + math.exp(-MIN_MARGIN))  # the margin as DlibHOGDetector reports it
#: HOG's window is 80 px: the photo is looked at enlarged up to this much (faces from 40 px).
MAX_ENLARGEMENT = 2.0


def hog_scales(shape: tuple[int, ...]) -> list[float]:
    """The scales at which HOG looks at a photo of ``shape``: enlarged up to MAX_ENLARGEMENT
    within HOG_PIXELS (shrunk to HOG_PIXELS when larger), and an enlarged photo at its own
    size too: HOG finds some faces only at one scale (a barred face of a 250x250 LFW photo
    only at its own size)."""
    scale = min(MAX_ENLARGEMENT, math.sqrt(HOG_PIXELS / max(1, shape[0] * shape[1])))
    return [scale, 1.0] if scale > 1.0 else [scale]


#: A found face covers HOG's when its box holds the centre of HOG's and their areas are within
#: this factor of each other (a cut face's border search box, the whole head, is about 3x HOG's).
COVER_AREA_RATIO = 4.0


def covers(found: Detection, face: Detection) -> bool:
    """Whether ``found`` is ``face``: its box holds the centre of ``face``'s, and neither box is
    over COVER_AREA_RATIO times the other. Overlap alone is not enough: a turned pass may read
    the lower half of a face whose eyes are hidden as a face on its side, 35% of HOG's box."""
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    if not (found.box[0] <= cx <= found.box[2] and found.box[1] <= cy <= found.box[3]):
        return False
    ratio = _area(found.box) / max(_area(face.box), 1e-6)
    return 1 / COVER_AREA_RATIO <= ratio <= COVER_AREA_RATIO


def _on_upright(face: Detection, upright: list[Detection]) -> bool:
    """Whether ``face`` was found by a turned pass with TURNED_ON_UPRIGHT_SHARE of its box on
    one of ``upright``."""
    if face.detector.rpartition("@")[2] not in TURNED_PASSES:
        return False
    return any(share_on(face.box, other.box) >= TURNED_ON_UPRIGHT_SHARE for other in upright)


def _area(box: tuple[float, ...]) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


class HOGLook(FaceDetector):
    """``detector``'s faces, plus the faces dlib's HOG detector finds upright in the photo
    (see :func:`hog_scales`) with MIN_MARGIN that none of them covers (tagged ``hog``), in place
    of the turned passes' faces that lie on them."""

    def __init__(self, detector: FaceDetector, hog: DlibHOGDetector | None = None, iou: float = 0.3) -> None:
        super().__init__()
        self.detector = detector
        self.hog = hog or DlibHOGDetector()
        self.iou = iou
        self.name = detector.name

    def _load(self) -> None:
        self.detector.load()
        self.hog.load()

    def _detect(self, image: np.ndarray) -> list[Detection]:
        found = self.detector.detect(image)
        if min(image.shape[:2]) < MIN_SEARCHED_SIDE:
            return found
        extra = [face for face in self.hog_faces(image)
                 if face.score >= MIN_SCORE and not any(covers(f, face) for f in found)]
        # a turned pass's face with a third of its box on an upright face HOG finds is a part
        # of that face read on its side (the lower half of a face whose eyes a bar hides): a
        # real face does not share a third of its box with another
        return [f for f in found if not _on_upright(f, extra)] + extra

    def hog_faces(self, image: np.ndarray) -> list[Detection]:
        """HOG's faces in ``image``, in its coordinates (of two looks' overlapping faces, the
        one with plausible points, then the higher score)."""
        faces = [face for scale in hog_scales(image.shape) for face in self._look(image, scale)]
        return suppress_overlaps(faces, self.iou)

    def _look(self, image: np.ndarray, scale: float) -> list[Detection]:
        if scale == MAX_ENLARGEMENT:  # dlib's own enlargement, as an attacker's detector(image, 1) sees it
            return self.hog.detect_upsampled(image, 1)
        if scale == 1.0:
            return self.hog.detect_upsampled(image, 0)
        h, w = image.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
        factor = np.array([w / size[0], h / size[1]])
        return [
            Detection((d.box[0] * factor[0], d.box[1] * factor[1], d.box[2] * factor[0], d.box[3] * factor[1]),
                      d.score, d.landmarks * factor, d.detector)
            for d in self.hog.detect_upsampled(resized, 0)
        ]
