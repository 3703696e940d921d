"""Dark smudges a drawing puts on the forehead where the photo has skin.

The renderer continues the hair around the inpainting ellipse into it, and some pseudonym codes
carry hair of their own: drawn into a photo whose forehead is bare, they leave a band of dark
strands across it, a dark blotch between the brows and the hairline, or black hair inside a
white headscarf (looked at on 186 LFW faces: about one in fifteen). The statistic is the share of the
forehead band, between the ellipse's top and the brows, whose luma (ITU-R BT.601, 8-bit levels)
is ``DARKER_BY`` or more below the median of the face's own cheeks, in the drawing as the engine
shows it minus the same share in the photo's face: bangs the person has may be drawn again,
hair the person does not have is a smudge. Read on canonical crops, so at any crop size.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from idmrag_plugin.engine.blend import face_mask

#: The forehead band: rows of the canonical crop (shares of its side) inside the face ellipse,
#: from just under the ellipse's top to above the template's brows.
FOREHEAD_ROWS = (0.16, 0.375)
#: The cheeks the forehead is compared with: rows and two column ranges (shares of the side)
#: under the eyes and beside the nose, clear of eyes, brows, nostrils and mouth.
CHEEK_ROWS = (0.50, 0.70)
CHEEK_COLUMNS = ((0.30, 0.42), (0.58, 0.70))
#: How much darker than the cheeks' median (8-bit luma levels) a pixel of the forehead must be
#: to count as hair or a smudge rather than shading.
DARKER_BY = 30.0
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@lru_cache(maxsize=8)
def _regions(side: int) -> tuple[np.ndarray, np.ndarray]:
    """The forehead band and the cheeks (bool, side x side), built once per size."""
    inside = face_mask(side) > 0.5
    rows, columns = (np.mgrid[:side, :side] + 0.5) / side
    forehead = inside & (rows > FOREHEAD_ROWS[0]) & (rows < FOREHEAD_ROWS[1])
    beside_nose = np.zeros_like(inside)
    for left, right in CHEEK_COLUMNS:
        beside_nose |= (columns > left) & (columns < right)
    cheeks = inside & (rows > CHEEK_ROWS[0]) & (rows < CHEEK_ROWS[1]) & beside_nose
    return forehead, cheeks


def darker_than_cheeks(crop: np.ndarray, region: np.ndarray) -> float:
    """The share of ``region`` (bool, side x side) of a canonical uint8 RGB crop darker than the
    crop's cheeks by ``DARKER_BY`` luma levels."""
    _, cheeks = _regions(crop.shape[0])
    luma = crop.astype(np.float32) @ _LUMA
    return float(np.mean(luma[region] < np.median(luma[cheeks]) - DARKER_BY))


def dark_forehead_share(crop: np.ndarray) -> float:
    """The share of a canonical uint8 RGB crop's forehead band darker than its cheeks by
    ``DARKER_BY`` luma levels."""
    return darker_than_cheeks(crop, _regions(crop.shape[0])[0])


def forehead_smudge(shown: np.ndarray, face: np.ndarray) -> float:
    """How much more of the forehead a drawing, as the engine shows it (``shown``, the crop
    composited), covers with dark strands or blotches than the photo's face ``face`` does:
    about 0 for the renderer's typical drawing, 0.3 and more for a smudged one."""
    return dark_forehead_share(shown) - dark_forehead_share(face)
