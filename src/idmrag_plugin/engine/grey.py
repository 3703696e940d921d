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

One colour channel inverted (a hostile edit, or a channel mix gone wrong) hides faces too: MTCNN
found 6 of 12 LFW faces with green inverted, while inverting it back shows them all. Natural
photos' channels rise and fall together; a channel whose correlation with both others is
below FLIPPED_CORRELATION is taken as inverted, the grey levels are read with it inverted
back, and the photo's faces are redrawn and judged with it inverted back (:class:`ChannelFlip`),
as an attacker would look at them.
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
#: A channel whose correlation with each other channel is below this is read inverted.
FLIPPED_CORRELATION = -0.3
#: A photo whose red averages under this share of its green or of its blue is in a cold cast
#: (green, cyan, blue), where its grey levels show faces its colours hide: no photo of 3,010 LFW,
#: UTKFace and scene photos came under 0.55.
COLD_CAST = 0.5


#: Whether a photo is in a cast or has a channel inverted is read from at most this many.
DECISION_SAMPLES = 16_384


def _sample(image: np.ndarray, count: int = SAMPLES) -> np.ndarray:
    """At most about ``count`` of ``image``'s pixels, evenly spread, as rows of 3."""
    flat = image.reshape(-1, 3)
    return flat[:: max(1, flat.shape[0] // count)]


def flipped_channels(sample: np.ndarray) -> tuple[float, float, float]:
    """Per channel, -1 where it falls as the other two rise (see FLIPPED_CORRELATION), else 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = np.nan_to_num(np.corrcoef(sample.T.astype(np.float64)), nan=1.0)
    signs = [1.0, 1.0, 1.0]
    for channel in range(3):
        others = [c for c in range(3) if c != channel]
        if all(correlation[channel, c] < FLIPPED_CORRELATION for c in others) and \
                correlation[others[0], others[1]] > FLIPPED_CORRELATION:
            signs[channel] = -1.0
    return tuple(signs)  # type: ignore[return-value]


@dataclass(frozen=True)
class ChannelFlip:
    """A photo with channels inverted (see :func:`flipped_channels`) with them inverted back:
    the colours an attacker restores, where faces are redrawn and judged; redrawn pixels are
    inverted again on the way back."""

    signs: tuple[float, float, float]

    @classmethod
    def of(cls, image: np.ndarray) -> ChannelFlip | None:
        """The flip that restores ``image``'s inverted channels, or None when none is."""
        signs = flipped_channels(_sample(image, DECISION_SAMPLES))
        return cls(signs) if signs != (1.0, 1.0, 1.0) else None

    def apply(self, image: np.ndarray) -> np.ndarray:
        out = image.copy()
        for channel, sign in enumerate(self.signs):
            if sign < 0:
                out[..., channel] = 255 - out[..., channel]
        return out

    def restore(self, original: np.ndarray, flipped: np.ndarray, processed: np.ndarray) -> np.ndarray:
        """``processed`` (``flipped`` with some regions redrawn) with its channels inverted
        again: every pixel the processing left alone is the original's exactly."""
        changed = (processed != flipped).any(axis=2, keepdims=True)
        return np.where(changed, self.apply(processed), original)


def attacker_would_drop_colour(image: np.ndarray) -> bool:
    """Whether ``image``'s grey levels may show a face its colours hide: a photo in a cold cast
    (see COLD_CAST) or with a channel inverted (see :func:`flipped_channels`). A drawing in such
    a photo is judged there too, not only as it looks in colour."""
    sample = _sample(image, DECISION_SAMPLES).astype(np.float64)
    means = sample.mean(axis=0)
    return bool(means[0] < COLD_CAST * max(means[1], means[2])) or flipped_channels(sample) != (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class GreyView:
    """A photo's grey levels stretched to the full range, and the way back to its colours.

    The grey level of a colour is its luma, read with each channel whose sign is -1 inverted
    (255 minus it)."""

    low: float
    high: float
    #: per channel, the photo's colour as gain x grey level + offset (least squares over its pixels)
    gains: tuple[float, float, float]
    offsets: tuple[float, float, float]
    signs: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @classmethod
    def of(cls, image: np.ndarray) -> GreyView:
        sample = _sample(image).astype(np.float64)
        signs = flipped_channels(sample)
        levels = _levels(sample, signs)
        low, high = (float(v) for v in np.percentile(levels, PERCENTILES))
        high = max(high, low + 4.0)
        gains, offsets = _colour_fit(sample, signs, (0.0, 0.0, 0.0), tuple(sample.mean(axis=0)))
        return cls(low, high, tuple(float(g) for g in gains), tuple(float(o) for o in offsets), signs)  # type: ignore[arg-type]

    def levels(self, image: np.ndarray) -> np.ndarray:
        """``image``'s grey levels (float), before stretching."""
        if self.signs == (1.0, 1.0, 1.0):
            return luma(image)
        return _levels(image.astype(np.float32), self.signs)

    def apply(self, image: np.ndarray) -> np.ndarray:
        levelled = (self.levels(image) - self.low) * (255.0 / (self.high - self.low))
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
        signs = np.array(self.signs)
        count, labels = cv2.connectedComponents(changed.astype(np.uint8), connectivity=8)
        for label in range(1, count):
            region = labels == label
            gains, offsets = _colour_fit(original[region].astype(np.float64), self.signs, self.gains, self.offsets)
            level = self.low + luma(processed[region]).astype(np.float64) * ((self.high - self.low) / 255.0)
            colour = level[:, None] * gains + offsets
            # its grey level is exactly the drawn one (the signed luma weights' magnitudes sum to 1)
            colour += (level - _levels(colour, self.signs))[:, None] * signs
            out[region] = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
        return out


def _levels(pixels: np.ndarray, signs: tuple[float, float, float]) -> np.ndarray:
    """Luma of ``pixels`` (..., 3) with each channel of sign -1 read as 255 minus it."""
    weights = LUMA * np.array(signs)
    return pixels @ weights.astype(pixels.dtype) + 255.0 * float(LUMA[np.array(signs) < 0].sum())


#: A region's own colours are read from at least this many of its pixels, else the photo's.
MIN_REGION_PIXELS = 64


def _colour_fit(pixels: np.ndarray, signs: tuple[float, float, float], gains: tuple[float, ...],
                offsets: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, gain and offset of ``pixels``' colour against their grey level (least
    squares), or the given photo-wide ones when the pixels are too few or of one grey level."""
    levels = _levels(pixels, signs)
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
