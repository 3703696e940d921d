"""Quarter turns of images and points: faces lying on their side, seen upright."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def rotate_points(points: np.ndarray, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Map (x, y) points of an image of ``shape`` (h, w) into ``np.rot90(image, k)``."""
    h, w = shape
    x, y = points[..., 0], points[..., 1]
    k %= 4
    if k == 1:
        x, y = y, (w - 1) - x
    elif k == 2:
        x, y = (w - 1) - x, (h - 1) - y
    elif k == 3:
        x, y = (h - 1) - y, x
    return np.stack([x, y], axis=-1)


def unrotate_points(points: np.ndarray, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Map (x, y) points found in ``np.rot90(image, k)`` back to ``image`` of ``shape`` (h, w)."""
    h, w = shape
    x, y = points[..., 0], points[..., 1]
    k %= 4
    if k == 1:
        x, y = (w - 1) - y, x
    elif k == 2:
        x, y = (w - 1) - x, (h - 1) - y
    elif k == 3:
        x, y = y, (h - 1) - x
    return np.stack([x, y], axis=-1)


@dataclass(frozen=True)
class UprightPatch:
    """A region of an image turned by ``k`` quarter turns, with exact point mappings."""

    pixels: np.ndarray
    origin: tuple[int, int]  # (x, y) of the region's top-left corner in the image
    region_shape: tuple[int, int]  # (h, w) of the region before turning
    k: int

    def to_patch(self, points: np.ndarray) -> np.ndarray:
        local = np.asarray(points, dtype=np.float64) - np.asarray(self.origin, dtype=np.float64)
        return rotate_points(local, self.k, self.region_shape)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        local = unrotate_points(np.asarray(points, dtype=np.float64), self.k, self.region_shape)
        return local + np.asarray(self.origin, dtype=np.float64)


def upright_patch(
    image: np.ndarray, bounds: tuple[float, float, float, float], k: int, margin: float = 0.6
) -> UprightPatch:
    """The region ``bounds`` (x1, y1, x2, y2) grown by ``margin`` of its side, turned by ``k``.

    Only the region is copied and turned (exactly, no interpolation), so faces in huge
    images cost what the face costs.
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = bounds
    pad = margin * max(x2 - x1, y2 - y1, 1.0)
    left, top = int(max(0, np.floor(x1 - pad))), int(max(0, np.floor(y1 - pad)))
    right, bottom = int(min(w, np.ceil(x2 + pad))), int(min(h, np.ceil(y2 + pad)))
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    region = image[top:bottom, left:right]
    # A face cut by the image border: the part outside is its mirror image (as the border
    # search saw it), not a smear of edge pixels that the original and its replacement share.
    rows, cols = region.shape[:2]
    limits = (rows - 1, rows - 1, cols - 1, cols - 1)  # reflection reaches at most across the region
    wanted = (-(y1 - pad), (y2 + pad) - h, -(x1 - pad), (x2 + pad) - w)
    spill = [min(int(max(0, np.ceil(v))), limit) for v, limit in zip(wanted, limits, strict=True)]
    if any(spill):
        region = cv2.copyMakeBorder(region, *spill, cv2.BORDER_REFLECT_101)
        left, top = left - spill[2], top - spill[0]
    pixels = np.ascontiguousarray(np.rot90(region, k % 4)) if k % 4 else np.ascontiguousarray(region)
    return UprightPatch(pixels, (left, top), region.shape[:2], k % 4)
