"""How washed out a drawn face is beside the photo's: the spread of its luma over the inner face.

Some pseudonym codes, in some contexts, are drawn as a pale, flat face whose eyes, brows and
mouth barely stand out from the skin: pasted into the photo it reads as a ghost. Real faces
have a wide spread of luma inside the face (dark eyes, brows, nostrils, lips against lit
skin), and so do the renderer's good drawings. The statistic is the spread between the 90th
and 10th percentiles of the luma (ITU-R BT.601, 8-bit levels) inside the face ellipse shrunk
to 80% (cheeks, eyes, nose and mouth, none of the rim where the drawing meets the photo),
of the drawing divided by the photo's face's: one number read from the original, as the
blend reads its mean colour.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch

from idmrag_plugin.engine.blend import face_mask

#: Share of the face ellipse the spread is read over.
INNER_FACE = 0.8
_LUMA = torch.tensor([0.299, 0.587, 0.114])


@lru_cache(maxsize=8)
def _inner_face(side: int) -> np.ndarray:
    """The inner face at ``side`` px (bool), built once per size: every drawing is measured."""
    return face_mask(side, INNER_FACE) > 0.5


def _spread(luma: np.ndarray, side: int) -> float:
    values = luma[_inner_face(side)]
    return float(np.percentile(values, 90) - np.percentile(values, 10))


def luma_spread(face: np.ndarray, side: int) -> float:
    """The spread of a uint8 RGB crop's luma inside its inner face, read at ``side`` px."""
    small = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA) if face.shape[0] != side else face
    luma = small.astype(np.float32) @ _LUMA.numpy()
    return _spread(luma, side)


def ghost_ratio(drawn: torch.Tensor, face: np.ndarray) -> np.ndarray:
    """The luma spread of each drawing (K, 3, r, r) in [-1, 1] over the photo's face's (the
    uint8 crop ``face`` brought to r px), (K,): about 0.85 for the renderer's typical drawing,
    under 0.5 for a washed-out one."""
    side = drawn.shape[-1]
    luma = torch.einsum("k,nkhw->nhw", _LUMA.to(drawn), drawn.float()).cpu().numpy() * 127.5 + 127.5
    reference = max(luma_spread(face, side), 1.0)
    return np.array([_spread(one, side) / reference for one in luma])
