"""A drawn face no sharper than the photo's face it replaces.

The renderer draws every face as if in focus. A bystander out of focus behind the subject, a
face blurred by motion or a soft old photo then gets a crisp face pasted into a blurred head, which
is what gives a replacement away at a glance (looked at on 182 LFW faces through the default
engine: of the 16 drawings with the most fine detail against their photo, most were sharp faces in
defocused backgrounds). Here the drawing's fine luma detail inside the face (the mean absolute
difference between luma and its Gaussian-blurred self, sigma one pixel at 128 px) is compared with
the photo's face's, and a drawing with more than ``ALLOWANCE`` times as much is blurred, with the
smallest of ``SIGMAS`` that brings its detail down to that, inside the drawn region only. A
drawing softer than that (most of them: the renderer draws softly) is left as drawn.
"""

from __future__ import annotations

import cv2
import numpy as np

from idmrag_plugin.engine.blend import face_mask

#: The sigma of the detail's reference blur, in pixels of a 128 px crop (scaled with the crop).
DETAIL_SIGMA = 1.0
#: The blurs tried, smallest first (pixels of a 128 px crop, scaled with the crop); the last is
#: used when none brings the drawing's detail down to the photo's.
SIGMAS = (0.5, 0.7, 0.9, 1.2, 1.5, 2.0, 2.6, 3.4)
#: How much more fine detail than the photo's face a drawing may keep: a little sharper does not
#: show, and every blur costs the drawn face some of what a reader of it sees (the README's
#: bench: softened down to the photo's detail exactly, gender agreement 97.3 -> 96.3%).
ALLOWANCE = 1.25
#: The allowance over the wider inpainting ellipse of an engine's late attempts at a face (see
#: ``renderer_generator.WIDER_MASK_FROM_ATTEMPT``): a face refused that often is mostly a small,
#: blurred or cut one near the oracles' thresholds, and a drawing blurred to its photo's detail
#: exactly is refused a little more often there (``benchmarks/focus_eval.py``, 100 LFW photos and
#: the scenes: 4 of 151 faces failed closed against 3). Left sharp, as before, such drawings were
#: crisp faces pasted into defocused crowds (3 of 151 with over 1.6 times their photo's detail);
#: at this allowance 1, with the same 3 failing closed.
WIDER_ALLOWANCE = 2.0
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def luma_detail(crop: np.ndarray, region: np.ndarray) -> float:
    """Fine luma detail of a canonical uint8 RGB crop inside ``region`` (bool, side x side), in
    8-bit levels: the mean absolute difference between its luma and that luma blurred by
    ``DETAIL_SIGMA`` (scaled to the crop's size)."""
    luma = crop.astype(np.float32) @ _LUMA
    sigma = DETAIL_SIGMA * crop.shape[0] / 128.0
    return float(np.abs(luma - cv2.GaussianBlur(luma, (0, 0), sigma))[region].mean())


def sharper_by(drawn: np.ndarray, face: np.ndarray) -> float:
    """How many times the fine detail of ``drawn`` (a canonical crop, composited) the photo's
    face ``face`` has inside the face's ellipse; above 1 the drawing is the sharper."""
    region = face_mask(face.shape[0]) > 0.5
    return luma_detail(drawn, region) / max(luma_detail(face, region), 1e-3)


def as_sharp_as(drawn: np.ndarray, face: np.ndarray, inside: np.ndarray, allowance: float = ALLOWANCE) -> np.ndarray:
    """``drawn`` (a canonical uint8 RGB crop, composited over the drawn region ``inside``, float
    side x side in [0, 1]) blurred inside that region until its face has no more than
    ``allowance`` times the fine detail of the photo's face ``face``; unchanged where it has no
    more already."""
    side = face.shape[0]
    region = face_mask(side) > 0.5
    target = allowance * luma_detail(face, region)
    if luma_detail(drawn, region) <= target:
        return drawn
    scale = side / 128.0
    for sigma in SIGMAS:
        blurred = cv2.GaussianBlur(drawn, (0, 0), sigma * scale)
        if luma_detail(blurred, region) <= target:
            break
    alpha = inside.astype(np.float32)[..., None]
    return np.clip(alpha * blurred + (1.0 - alpha) * drawn + 0.5, 0, 255).astype(np.uint8)
