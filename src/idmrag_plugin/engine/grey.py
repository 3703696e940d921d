"""Faces in photos cast in one colour.

A photo tinted green or cyan (night vision, a green monochrome screen, a cyanotype, an aquarium,
stage light) hides its faces from MTCNN: on 12 LFW photos with their red and blue channels at a
third of green's it found 3 faces, and none in a grey photo printed in green. Its grey levels,
what any viewer or editor shows by dropping the colour, show each face again, and dlib's
descriptor recognises the person there. So the search also looks at every colour photo's grey
levels (luma, stretched to the full range; upright, at half size, faces from 40 px; see
:mod:`idmrag_plugin.engine.retoned`). When a face is found only there, the engine works on that
grey copy (the generator's drawings are turned grey as they are pasted, so the oracles judge
exactly the grey levels the output will have), and the redrawn pixels are coloured back with
the photo's own relation between its grey levels and its colours: their grey levels are the
verified ones, every other pixel stays the photo's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from idmrag_plugin.engine.exposure import LUMA, luma
from idmrag_plugin.engine.retoned import RetonedSearch

GREY_TAG = "@grey"
#: The grey levels are stretched from these percentiles to 0 and 255.
PERCENTILES = (0.5, 99.5)
#: The levels and colours are read from at most this many of the photo's pixels.
SAMPLES = 65_536
#: A photo whose channels differ by at most this much (8-bit levels) is grey already.
GREY_TOLERANCE = 2


def _sample(image: np.ndarray) -> np.ndarray:
    """At most about SAMPLES of ``image``'s pixels, evenly spread, as rows of 3."""
    flat = image.reshape(-1, 3)
    return flat[:: max(1, flat.shape[0] // SAMPLES)]


@dataclass(frozen=True)
class GreyView:
    """A photo's grey levels stretched to the full range, and the way back to its colours."""

    low: float
    high: float
    #: per channel, the photo's colour as gain x luma + offset (least squares over its pixels)
    gains: tuple[float, float, float]
    offsets: tuple[float, float, float]

    @classmethod
    def of(cls, image: np.ndarray) -> GreyView:
        sample = _sample(image).astype(np.float64)
        levels = sample @ LUMA
        low, high = (float(v) for v in np.percentile(levels, PERCENTILES))
        high = max(high, low + 4.0)
        gains, offsets = _colour_fit(sample, (0.0, 0.0, 0.0), tuple(sample.mean(axis=0)))
        return cls(low, high, tuple(float(g) for g in gains), tuple(float(o) for o in offsets))  # type: ignore[arg-type]

    def apply(self, image: np.ndarray) -> np.ndarray:
        levelled = (luma(image) - self.low) * (255.0 / (self.high - self.low))
        grey = np.clip(np.rint(levelled), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)

    @staticmethod
    def project(pixels: np.ndarray) -> np.ndarray:
        """``pixels`` in grey (their luma in every channel)."""
        grey = np.clip(np.rint(luma(pixels)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)

    def restore(self, original: np.ndarray, grey: np.ndarray, processed: np.ndarray) -> np.ndarray:
        """``processed`` (``grey``, this view of ``original``, with some regions redrawn) back in
        ``original``'s colours: each redrawn pixel at the grey level it was drawn with
        (unlevelled), coloured by the relation between grey levels and colours that the photo
        has in that region (a face's skin, under the photo's cast); every pixel the processing
        left alone is the original's exactly."""
        changed = (processed != grey).any(axis=2)
        if not changed.any():
            return original
        out = original.copy()
        count, labels = cv2.connectedComponents(changed.astype(np.uint8), connectivity=8)
        for label in range(1, count):
            region = labels == label
            gains, offsets = _colour_fit(original[region].astype(np.float64), self.gains, self.offsets)
            level = self.low + luma(processed[region]).astype(np.float64) * ((self.high - self.low) / 255.0)
            colour = level[:, None] * gains + offsets
            colour += (level - colour @ LUMA)[:, None]  # its luma is exactly the drawn level
            out[region] = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
        return out


#: A region's own colours are read from at least this many of its pixels, else the photo's.
MIN_REGION_PIXELS = 64


def _colour_fit(pixels: np.ndarray, gains: tuple[float, ...], offsets: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, gain and offset of ``pixels``' colour against their luma (least squares),
    or the given photo-wide ones when the pixels are too few or of one grey level."""
    levels = pixels @ LUMA
    if len(pixels) < MIN_REGION_PIXELS or np.ptp(levels) < 4.0:
        return np.array(gains), np.array(offsets)
    design = np.stack([levels, np.ones_like(levels)], axis=1)
    (gain, offset), *_ = np.linalg.lstsq(design, pixels, rcond=None)
    return gain, offset


def is_grey(image: np.ndarray) -> bool:
    """Whether every channel of ``image`` is the same, to within GREY_TOLERANCE (sampled)."""
    sample = _sample(image).astype(np.int16)
    return int(np.abs(sample - sample[:, :1]).max()) <= GREY_TOLERANCE


class GreySearch(RetonedSearch):
    """``detector``'s faces, plus the faces ``retoned_detector`` finds upright in a colour photo's
    grey levels where ``detector`` found none (tagged GREY_TAG)."""

    tag = GREY_TAG

    def retoned(self, image: np.ndarray) -> np.ndarray | None:
        if is_grey(image):
            return None  # its grey levels are the photo (levelled: the exposure search's)
        return GreyView.of(image).apply(image)
