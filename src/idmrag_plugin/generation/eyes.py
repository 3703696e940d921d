"""Dark sockets a drawing puts around the eyes where the photo's eyes are clear.

Some drawings shade the eyes as if bruised or sunken: dark pits or a dark band across both eyes
where the photo shows open, lit eyes (looked at on 182 LFW faces through the default engine of
session 33: of the 16 drawings that scored highest, about ten had dark sockets or a smeared
eye band, the others eyes drawn darker than the photo's but still eyes). As for the forehead
(:mod:`idmrag_plugin.generation.forehead`) and the chin (:mod:`idmrag_plugin.generation.chin`),
the statistic is the share of two boxes around the template's eyes darker than the face's own
cheeks by ``DARKER_BY`` luma levels, in the drawing as the engine shows it minus the same share
in the photo's face: pupils, lashes, brows' ends and glasses' frames the photo has count on both
sides, and sunglasses in the photo leave no room for a drawing to darken. Read on canonical
crops, so at any crop size.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from idmrag_plugin.generation.forehead import darker_than_cheeks

#: Rows of the eye boxes (shares of the canonical crop's side): from under the brows to the top of
#: the cheeks, around the template's eye centres (0.47 down).
EYE_ROWS = (0.41, 0.54)
#: The template's eye centres across (shares of the side) and the boxes' half width around each.
EYE_CENTRES = (0.38, 0.62)
EYE_HALF_WIDTH = 0.10


@lru_cache(maxsize=8)
def eye_boxes(side: int) -> np.ndarray:
    """The two eye boxes (bool, side x side), built once per size."""
    rows, columns = (np.mgrid[:side, :side] + 0.5) / side
    boxes = np.zeros((side, side), bool)
    for centre in EYE_CENTRES:
        boxes |= (rows > EYE_ROWS[0]) & (rows < EYE_ROWS[1]) & (np.abs(columns - centre) < EYE_HALF_WIDTH)
    return boxes


def dark_eye_share(crop: np.ndarray) -> float:
    """The share of a canonical uint8 RGB crop's eye boxes darker than its cheeks by
    ``DARKER_BY`` luma levels."""
    return darker_than_cheeks(crop, eye_boxes(crop.shape[0]))


def eye_darkening(shown: np.ndarray, face: np.ndarray) -> float:
    """How much more of the eye boxes a drawing, as the engine shows it (``shown``, the crop
    composited), darkens than the photo's face ``face`` does: about 0 for the renderer's typical
    drawing, 0.25 and more for sunken, bruised-looking sockets."""
    return dark_eye_share(shown) - dark_eye_share(face)
