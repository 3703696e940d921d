"""Faces in under- or overexposed photos.

A face in a photo taken at night, or washed out by haze or backlight, spans a few grey levels
that a detector reads as flat: MTCNN found nothing in the astronaut with its tones scaled to
7% (every pixel below 18 of 255) or squeezed into the top fifth. Yet stretching the levels,
what any viewer, editor or model downstream can do, brings the face back whole. So when an
image's tones are that narrow or that dark, the search looks once more at a levelled copy (its
tones stretched to the full range, then brought to a mid-grey median) and adds what it finds
there. When one of its faces was found only there, the engine replaces the photo's faces in the levelled copy, where the generator
sees a face of ordinary contrast and the oracles can judge it, and brings the redrawn pixels
back to the photo's tones (every other pixel stays the photo's own).

A face in deep shadow inside a well-exposed photo hides the same way (the astronaut's head
shaded to 8% of its tones is flat to MTCNN), while the photo's own range is wide and its
median ordinary. So the dark, textured regions of a photo large enough to hold a face are
levelled one by one (their own dark tones stretched) and searched; a face found only there is
redrawn in its surroundings levelled by its own curve, and brought back the same way.

A face behind a translucent overlay hides the same way at any brightness: a caption box of 90%
white, grey or a colour over a face, or glare, leaves it a few levels deep (of 40 LFW faces
under 92% white, MTCNN found 26 and oracles recognised 16 after the levels were stretched
back). So the faded regions of a photo, where no window a face could fill spans more than a
few levels yet the tones are not flat, are levelled too, each channel by its own curve (a
coloured overlay compresses each channel towards its own value), and searched upright; a
face found only there, its box's tones that narrow, is redrawn like a face in shadow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import combinations

import cv2
import numpy as np

from idmrag_plugin.engine.detect import (
    Detection,
    FaceDetector,
    box_intersection,
    box_iou,
    suppress_overlaps,
)

#: An image whose tones (0.5th to 99.5th percentile of luminance) span fewer grey levels than
#: this is levelled. Of 3,000 LFW, UTKFace and scene photos, 0.1% span fewer than 96.
NARROW_RANGE = 96
#: ... and so is one whose median luminance, after stretching, is below DARK_MEDIAN (a face in
#: the dark beside a lamp; 4.6% of those photos have medians under 30, mostly dark studio
#: backgrounds). A bright median is no sign of a hidden face: it is a white backdrop.
DARK_MEDIAN = 24
#: A face only the levelled copy shows must score at least this (MTCNN's last stage). Levelling
#: amplifies noise: of 3,000 LFW, UTKFace and scene photos, 4 had such faces, all on cheeks,
#: hair or background, scoring 0.73-0.84; the astronaut levelled from 3-7% of its tones or from
#: a washed-out or lamp-lit copy scores 0.97-1.0.
LEVELLED_MIN_SCORE = 0.9
#: ... and one found only in a levelled shadow this much: levelled shadows amplify JPEG blocks
#: and the folds of dark clothes (a shirt fold scored 0.93 in one of 610 dataset photos; the
#: astronaut's head shaded to 3-8% scores 0.99-1.0).
SHADOW_MIN_SCORE = 0.95
#: The levelled copy's median luminance.
TARGET_MEDIAN = 110
#: Levels are read from a copy at most this long (the percentiles barely move).
PROBE_SIDE = 256
#: The end of the detector name of a face found on the levelled copy.
LEVELLED_TAG = "@levelled"
#: ... and of a face found in a levelled shadow.
SHADOW_TAG = "@shadow"
#: Pixels at or below this luminance are shadow. The astronaut's head shaded to 9% of its tones
#: (its face's 99.5th percentile at 20) is found as it is; shaded to 8% (18) it is not. A
#: shadowed face must also have its median luminance at or below this.
SHADOW_LEVEL = 32
#: A shadow whose tones (0.5th to 99.5th percentile) span fewer levels than this is flat black
#: (clipped, or a plain dark surface): nothing to level.
SHADOW_MIN_SPAN = 6
#: At most this many shadows (the largest) are searched in one photo.
MAX_SHADOWS = 4
#: Shadows larger than this in all (pixels) are searched on a copy scaled down to it: a photo
#: whose dark suits or background make most of it shadow would otherwise cost one more whole
#: search (+456 ms on a 2000x1428 press photo with 4 faces, 2.7 MP of shadow). Faces down to
#: min_face_size * sqrt(shadow area / SHADOW_MAX_PIXELS) px are found there (43 px on that photo).
SHADOW_MAX_PIXELS = 600_000
#: Shadows are found on a copy at most this long.
SHADOW_PROBE_SIDE = 512
#: The region a shadowed face is redrawn in: its box grown by this share of its size on each
#: side (the crop, paste and blend all lie inside it).
SHADOW_REGION_GROWTH = 1.0

#: A pixel is faded when no square of min_face_size around it (on the probe) spans more than
#: this many levels of luminance, nor fewer than FADED_MIN_SPAN (flat colour: nothing to level)
#: and it is not shadow (the shadow search levels those). A face under 92% white spans 6-20
#: levels in such a window; the same face in the photo 60-200.
FADED_SPAN = 48
FADED_MIN_SPAN = 6
#: A face found only in a levelled faded region must have the tones of its box's middle (0.5th
#: to 99.5th percentile of luminance, FADED_INNER off each side) span at most this many levels:
#: a face the overlay hides. Faces the photo shows as they are span 61 levels or more there
#: (1,344 faces MTCNN finds on 1,209 LFW, UTKFace and scene photos; over the whole box, 92 or
#: more, but a box's corners reach past a fade's feathered edge).
FADED_FACE_SPAN = 48
#: The middle of a face's box whose tones are read: this share of its size off each side.
FADED_INNER = 0.15
#: A face found only in a levelled faded region must score at least this: levelled wallpaper and JPEG blocks read as faces at up to
#: 0.975 (2 of 610 dataset photos); faces under 80-92% white, grey or blue score 0.99-1.0.
FADED_MIN_SCORE = 0.98
#: At most this many faded regions (the largest) are searched in one photo.
MAX_FADED = 4
#: Faded regions are taken by their local mean tone in bands this wide, every half band.
FADED_BAND = 64
#: Two bands' regions overlapping by more than this (IoU) are one region.
FADED_SAME_REGION = 0.6
#: A faded region, or a face found in one, with this share of its box inside a face the photo
#: shows is part of that face (levelled, a cheek read as a face at 0.99 in one of 1,028 photos).
FADED_KNOWN_SHARE = 0.5
#: Faded regions are searched at half their size (faces of 40 px and larger: the pixels a
#: whole search of them would take cost 23-145 ms on the scenes' 375x500-2000x1428 photos),
#: and smaller where they would be over FADED_MAX_PIXELS in all after that.
FADED_SCALE = 0.5
FADED_MAX_PIXELS = 150_000
#: Faded regions are found on a copy at most this long (as shadows: on a copy 256 long, the
#: astronaut's head under a 90% pale blue overlay scored 0.95 in its levelled region, not 0.996).
FADED_PROBE_SIDE = SHADOW_PROBE_SIDE
#: The end of the detector name of a face found in a levelled faded region.
FADED_TAG = "@faded"
#: An attacker's linear stretch of a hidden face (:func:`stretched_linearly`): its percentiles
#: come from the face's box grown by this share of its size each way ...
STRETCH_CONTEXT = 0.25
#: ... and it is applied over the box grown by this much, beyond every oracle's crop of the face.
STRETCH_REACH = 0.75

#: Luma weights (ITU-R BT.601, as OpenCV's RGB2GRAY).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, ends excluded


@dataclass(frozen=True)
class Levels:
    """A tone curve (a lookup table) that levels one image, or one region of it, and its inverse."""

    table: np.ndarray  # uint8 (256,) for every channel, or (256, 3) one per channel; non-decreasing
    region: Box | None = None
    #: when set, only the region's pixels whose luminance is below this are levelled: a bright
    #: face beside a shadowed one keeps its own tones (levelled, it would be clipped white)
    below: int | None = None
    #: ... and, when set, at or above this (a faded face's tones are a band in the middle)
    above: int | None = None
    #: and never inside these boxes (other faces, redrawn in their own tones)
    exclude: tuple[Box, ...] = ()
    #: except inside these (the hidden faces themselves: one half drawn in the photo's own tones
    #: and the other brought back through the curve would leave a block in the face)
    keep: tuple[Box, ...] = ()

    def _levelled_where(self, original: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
        """The region's slices, and (h, w, 1) bool inside it: the pixels of ``original`` this
        curve levels."""
        x1, y1, x2, y2 = self.region if self.region is not None else (0, 0, original.shape[1], original.shape[0])
        inside = (slice(y1, y2), slice(x1, x2))
        band = np.ones((y2 - y1, x2 - x1, 1), bool)
        if self.below is not None or self.above is not None:
            tones = luma(original[inside])[..., None]
            if self.below is not None:
                band &= tones < self.below
            if self.above is not None:
                band &= tones >= self.above
        where = band.copy()
        for boxes, value in ((self.exclude, False), (self.keep, True)):
            for bx1, by1, bx2, by2 in boxes:
                part = (slice(max(0, by1 - y1), max(0, by2 - y1)), slice(max(0, bx1 - x1), max(0, bx2 - x1)))
                where[part] = band[part] if value else False
        return inside, where

    def _whole(self) -> bool:
        return self.region is None and self.below is None and self.above is None and not self.exclude

    def apply(self, image: np.ndarray) -> np.ndarray:
        if self._whole():
            return _lut(image, self.table)
        inside, where = self._levelled_where(image)
        out = image.copy()
        part = np.ascontiguousarray(image[inside])
        out[inside] = np.where(where, _lut(part, self.table), part)
        return out

    def restore(self, original: np.ndarray, levelled: np.ndarray, processed: np.ndarray) -> np.ndarray:
        """``processed`` (``levelled`` with some regions redrawn) back in ``original``'s tones:
        every pixel the processing left alone is the original's exactly, the redrawn ones go
        through the inverse curve."""
        tables = self.table.reshape(256, -1)
        inverse = np.stack([_inverse(tables[:, c]) for c in range(tables.shape[1])], axis=1).reshape(self.table.shape)
        if self._whole():
            back = _lut(processed, inverse)
        else:
            # a redrawn pixel where the photo was not levelled was drawn in the photo's own tones
            inside, where = self._levelled_where(original)
            back = processed.copy()
            part = np.ascontiguousarray(processed[inside])
            back[inside] = np.where(where, _lut(part, inverse), part)
        changed = (processed != levelled).any(axis=2, keepdims=True)
        return np.where(changed, back, original)


def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``image`` through ``table``: one (256,) table for every channel, or (256, 3) one each."""
    if table.ndim == 1:
        return cv2.LUT(np.ascontiguousarray(image), table)
    return cv2.LUT(np.ascontiguousarray(image), np.ascontiguousarray(table.reshape(1, 256, 3)))


def _inverse(table: np.ndarray) -> np.ndarray:
    """The (256,) table that undoes the non-decreasing ``table``: for each level, the darkest
    original level that levels to at least it; but for 0, the brightest that levels to 0 (the
    curve's clipped ends, every level past the photo's brightest levelled to 255, every one
    below its darkest to 0, map back to the photo's own range)."""
    levels = np.arange(256)
    first = np.searchsorted(table, levels, side="left")
    last = np.searchsorted(table, levels, side="right") - 1
    return np.clip(np.where(levels == 0, last, first), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ToneMap:
    """Levels applied one after the other (regions do not overlap), and undone in reverse."""

    steps: tuple[Levels, ...]
    #: the boxes of the faces the regional levels show (none: the whole photo is levelled)
    hidden: tuple[Box, ...] = ()

    def apply(self, image: np.ndarray) -> np.ndarray:
        for levels in self.steps:
            image = levels.apply(image)
        return image

    def restore(self, original: np.ndarray, levelled: np.ndarray, processed: np.ndarray) -> np.ndarray:
        """``processed`` (``levelled``, this map's copy of ``original``, with some regions
        redrawn) back in ``original``'s tones; every pixel not redrawn is the original's exactly."""
        stages = [original]
        for levels in self.steps[:-1]:
            stages.append(levels.apply(stages[-1]))
        stages.append(levelled)
        for levels, before, after in zip(
            reversed(self.steps), reversed(stages[:-1]), reversed(stages[1:]), strict=True
        ):
            processed = levels.restore(before, after, processed)
        return processed


def stretched_linearly(image: np.ndarray, faces: tuple[Box, ...] = ()) -> np.ndarray:
    """``image`` as an attacker levels a hidden face their own way: around each of ``faces``
    (the box grown by STRETCH_REACH each way) every channel stretched by one straight line, the
    0.5th and 99.5th percentiles of the box grown by STRETCH_CONTEXT going to 0 and 255; the
    whole image from its own percentiles when there are no ``faces``.

    The engine judges a hidden face's drawing in its own levels (per-channel curves that bring
    the median to mid-grey), but dlib's similarity to the original moves with the curve: on 40
    LFW faces under a 88% grey overlay, such a stretch of the returned photo moved it by a median
    +0.022 over the engine's levels (up to +0.08), and 4 drawings verified in the engine's levels
    were matched to the clear photo."""
    out = image.copy()
    height, width = image.shape[:2]
    boxes = faces or ((0, 0, width, height),)
    for box in boxes:
        cx1, cy1, cx2, cy2 = _clipped(_grown(box, STRETCH_CONTEXT if faces else 0.0), image.shape)
        x1, y1, x2, y2 = _clipped(_grown(box, STRETCH_REACH if faces else 0.0), image.shape)
        if cx2 <= cx1 or cy2 <= cy1 or x2 <= x1 or y2 <= y1:
            continue
        lo, hi = np.percentile(image[cy1:cy2, cx1:cx2], [0.5, 99.5])
        scale = 255.0 / max(float(hi - lo), 1.0)
        part = (image[y1:y2, x1:x2].astype(np.float32) - float(lo)) * scale
        out[y1:y2, x1:x2] = np.clip(np.round(part), 0, 255).astype(np.uint8)
    return out


def _curve(luma: np.ndarray) -> np.ndarray:
    """The table stretching ``luma``'s 0.5-99.5 percentiles to the full range, its median to
    TARGET_MEDIAN."""
    lo, hi = np.percentile(luma, [0.5, 99.5])
    span = max(float(hi - lo), 4.0)
    median = min(max((float(np.median(luma)) - lo) / span * 255.0, 1.0), 254.0)
    gamma = np.log(TARGET_MEDIAN / 255.0) / np.log(median / 255.0)
    curve = np.clip((np.arange(256, dtype=np.float32) - lo) / span, 0.0, 1.0) ** gamma
    return np.round(curve * 255.0).astype(np.uint8)


def luma(pixels: np.ndarray) -> np.ndarray:
    """The luma of RGB ``pixels`` (any shape ending in 3), float32."""
    return pixels.astype(np.float32) @ LUMA


def central_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The central ``side`` x ``side`` px of ``image`` (all of it along a shorter side): what the
    cheap gates of the searches for prints, noise and line drawings look at."""
    h, w = image.shape[:2]
    half = side // 2
    return image[max(0, h // 2 - half): h // 2 + half, max(0, w // 2 - half): w // 2 + half]


def _probe(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """A copy at most ``side`` long (area-averaged), and its scale."""
    longest = max(image.shape[:2])
    if longest <= side:
        return image, 1.0
    scale = side / longest
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _join_overlapping(boxes: list[Box]) -> list[Box]:
    """``boxes`` with every overlapping group replaced by its bounding box."""
    boxes = list(boxes)
    joined = True
    while joined:
        joined = False
        for i, j in combinations(range(len(boxes)), 2):
            a, b = boxes[i], boxes[j]
            if _overlap(a, b):
                boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                del boxes[j]
                joined = True
                break
    return boxes


def shadows(image: np.ndarray, min_side: int) -> list[tuple[Box, Levels]]:
    """The dark, textured regions of ``image`` (luminance at most SHADOW_LEVEL, their tones
    spanning at least SHADOW_MIN_SPAN) at least ``min_side`` pixels both ways: the largest
    MAX_SHADOWS, overlapping ones joined, each with the curve that levels its dark tones."""
    probe, scale = _probe(image, SHADOW_PROBE_SIDE)
    grey = luma(probe)
    dark = (grey <= SHADOW_LEVEL).astype(np.uint8)
    if dark.sum() * scale**-2 < min_side * min_side:
        return []
    dark = cv2.morphologyEx(dark, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    boxes: list[Box] = []
    for index in sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA]):
        x, y, w, h = (int(v) for v in stats[index, :4])
        if min(w, h) / scale < min_side:
            continue
        lo, hi = np.percentile(grey[labels == index], [0.5, 99.5])
        if hi - lo < SHADOW_MIN_SPAN:
            continue
        pad_x, pad_y = max(2, w // 8), max(2, h // 8)
        boxes.append((max(0, x - pad_x), max(0, y - pad_y), x + w + pad_x, y + h + pad_y))
        if len(boxes) == MAX_SHADOWS:
            break
    height, width = image.shape[:2]
    found: list[tuple[Box, Levels]] = []
    for x1, y1, x2, y2 in _join_overlapping(boxes):
        region = grey[y1:y2, x1:x2]
        box = (
            int(x1 / scale),
            int(y1 / scale),
            min(width, int(np.ceil(x2 / scale))),
            min(height, int(np.ceil(y2 / scale))),
        )
        found.append((box, Levels(_curve(region[region <= SHADOW_LEVEL]), box)))
    return found


def _is_dark(image: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """Whether the face in ``box`` is in shadow (median luminance at most SHADOW_LEVEL)."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (
        max(0, int(box[0])),
        max(0, int(box[1])),
        min(width, int(box[2])),
        min(height, int(box[3])),
    )
    return x2 > x1 and y2 > y1 and float(np.median(luma(image[y1:y2, x1:x2]))) <= SHADOW_LEVEL


def _clipped(box: tuple[float, float, float, float], shape: tuple[int, ...]) -> Box:
    """The whole pixels ``box`` touches, inside an image of ``shape``."""
    x1, y1, x2, y2 = box
    return max(0, int(x1)), max(0, int(y1)), min(shape[1], int(np.ceil(x2))), min(shape[0], int(np.ceil(y2)))


def shadow_levels(image: np.ndarray, face: tuple[float, float, float, float]) -> Levels:
    """The curve that shows a face found in a shadow (from the tones of its box), applied to
    the region the engine redraws it in (its box grown by SHADOW_REGION_GROWTH each way)."""
    x1, y1, x2, y2 = face
    ix1, iy1, ix2, iy2 = _clipped(face, image.shape)
    grow_x, grow_y = (x2 - x1) * SHADOW_REGION_GROWTH, (y2 - y1) * SHADOW_REGION_GROWTH
    region = _clipped((x1 - grow_x, y1 - grow_y, x2 + grow_x, y2 + grow_y), image.shape)
    table = _curve(luma(image[iy1:iy2, ix1:ix2]).ravel())
    # levelled: the shadow's tones, and up to twice its brightest (the curve is white from there
    # on); brighter pixels keep their own tones
    saturated = int(np.argmax(table == 255)) if (table == 255).any() else 255
    return Levels(table, region, below=min(255, 2 * saturated + 8))


def shadow_tone_map(
    image: np.ndarray,
    faces: list[tuple[float, float, float, float]],
    others: list[tuple[float, float, float, float]] | tuple = (),
) -> ToneMap:
    """Each shadowed face's levels (:func:`shadow_levels`) in one map (see :func:`regional_tone_map`)."""
    return regional_tone_map([shadow_levels(image, face) for face in faces], others, faces)


def regional_tone_map(
    levels: list[Levels],
    others: list[tuple[float, float, float, float]] | tuple = (),
    hidden: list[tuple[float, float, float, float]] | tuple = (),
) -> ToneMap:
    """Regional ``levels`` (one per hidden face) in one map; overlapping regions are joined
    under the first face's curve. The photo's ``others`` faces (their boxes grown by half
    their size each way, where they are redrawn) are left in their own tones, but for the
    ``hidden`` faces' boxes (grown by a quarter), which are levelled wherever their curve reaches."""
    exclude = tuple(_grown(box, 0.5) for box in others)
    keep = tuple(_grown(box, 0.25) for box in hidden) if exclude else ()
    regions = [level.region for level in levels if level.region is not None]
    return ToneMap(tuple(
        replace(next(level for level in levels if _overlap(level.region, region)), region=region, exclude=exclude,
                keep=keep)
        for region in _join_overlapping(regions)
    ), hidden=tuple(_grown(box, 0.0) for box in hidden))


def _grown(box: tuple[float, float, float, float], share: float) -> Box:
    """The whole pixels of ``box`` grown by ``share`` of its size on each side."""
    x1, y1, x2, y2 = box
    grow_x, grow_y = (x2 - x1) * share, (y2 - y1) * share
    return int(x1 - grow_x), int(y1 - grow_y), int(np.ceil(x2 + grow_x)), int(np.ceil(y2 + grow_y))


def hidden_faces_tone_map(image: np.ndarray, detections: list[Detection]) -> ToneMap | None:
    """The map that shows the faces of ``detections`` whose tones hide them, each by its own
    levels, the photo's other faces left in their own tones; None when there are none.

    Hidden are the faces found only in a levelled shadow or faded region, and any other face
    whose tones span FADED_FACE_SPAN levels or fewer (another detector's, such as dlib's HOG,
    which reads gradients whatever their contrast): drawn in the photo's own tones, such a
    face would be judged against a reference its tones hide, and pasted at full contrast into
    its fade or shadow. Those in shadow are levelled as shadows, the others as faded."""
    hidden: list[tuple[Detection, bool]] = []
    for d in detections:
        if SHADOW_TAG in d.detector or FADED_TAG in d.detector:
            hidden.append((d, SHADOW_TAG in d.detector))
        elif (span := _tone_span(image, d.box)) is not None and span[1] - span[0] <= FADED_FACE_SPAN:
            hidden.append((d, _is_dark(image, d.box)))
    if not hidden:
        return None
    hidden_boxes = [d.box for d, _ in hidden]
    others = [d.box for d in detections if d.box not in hidden_boxes]
    return regional_tone_map(
        [shadow_levels(image, d.box) if dark else faded_levels(image, d.box) for d, dark in hidden], others, hidden_boxes
    )


def _channel_curves(pixels: np.ndarray) -> np.ndarray:
    """(256, 3): each channel of the (n, 3) ``pixels`` stretched by its own curve (:func:`_curve`)."""
    return np.stack([_curve(pixels[:, channel].astype(np.float32)) for channel in range(3)], axis=1)


def faded_regions(
    image: np.ndarray, min_side: int, known: list[tuple[float, float, float, float]] | tuple = ()
) -> list[tuple[Box, Levels]]:
    """The faded regions of ``image`` (see FADED_SPAN) at least ``min_side`` pixels both ways,
    each with per-channel curves that level it: the largest MAX_FADED, but none lying mostly
    inside a ``known`` face's box (a found face's smooth cheeks are no overlay). A faded region is
    taken by its tones, in bands FADED_BAND wide (every half band): an overlay's face and the
    smooth curtain or sky beside it are faded alike, and one curve for both levels the face
    too little."""
    probe, scale = _probe(image, FADED_PROBE_SIDE)
    grey = np.clip(luma(probe) + 0.5, 0, 255).astype(np.uint8)
    side = max(5, round(min_side * scale)) | 1
    window = np.ones((side, side), np.uint8)
    spread = cv2.dilate(grey, window).astype(np.int16) - cv2.erode(grey, window)
    faded = (spread <= FADED_SPAN) & (spread >= FADED_MIN_SPAN) & (grey > SHADOW_LEVEL)
    if faded.sum() * scale**-2 < min_side * min_side:
        return []
    local = cv2.blur(grey, (side, side))
    candidates: list[tuple[int, Box, np.ndarray, int]] = []  # area, padded box, labels, label
    for start in range(SHADOW_LEVEL, 256 - FADED_BAND // 2, FADED_BAND // 2):
        band = (faded & (local >= start) & (local < start + FADED_BAND)).astype(np.uint8)
        band = cv2.morphologyEx(band, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        count, labels, stats, _ = cv2.connectedComponentsWithStats(band, connectivity=8)
        for index in range(1, count):
            x, y, w, h = (int(v) for v in stats[index, :4])
            if min(w, h) / scale < min_side or _inside_known((x / scale, y / scale, (x + w) / scale, (y + h) / scale), known):
                continue
            # a face on the region's edge needs the photo around it to be found
            pad_x, pad_y = max(side, w // 4), max(side, h // 4)
            box = (max(0, x - pad_x), max(0, y - pad_y), x + w + pad_x, y + h + pad_y)
            candidates.append((int(stats[index, cv2.CC_STAT_AREA]), box, labels, index))
    height, width = image.shape[:2]
    found: list[tuple[Box, Levels]] = []
    chosen: list[Box] = []
    for _, (x1, y1, x2, y2), labels, index in sorted(candidates, key=lambda c: -c[0]):
        # the same region seen from two overlapping bands is searched once
        if any(box_iou((x1, y1, x2, y2), other) > FADED_SAME_REGION for other in chosen):
            continue
        chosen.append((x1, y1, x2, y2))
        box = (
            int(x1 / scale),
            int(y1 / scale),
            min(width, int(np.ceil(x2 / scale))),
            min(height, int(np.ceil(y2 / scale))),
        )
        inside = labels[y1:y2, x1:x2] == index
        found.append((box, Levels(_channel_curves(probe[y1:y2, x1:x2][inside]), box)))
        if len(found) == MAX_FADED:
            break
    return found


def _inside_known(box: tuple[float, float, float, float], known: list[tuple[float, float, float, float]] | tuple) -> bool:
    """Whether FADED_KNOWN_SHARE of ``box`` or more lies inside one of the ``known`` boxes."""
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-6)
    return any(box_intersection(box, other) >= FADED_KNOWN_SHARE * area for other in known)


def _tone_span(image: np.ndarray, box: tuple[float, float, float, float]) -> tuple[float, float, float] | None:
    """The 0.5th and 99.5th percentiles and the median of the luminance inside ``box``'s
    middle (FADED_INNER of its size off each side: the face, not the corners a fade or the
    photo around it may reach), or None when that holds no pixel of ``image``."""
    x1, y1, x2, y2 = box
    trim_x, trim_y = (x2 - x1) * FADED_INNER, (y2 - y1) * FADED_INNER
    ix1, iy1, ix2, iy2 = _clipped((x1 + trim_x, y1 + trim_y, x2 - trim_x, y2 - trim_y), image.shape)
    if ix2 <= ix1 or iy2 <= iy1:
        return None
    tones = luma(image[iy1:iy2, ix1:ix2])
    lo, hi, median = np.percentile(tones, [0.5, 99.5, 50])
    return float(lo), float(hi), float(median)


def _is_faded(image: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """Whether the face in ``box`` is faded: its tones span at most FADED_FACE_SPAN levels and
    it is not in shadow."""
    span = _tone_span(image, box)
    return span is not None and span[1] - span[0] <= FADED_FACE_SPAN and span[2] > SHADOW_LEVEL


def faded_levels(image: np.ndarray, face: tuple[float, float, float, float]) -> Levels:
    """The per-channel curves that show a face found in a faded region (from the tones of its
    box), applied to the region the engine redraws it in (its box grown by
    SHADOW_REGION_GROWTH each way), to the pixels whose luminance lies within the face's own
    range widened by that range each way; others (the photo beside an overlay) keep their tones."""
    x1, y1, x2, y2 = face
    ix1, iy1, ix2, iy2 = _clipped(face, image.shape)
    grow_x, grow_y = (x2 - x1) * SHADOW_REGION_GROWTH, (y2 - y1) * SHADOW_REGION_GROWTH
    region = _clipped((x1 - grow_x, y1 - grow_y, x2 + grow_x, y2 + grow_y), image.shape)
    table = _channel_curves(image[iy1:iy2, ix1:ix2].reshape(-1, 3))
    span = _tone_span(image, face)
    lo, hi, _ = span if span is not None else (0.0, 255.0, 0.0)
    width = max(hi - lo, float(FADED_MIN_SPAN))
    return Levels(table, region, below=min(256, int(np.ceil(hi + width)) + 1), above=max(0, int(lo - width)))


def levels_of(image: np.ndarray) -> Levels | None:
    """The curve that stretches the RGB uint8 ``image``'s tones to the full range and brings
    its median to mid-grey, or None when its tones need no levelling (they span NARROW_RANGE
    levels or more and the stretched median is not dark)."""
    grey = luma(_probe(image, PROBE_SIDE)[0]).ravel()
    lo, hi = np.percentile(grey, [0.5, 99.5])
    span = max(float(hi - lo), 4.0)
    median = (float(np.median(grey)) - lo) / span * 255.0
    if hi - lo >= NARROW_RANGE and median >= DARK_MEDIAN:
        return None
    return Levels(_curve(grey))


def levelled(image: np.ndarray) -> np.ndarray | None:
    """``image`` levelled (see :func:`levels_of`), or None when its tones need no levelling."""
    levels = levels_of(image)
    return None if levels is None else levels.apply(image)


class LevellingDetector(FaceDetector):
    """``detector``'s faces, plus those it finds on the levelled copy of an image whose tones
    are narrow, dark or washed out (see :func:`levelled`), or else in its levelled shadows (see
    :func:`shadows`) and faded regions (see :func:`faded_regions`). Those regions are found on
    a copy at most SHADOW_PROBE_SIDE long; each one found costs an upright search of it."""

    def __init__(
        self,
        detector: FaceDetector,
        iou: float = 0.3,
        min_face_size: int = 20,
        shadow_detector: FaceDetector | None = None,
    ) -> None:
        super().__init__()
        self.detector = detector
        #: shadows and faded regions are searched upright only: levelled, JPEG blocks and hair
        #: in shadow read as faces turned sideways (4 of 310 dataset photos at MTCNN scores
        #: 0.9-0.98, none upright)
        self.shadow_detector = shadow_detector or detector
        self.iou = iou
        self.min_face_size = min_face_size
        self.name = detector.name

    def _load(self) -> None:
        self.detector.load()
        self.shadow_detector.load()

    def _detect(self, image: np.ndarray) -> list[Detection]:
        found = self.detector.detect(image)
        copy = levelled(image)
        if copy is not None:
            candidates = [(d, LEVELLED_TAG) for d in self.detector.detect(copy)]
        else:
            candidates = [
                (d, SHADOW_TAG)
                for d in self._in_regions(image, shadows(image, self.min_face_size), _is_dark, SHADOW_MAX_PIXELS)
            ]
            known = [d.box for d in found]
            candidates += [
                (d, FADED_TAG)
                for d in self._in_regions(
                    image, faded_regions(image, self.min_face_size, known), _is_faded, FADED_MAX_PIXELS, FADED_SCALE
                )
                if not _inside_known(d.box, known)
            ]
        # only faces the photo itself does not show: a face found in both keeps the photo's
        # detection (and the photo is then worked on as it is)
        extra: list[Detection] = []
        for d, tag in candidates:
            if d.score >= _MIN_SCORES[tag] and all(box_iou(d.box, other.box) < self.iou for other in found + extra):
                extra.append(Detection(d.box, d.score, d.landmarks, f"{d.detector}{tag}"))
        return suppress_overlaps(found + extra, self.iou) if extra else found

    def _in_regions(
        self,
        image: np.ndarray,
        regions: list[tuple[Box, Levels]],
        hidden: Callable[[np.ndarray, tuple[float, float, float, float]], bool],
        max_pixels: int,
        max_scale: float = 1.0,
    ) -> list[Detection]:
        """Faces the upright detector finds in ``image``'s levelled ``regions`` (shadows or
        faded regions) that are ``hidden`` there, in the image's coordinates; the regions are
        searched at ``max_scale``, or smaller where they would be over ``max_pixels`` in all."""
        area = sum((x2 - x1) * (y2 - y1) for (x1, y1, x2, y2), _ in regions)
        scale = min(max_scale, float(np.sqrt(max_pixels / max(area, 1))))
        faces = []
        for (x1, y1, x2, y2), levels in regions:
            crop = _lut(image[y1:y2, x1:x2], levels.table)
            if scale < 1.0:
                size = (max(1, round((x2 - x1) * scale)), max(1, round((y2 - y1) * scale)))
                crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
            for d in self.shadow_detector.detect(crop):
                box = tuple(v / scale for v in d.box)
                if hidden(image[y1:y2, x1:x2], box):
                    faces.append(Detection(
                        (box[0] + x1, box[1] + y1, box[2] + x1, box[3] + y1), d.score,
                        d.landmarks / scale + np.array([x1, y1], dtype=np.float64), d.detector,
                    ))
        return faces


_MIN_SCORES = {LEVELLED_TAG: LEVELLED_MIN_SCORE, SHADOW_TAG: SHADOW_MIN_SCORE, FADED_TAG: FADED_MIN_SCORE}
