"""Irreversible obfuscation: the face region is refilled from the pixels around it.

Blur and pixelation keep a low-pass copy of the face that deblurring and
super-resolution partly undo. Here no pixel inside the face region contributes to its
fill: the region is inpainted at low resolution from the surrounding ring only, so the
result carries no information about the face beyond its outline.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from idmrag_plugin.engine.align import AlignedFace
from idmrag_plugin.engine.blend import face_mask, region_of, warp_into_region
from idmrag_plugin.engine.detect import Detection

# The obfuscated region is generous: the aligned face ellipse grown by this factor, united
# with an ellipse around the detector's box grown by BOX_GROW.
MASK_GROW = 1.2
BOX_GROW = 1.25
FILL_RESOLUTION = 24  # the fill is computed with the region about this many pixels across


#: Wider regions for a face whose obfuscation a recognizer still matches to the original (the
#: head's outline, hair and neck are left): both grow factors times each of these in turn.
WIDENINGS = (1.35, 1.7)


def drawn_faces_mask(shape: tuple[int, int], faces: Sequence[AlignedFace]) -> np.ndarray:
    """Boolean image-space mask of the face ellipses (``blend.face_mask``, not grown) of
    ``faces``' crops: where a generator's paste (grown by at least 1) is the drawing alone."""
    mask = np.zeros(shape, bool)
    for face in faces:
        x1, y1, x2, y2 = region = region_of(face, shape)
        if x2 > x1 and y2 > y1:
            mask[y1:y2, x1:x2] |= warp_into_region(face_mask(face.size), face, region) > 0.5
    return mask


def obfuscation_mask(shape: tuple[int, int], detection: Detection, face: AlignedFace | None,
                     widen: float = 1.0, spared: np.ndarray | None = None) -> np.ndarray:
    """Boolean image-space mask of the region to destroy; ``widen`` scales both ellipses.

    The region leaves out ``spared`` (the ellipses of the drawn faces beside it, see
    :func:`drawn_faces_mask`): their pixels are a generator's, verified as no one's, so no
    original pixel of this face stays, and a false face beside a drawn one (a border pass's,
    found by a subject's chin, whose box runs past the frame) no longer fills the subject's
    drawing with its own obfuscation."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = detection.box
    center = (round((x1 + x2) / 2), round((y1 + y2) / 2))
    grow = BOX_GROW * widen
    axes = (max(2, round((x2 - x1) / 2 * grow)), max(2, round((y2 - y1) / 2 * grow)))
    cv2.ellipse(mask, center, axes, 0, 0, 360, 1, thickness=-1)
    if face is not None:
        crop_mask = face_mask(face.size, grow=MASK_GROW * widen)
        full = (0, 0, w, h)
        mask |= (warp_into_region(crop_mask, face, full) > 0).astype(np.uint8)
    if spared is not None:
        return mask.astype(bool) & ~spared
    return mask.astype(bool)


def obfuscate_region(image: np.ndarray, mask: np.ndarray) -> None:
    """Replace ``image[mask]`` in place with a fill computed only from pixels outside ``mask``."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return
    h, w = mask.shape
    span = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    pad = max(4, span // 3)
    y1, y2 = max(0, ys.min() - pad), min(h, ys.max() + 1 + pad)
    x1, x2 = max(0, xs.min() - pad), min(w, xs.max() + 1 + pad)
    patch = image[y1:y2, x1:x2]
    region = mask[y1:y2, x1:x2]
    scale = min(1.0, FILL_RESOLUTION / span)
    small_size = (max(4, round(patch.shape[1] * scale)), max(4, round(patch.shape[0] * scale)))
    small = cv2.resize(patch, small_size, interpolation=cv2.INTER_AREA)
    # Any small pixel that averages in a masked pixel is itself masked, so the inpainting
    # source is strictly outside the face.
    small_mask = cv2.resize(region.astype(np.float32), small_size, interpolation=cv2.INTER_AREA) > 0
    small_mask = cv2.dilate(small_mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    if small_mask.all():
        fill_small = np.empty_like(small)
        outside = patch[~region]
        fill_small[:] = outside.mean(axis=0) if outside.size else 128
    else:
        small[small_mask] = 0
        fill_small = cv2.inpaint(small, small_mask.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    fill = cv2.resize(fill_small, (patch.shape[1], patch.shape[0]), interpolation=cv2.INTER_CUBIC)
    patch[region] = fill[region]
