"""Five-landmark similarity alignment to a canonical template, and its exact inverse."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

# ArcFace's 112x112 five-point template (left eye, right eye, nose, left and right mouth
# corner), normalised to [0, 1]. Other crops scale it about the centre with a zoom < 1 to
# keep hair, ears and chin in view.
_REFERENCE = (
    np.array(
        [
            [38.2946, 51.6963],
            [73.5318, 51.5014],
            [56.0252, 71.7366],
            [41.5493, 92.3655],
            [70.7299, 92.2041],
        ],
        dtype=np.float64,
    )
    / 112.0
)

#: Zoom of the engine's canonical crop: the face fills about 3/4 of it.
CANONICAL_ZOOM = 0.75


def template(size: int, zoom: float = CANONICAL_ZOOM) -> np.ndarray:
    """Five landmark positions (x, y) in a ``size`` x ``size`` crop."""
    return ((_REFERENCE - 0.5) * zoom + 0.5) * size


@dataclass(frozen=True)
class AlignedFace:
    """A face warped into the canonical crop, with the matrices that map it back.

    ``matrix`` maps image coordinates to crop coordinates; ``inverse`` maps crop
    coordinates back to the image.
    """

    crop: np.ndarray
    matrix: np.ndarray
    inverse: np.ndarray

    @property
    def size(self) -> int:
        return int(self.crop.shape[0])


def similarity_matrix(landmarks: np.ndarray, size: int, zoom: float = CANONICAL_ZOOM) -> np.ndarray:
    """Least-squares similarity transform (2x3) from ``landmarks`` to the template."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if points.shape[0] < 2 or not np.all(np.isfinite(points)):
        raise ValueError("alignment needs at least two finite landmarks")
    target = template(size, zoom)[: points.shape[0]]
    transform = SimilarityTransform.from_estimate(points, target)
    if not transform:
        raise ValueError("landmarks are degenerate: no similarity transform exists")
    return np.asarray(transform.params[:2], dtype=np.float64)


def invert(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def align_face(
    image: np.ndarray, landmarks: np.ndarray, size: int, zoom: float = CANONICAL_ZOOM
) -> AlignedFace:
    """Warp the face given by five landmarks into a ``size`` x ``size`` crop.

    Pixels outside the image are the image mirrored across its border, so a face cut by the
    image edge gives a full crop: its mirror image completes it (as in the border search), and
    the original and its replacement do not share a smear of edge pixels there.
    """
    matrix = similarity_matrix(landmarks, size, zoom)
    crop = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    return AlignedFace(crop=crop, matrix=matrix, inverse=invert(matrix))


def warp_to_image(crop: np.ndarray, face: AlignedFace, shape: tuple[int, int]) -> np.ndarray:
    """Warp a crop-space array (image or mask) back into image space of ``shape`` (h, w)."""
    height, width = shape
    return cv2.warpAffine(
        crop,
        face.inverse,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def in_frame_of(face: AlignedFace, shape: tuple[int, ...]) -> np.ndarray | None:
    """Which of the crop's pixels lie inside an image of ``shape`` (S, S) bool, None when all
    do (a face the frame does not cut)."""
    height, width = shape[:2]
    ys, xs = np.mgrid[0 : face.size, 0 : face.size].astype(np.float64)
    x = face.inverse[0, 0] * xs + face.inverse[0, 1] * ys + face.inverse[0, 2]
    y = face.inverse[1, 0] * xs + face.inverse[1, 1] * ys + face.inverse[1, 2]
    inside = (x > -0.5) & (x < width - 0.5) & (y > -0.5) & (y < height - 0.5)
    return None if inside.all() else inside
