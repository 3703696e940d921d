"""Faces printed with a halftone screen, or dithered to two levels.

A scanned newspaper or magazine shows a face as a pattern of dots, and a one-bit picture as a
dither; MTCNN misses most such faces (of 30 LFW photos, 20 in a 4 px halftone, 25 in a 6 px
one), while a blur, which is what looking from a step back does, gives them back to a
recogniser (13 and 20 of those 30 faces matched to the clear photo by an oracle). Photos have
little fine detail (the mean absolute difference between luma and its one-pixel Gaussian blur,
in a central SCREEN_CROP px: at most 10 levels over 417 LFW, UTKFace, ORL, scene and sample
photos; mostly 15-90 for halftones and dithers), and almost never lie mostly at black and
white, so only a photo over SCREEN_DETAIL, or a fainter one of black and white dots (see
FAINT_DETAIL), is searched again (see
:mod:`idmrag_plugin.engine.retoned`), blurred just enough to hide its screen and one step more
(coarse screens show their faces better a little blurrier: 36 of 40 LFW faces in an 8 px
halftone found in either copy, 26 in the first alone); other photos pay for one blur of the
crop. A face found only there is redrawn and judged in the first blurred copy, only the
redrawn pixels are brought back into the photo, and the drawings are judged again in the photo
as returned, blurred both ways (the attacker's views).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from idmrag_plugin.engine.denoise import Denoised
from idmrag_plugin.engine.exposure import central_crop, luma
from idmrag_plugin.engine.retoned import RetonedSearch

DESCREENED_TAG = "@descreened"
#: Fine luma detail (levels) in the photo's central SCREEN_CROP px over which it may be a screen.
SCREEN_DETAIL = 12.0
SCREEN_CROP = 512
#: A darker or paler screen has fewer dots, and less detail: with at least FAINT_DETAIL levels of
#: it, a photo is still taken for one when EXTREME_SHARE of its crop's channel values lie within
#: EXTREME_LEVELS of 0 or 255 (every halftone of 100 LFW photos, 20 darkened and 20 brightened;
#: 1 of 417 LFW, UTKFace, ORL, scene and sample photos, a false alarm that costs two small
#: searches). Such a photo is two-level: a drawing goes back into it dithered.
FAINT_DETAIL = 3.0
EXTREME_SHARE = 0.8
EXTREME_LEVELS = 24
#: The blurs tried, smallest first; the first that leaves at most SMOOTH_DETAIL levels of fine
#: detail is the screen's (a photo's own detail after a one-pixel blur: 1.2 at most, median 1.2
#: for the 6 px halftones at two pixels, 0.8 for the 8 px ones at three).
SIGMAS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
SMOOTH_DETAIL = 1.2
#: What a face found only in a blurred copy must score (MTCNN's last stage): a blurred face
#: scores lower than a sharp one (0.95, the other copies' limit, found 30 of 40 LFW faces in a
#: 4 px halftone and 26 in an 8 px one; 0.9 in both blurs 34 and 36, with 3 and 2 other boxes).
MIN_SCORE = 0.9


def fine_detail(grey: np.ndarray) -> float:
    """Mean absolute difference (levels) between luma ``grey`` and its one-pixel Gaussian blur."""
    return float(np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 1.0)).mean())


@dataclass(frozen=True)
class Screen:
    """What :func:`screen_of` makes of a printed photo."""

    #: the Gaussian blurs (px) that hide it, the least first, then one step more
    sigmas: tuple[float, ...]
    #: mostly black and white dots (a one-bit halftone or dither), not a screen in grey levels
    two_level: bool


def screen_of(image: np.ndarray) -> Screen | None:
    """``image``'s halftone screen or dither, or None when its central crop has no more fine
    detail than a photo has (see SCREEN_DETAIL and FAINT_DETAIL)."""
    if min(image.shape[:2]) < 8:
        return None
    crop = central_crop(image, SCREEN_CROP)
    grey = luma(crop)
    detail = fine_detail(grey)
    two_level = bool(((crop <= EXTREME_LEVELS) | (crop >= 255 - EXTREME_LEVELS)).mean() >= EXTREME_SHARE)
    if detail < SCREEN_DETAIL and not (detail >= FAINT_DETAIL and two_level):
        return None
    first = next((i for i, sigma in enumerate(SIGMAS)
                  if fine_detail(cv2.GaussianBlur(grey, (0, 0), sigma)) <= SMOOTH_DETAIL), len(SIGMAS) - 1)
    return Screen(SIGMAS[first: first + 2], two_level)


def dithered(image: np.ndarray) -> np.ndarray:
    """``image`` (uint8 RGB) dithered to black and white dots (Floyd-Steinberg), each channel
    on its own, or its grey levels once when it has no colour."""
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]):
        dots = np.asarray(Image.fromarray(np.ascontiguousarray(image[..., 0])).convert("1"), np.uint8) * 255
        return np.repeat(dots[..., None], 3, axis=2)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).convert("1"), np.uint8) * 255
                     for c in range(3)], axis=2)


class Descreened(Denoised):
    """A printed photo blurred until its screen is gone. The redrawn pixels go back into the
    photo as a denoised photo's do (:meth:`Denoised.restore`), dithered first when the photo is
    black and white dots, so that a drawing is printed like the rest of it."""

    def __init__(self, sigma: float, two_level: bool = False) -> None:
        self.sigma = sigma
        self.two_level = two_level

    @classmethod
    def all_of(cls, image: np.ndarray) -> list[Descreened]:
        """The blurs of :func:`screen_of`, least first (none for a photo that is no screen)."""
        screen = screen_of(image)
        return [] if screen is None else [cls(sigma, screen.two_level) for sigma in screen.sigmas]

    def apply(self, image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(np.ascontiguousarray(image), (0, 0), self.sigma)

    def drawn(self, processed: np.ndarray) -> np.ndarray:
        return dithered(processed) if self.two_level else processed


class DescreenedSearch(RetonedSearch):
    """``detector``'s faces, plus the faces ``retoned_detector`` finds upright in a halftone or
    dithered photo blurred (see :func:`screen_of`) where ``detector`` found none (tagged
    DESCREENED_TAG, scoring at least MIN_SCORE)."""

    tag = DESCREENED_TAG
    min_score = MIN_SCORE

    def retoned(self, image: np.ndarray) -> np.ndarray | None:
        copies = self.retoned_copies(image)
        return copies[0] if copies else None

    def retoned_copies(self, image: np.ndarray) -> list[np.ndarray]:
        return [copy.apply(image) for copy in Descreened.all_of(image)]
