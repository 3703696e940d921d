"""A mask over the lower face, kept over the drawing.

A person in a surgical or cloth mask came out of the renderer with a whole new face drawn over
the mask: its nose and mouth smeared with the mask's colour, and, the drawing's mean colour
being moved to the face's (the mask's included), a pale face on a dark-skinned man (looked at
on 8 LFW photos with a pale blue mask drawn over nose, mouth and chin). The mask is no part of
anyone's identity and the photo shows it: it stays, and only the face around it is redrawn.

A mask is found on the canonical crop as one region of nearly uniform colour over most of the
lower face, unlike the skin of the face's eye line: pixels of the lower face (under the eyes,
inside the face ellipse) that differ from the eye line's median colour by ``UNLIKE_SKIN`` or
more (Lab) and are smooth (``SMOOTH`` in luma over 5x5 pixels), the largest connected region
of them, which must cover ``MIN_SHARE`` of the lower face and be uniform as a whole
(``UNIFORM``). Beards are textured and shadows graded, so neither is kept. Read on canonical
crops, so at any crop size.
"""

from __future__ import annotations

import cv2
import numpy as np

from idmrag_plugin.engine.blend import face_mask

#: The lower face: rows of the canonical crop (shares of its side) from the eyes (0.47; a mask
#: reaches up to the bridge of the nose, just under them) to the ellipse's bottom.
LOWER_FROM = 0.47
#: The eye line whose median colour stands for the skin: rows (shares of the side), inside the
#: face ellipse, eyes, brows and temples included.
EYE_LINE_ROWS = (0.37, 0.48)
#: A mask pixel's colour differs from the eye line's median by at least this (Lab distance).
UNLIKE_SKIN = 22.0
#: ... and its luma's standard deviation over 5x5 pixels is at most this (at 128 px).
SMOOTH = 6.0
#: The mask covers at least this share of the lower face ...
MIN_SHARE = 0.35
#: ... and its pixels' L, a and b each vary by at most this (standard deviation) over it.
UNIFORM = 12.0
#: The mask is looked for in the face ellipse grown by this (the renderer draws over the
#: ellipse grown by 10%, and later attempts more).
REACH = 1.3
#: The kept mask is grown by this share of the side and feathered over as much again.
GROW = 0.015


def lower_face(size: int, grow: float = 1.0) -> np.ndarray:
    """Bool (size, size): the face ellipse (grown by ``grow``) under the eyes."""
    inside = face_mask(size, grow) > 0.5
    rows = np.arange(size)[:, None] >= LOWER_FROM * size
    return inside & rows


def mask_over_face(face: np.ndarray) -> np.ndarray | None:
    """Float (size, size) in [0, 1]: the mask over the lower face of the canonical crop
    ``face`` (RGB uint8), 1 on it and feathered at its edge; None when it wears none."""
    size = face.shape[0]
    lab = cv2.cvtColor(face, cv2.COLOR_RGB2LAB).astype(np.float32)
    inside = face_mask(size) > 0.5
    rows = np.arange(size)[:, None]
    eye_line = inside & (rows >= EYE_LINE_ROWS[0] * size) & (rows < EYE_LINE_ROWS[1] * size)
    lower = lower_face(size)
    if eye_line.sum() < 16 or lower.sum() < 16:
        return None
    skin = np.median(lab[eye_line], axis=0)
    unlike = np.linalg.norm(lab - skin, axis=2) >= UNLIKE_SKIN
    luma = lab[..., 0]
    mean = cv2.blur(luma, (5, 5))
    spread = np.sqrt(np.maximum(cv2.blur(luma * luma, (5, 5)) - mean * mean, 0.0))
    # found over the whole area a drawing may cover (the inpainting ellipse is grown), measured
    # against the lower face
    candidate = (unlike & (spread <= SMOOTH) & lower_face(size, REACH)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(candidate, connectivity=4)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = labels == largest
    on_face = region & lower
    if on_face.sum() < MIN_SHARE * lower.sum() or float(lab[on_face].std(axis=0).max()) > UNIFORM:
        return None
    # the mask's own shading and folds, and its rim, are the mask too; feathered outwards only
    grow = max(1, round(GROW * size))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    closed = cv2.morphologyEx(region.astype(np.uint8), cv2.MORPH_CLOSE, kernel, iterations=2)
    core = cv2.dilate(closed, kernel)
    reach = cv2.dilate(core, kernel, iterations=2)
    soft = np.clip(cv2.GaussianBlur(cv2.dilate(core, kernel).astype(np.float32), (0, 0), grow), 0.0, 1.0)
    return np.maximum(core.astype(np.float32), soft * (reach > 0))
