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
larger ones. A line drawing (an editor's emboss, contour or edge filter), where MTCNN finds
almost no face, is also looked at as a pencil sketch (:func:`sketch_views`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from idmrag_plugin.engine.descreen import fine_detail
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
from idmrag_plugin.engine.exposure import central_crop, luma

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


#: A line drawing (an editor's edge, contour or emboss filter) is mostly one flat tone: at least
#: LINE_FLAT_SHARE of its central LINE_CROP px of luma within LINE_FLAT_LEVELS of the median, with
#: the rest fine lines (mean |luma - its 1 px blur| at least LINE_FINE_SHARE of mean |luma - its
#: 8 px blur|). Of 120 LFW photos so filtered (PIL's EMBOSS, CONTOUR, FIND_EDGES) every one is
#: (flat share 0.72 and more, fine share 0.40 and more); of 417 LFW, UTKFace, ORL, scene and
#: sample photos none (3 are as flat, none both).
LINE_FLAT_SHARE = 0.6
LINE_FLAT_LEVELS = 12
LINE_FINE_SHARE = 0.4
LINE_CROP = 512
#: A halftone or a dither is as flat and as fine; blurred by PRINT_BLUR px, a line drawing stays
#: mostly flat (LINE_BLURRED_FLAT_SHARE or more within LINE_FLAT_LEVELS: 0.73 and more for the
#: filtered LFW photos, 0.62 for the cameraman's contour and edges), a print's dots turn into a
#: photo's tones (0.09-0.33 for the astronaut's and the cameraman's 4 and 6 px halftones; half
#: of 40 LFW halftones, whose paper is mostly blank, stay over it and are looked at too).
PRINT_BLUR = 3.0
LINE_BLURRED_FLAT_SHARE = 0.55


def _flat_share(grey: np.ndarray) -> float:
    """The share of luma ``grey`` within LINE_FLAT_LEVELS of its median."""
    return float((np.abs(grey - np.median(grey)) <= LINE_FLAT_LEVELS).mean())


def is_line_drawing(image: np.ndarray) -> bool:
    """Whether ``image`` looks like a line drawing (see LINE_FLAT_SHARE)."""
    grey = luma(central_crop(image, LINE_CROP))
    if _flat_share(grey) < LINE_FLAT_SHARE:
        return False
    middle = np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 8.0)).mean()
    if fine_detail(grey) < LINE_FINE_SHARE * max(middle, 1e-3):
        return False
    return _flat_share(cv2.GaussianBlur(grey, (0, 0), PRINT_BLUR)) >= LINE_BLURRED_FLAT_SHARE


def pencil_sketch(image: np.ndarray) -> np.ndarray:
    """A line drawing as dark lines on white whatever its filter left: each pixel's luma away
    from the drawing's flat tone, stretched so that its 99th percentile is black (an edge
    filter's faint light lines on black, an emboss's light and dark relief on grey alike)."""
    grey = luma(image)
    away = np.abs(grey - np.median(grey))
    top = max(float(np.percentile(away, 99)), 1.0)
    sketch = (255.0 - np.clip(away * (255.0 / top), 0.0, 255.0) + 0.5).astype(np.uint8)
    return np.repeat(sketch[..., None], 3, axis=2)


def sketch_views(image: np.ndarray) -> list[np.ndarray]:
    """What HOG also looks at in a line drawing: its :func:`pencil_sketch`, blurred by 1 and by
    2 px (its lines read as shading). Of 41 faces (the astronaut, 40 LFW photos) HOG found 33
    / 36 / 34 in them under PIL's EMBOSS / CONTOUR / FIND_EDGES at a margin of 0 or more, where
    the drawing itself and its negative showed it 24 / 35 / 28 at any margin."""
    sketch = pencil_sketch(image)
    return [cv2.GaussianBlur(sketch, (0, 0), sigma) for sigma in (1.0, 2.0)]


SKETCH_TAG = "@sketch"
#: The margin a face HOG finds in a line drawing's sketch views must have: a drawing is no photo
#: and scores lower (with MIN_MARGIN, 23 / 34 / 25 of those 41 faces), and only line drawings
#: are looked at so.
SKETCH_MIN_SCORE = 0.5


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
    (see :func:`hog_scales`) with MIN_MARGIN, and in a line drawing in its :func:`sketch_views`
    with SKETCH_MIN_SCORE (tagged ``hog@sketch``), that none of them covers, in place of the
    turned passes' faces that lie on them."""

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
        faces = [face for face in self.hog_faces(image) if face.score >= MIN_SCORE]
        if is_line_drawing(image):
            faces = suppress_overlaps(faces + [
                Detection(d.box, d.score, d.landmarks, d.detector + SKETCH_TAG)
                for view in sketch_views(image) for d in self.hog_faces(view) if d.score >= SKETCH_MIN_SCORE], self.iou)
        extra = [face for face in faces if not any(covers(f, face) for f in found)]
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
