"""The face's own outline in the canonical crop (jaw line, and the brows raised to the hairline),
from dlib's 68-point shape predictor.

A drawing composited over the whole inpainting ellipse also redraws what lies inside the ellipse
but outside the face: hair above the forehead, background beside a narrow or turned face, the
neck and collar under the chin. The renderer draws those worst (ghost hair, pale patches on the
backdrop, a smear over the collar) while the photo has them sharp, and none of them is the face.
So the drawing is kept where either face is, the original's (so that nothing of it survives) or
the drawing's (so that its jaw and cheeks are not cut), and the photo everywhere else.
"""

from __future__ import annotations

import cv2
import numpy as np

from idmrag_plugin.engine.align import template
from idmrag_plugin.engine.blend import FACE_CENTER
from idmrag_plugin.engine.oracles import DlibShapePredictor

#: Where MTCNN boxes a face aligned in the canonical crop (x1, y1, x2, y2, shares of the side;
#: the mean over 60 LFW crops, spread 0.02-0.05): the box dlib's predictor starts from, as the
#: bench's landmark judge starts from the detector's box in the photo.
OUTLINE_BOX = (0.24, 0.21, 0.76, 0.905)
#: The brows are raised by this share of the nose bridge's distance to the chin (points 27 and
#: 8), to reach the forehead's top without reaching far into the hair.
FOREHEAD_LIFT = 0.35
#: The inner face is always drawn, whatever the predictor says: an ellipse of these half-axes
#: (shares of the side) around the face ellipse's centre, which holds every template landmark
#: and, on 40 LFW crops, every eye, nose and mouth point of dlib's 68 (and 83% of the brows').
CORE_AXES = (0.22, 0.30)
#: An outline is believed only when every template landmark lies at least this share of the
#: side inside it; otherwise (a predictor lost on a blurred or strange drawing) the whole
#: ellipse is drawn, as without outlines.
MIN_MARGIN = 0.04


class FaceOutliner:
    """Outlines of faces in canonical crops (dlib's 68-point predictor, loaded on first use)."""

    def __init__(self) -> None:
        self._predictor = DlibShapePredictor("shape_predictor_68_face_landmarks.dat")

    def points(self, crop: np.ndarray) -> np.ndarray:
        """dlib's 68 landmarks (68, 2) of the face in a canonical RGB uint8 crop."""
        import dlib

        side = crop.shape[0]
        x1, y1, x2, y2 = (round(v * side) for v in OUTLINE_BOX)
        shape = self._predictor(np.ascontiguousarray(crop), dlib.rectangle(x1, y1, x2, y2))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def outline(self, crop: np.ndarray) -> np.ndarray | None:
        """The face's outline (a convex polygon, (N, 2) float32 crop pixels): jaw line and the
        brows raised by FOREHEAD_LIFT; None when it does not hold the template's landmarks
        (see MIN_MARGIN)."""
        points = self.points(crop)
        return outline_of(points, crop.shape[0])


def outline_of(points: np.ndarray, side: int) -> np.ndarray | None:
    """The outline polygon of 68 dlib landmarks in a ``side`` px canonical crop, or None when it
    is not believable (see MIN_MARGIN)."""
    if points.shape != (68, 2) or not np.all(np.isfinite(points)):
        return None
    jaw, brows = points[:17], points[17:27]
    lift = FOREHEAD_LIFT * float(np.linalg.norm(points[8] - points[27]))
    polygon = cv2.convexHull(np.vstack([jaw, brows - [0.0, lift]]).astype(np.float32)).reshape(-1, 2)
    margins = [cv2.pointPolygonTest(polygon, (float(x), float(y)), True) for x, y in template(side)]
    return polygon if min(margins) >= MIN_MARGIN * side else None


def drawn_region(side: int, outlines: list[np.ndarray]) -> np.ndarray:
    """Binary float mask (side, side): the union of the ``outlines`` and the inner-face core."""
    region = np.zeros((side, side), np.uint8)
    centre = (round(FACE_CENTER[0] * side), round(FACE_CENTER[1] * side))
    cv2.ellipse(region, centre, (round(CORE_AXES[0] * side), round(CORE_AXES[1] * side)), 0, 0, 360, 1, thickness=-1)
    for polygon in outlines:
        cv2.fillConvexPoly(region, np.round(polygon).astype(np.int32), 1)
    return region.astype(np.float32)
