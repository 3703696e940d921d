"""Dark smudges and stubble a drawing puts on the chin and jaw where the photo has bare skin.

Some pseudonym codes carry a beard's shadow, and some drawings a dark smear along the jaw: drawn
into a clean-shaven or a woman's face they show stubble or a bruise the person does not have
(looked at on 183 LFW faces through the default engine: of the 12 drawings that scored highest,
about ten were stubble on a bare chin, a woman's included, or a dark smear across the chin). As for the
forehead (:mod:`idmrag_plugin.generation.forehead`), the statistic is the share of the chin-and-
jaw band darker than the face's own cheeks by ``DARKER_BY`` luma levels, in the drawing as the
engine shows it minus the same share in the photo's face: a beard the person has may be drawn
again, one they do not have is a smudge. The mouth, dark when open, is left out. Read on
canonical crops, so at any crop size.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from idmrag_plugin.engine.blend import face_mask
from idmrag_plugin.generation.forehead import darker_than_cheeks

#: The chin-and-jaw band: rows and columns of the canonical crop (shares of its side) inside the
#: face ellipse, from under the nose to the chin and between the jaw's sides (the ellipse's
#: bottom and sides reach the neck, the collar and the background, dark in many photos).
CHIN_ROWS = (0.62, 0.88)
CHIN_COLUMNS = (0.25, 0.75)
#: The mouth, left out of the band: rows and columns (shares of the side) around the template's
#: mouth corners (0.40 and 0.60 across, 0.74 down), an open mouth's lips and teeth included.
MOUTH_ROWS = (0.66, 0.82)
MOUTH_COLUMNS = (0.36, 0.64)


@lru_cache(maxsize=8)
def chin_band(side: int) -> np.ndarray:
    """The chin-and-jaw band without the mouth (bool, side x side), built once per size."""
    inside = face_mask(side) > 0.5
    rows, columns = (np.mgrid[:side, :side] + 0.5) / side
    mouth = (rows > MOUTH_ROWS[0]) & (rows < MOUTH_ROWS[1]) & (columns > MOUTH_COLUMNS[0]) & (columns < MOUTH_COLUMNS[1])
    band = (rows > CHIN_ROWS[0]) & (rows < CHIN_ROWS[1]) & (columns > CHIN_COLUMNS[0]) & (columns < CHIN_COLUMNS[1])
    return inside & band & ~mouth


def dark_chin_share(crop: np.ndarray) -> float:
    """The share of a canonical uint8 RGB crop's chin-and-jaw band darker than its cheeks by
    ``DARKER_BY`` luma levels."""
    return darker_than_cheeks(crop, chin_band(crop.shape[0]))


def chin_smudge(shown: np.ndarray, face: np.ndarray) -> float:
    """How much more of the chin and jaw a drawing, as the engine shows it (``shown``, the crop
    composited), darkens with stubble or smears than the photo's face ``face`` does: about 0 for
    the renderer's typical drawing, 0.3 and more for a smudged one."""
    return dark_chin_share(shown) - dark_chin_share(face)
