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
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations

import cv2
import numpy as np

from idmrag_plugin.engine.detect import Detection, FaceDetector, box_iou, suppress_overlaps

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

#: Luma weights (ITU-R BT.601, as OpenCV's RGB2GRAY).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, ends excluded


@dataclass(frozen=True)
class Levels:
    """A tone curve (a lookup table) that levels one image, or one region of it, and its inverse."""

    table: np.ndarray  # uint8 (256,), non-decreasing
    region: Box | None = None
    #: when set, only the region's pixels whose luminance is below this are levelled: a bright
    #: face beside a shadowed one keeps its own tones (levelled, it would be clipped white)
    below: int | None = None
    #: and never inside these boxes (other faces, redrawn in their own tones)
    exclude: tuple[Box, ...] = ()

    def _levelled_where(self, original: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
        """The region's slices, and (h, w, 1) bool inside it: the pixels of ``original`` this
        curve levels."""
        x1, y1, x2, y2 = self.region if self.region is not None else (0, 0, original.shape[1], original.shape[0])
        inside = (slice(y1, y2), slice(x1, x2))
        if self.below is None:
            where = np.ones((y2 - y1, x2 - x1, 1), bool)
        else:
            where = (luma(original[inside]) < self.below)[..., None]
        for ex1, ey1, ex2, ey2 in self.exclude:
            where[max(0, ey1 - y1) : max(0, ey2 - y1), max(0, ex1 - x1) : max(0, ex2 - x1)] = False
        return inside, where

    def _whole(self) -> bool:
        return self.region is None and self.below is None and not self.exclude

    def apply(self, image: np.ndarray) -> np.ndarray:
        if self._whole():
            return cv2.LUT(np.ascontiguousarray(image), self.table)
        inside, where = self._levelled_where(image)
        out = image.copy()
        part = np.ascontiguousarray(image[inside])
        out[inside] = np.where(where, cv2.LUT(part, self.table), part)
        return out

    def restore(self, original: np.ndarray, levelled: np.ndarray, processed: np.ndarray) -> np.ndarray:
        """``processed`` (``levelled`` with some regions redrawn) back in ``original``'s tones:
        every pixel the processing left alone is the original's exactly, the redrawn ones go
        through the inverse curve."""
        # the darkest original level that levels to at least v; but for 0, the brightest that
        # levels to 0: the curve's clipped ends (every level past the photo's brightest levels
        # to 255, every one below its darkest to 0) map back to the photo's own range
        levels = np.arange(256)
        first = np.searchsorted(self.table, levels, side="left")
        last = np.searchsorted(self.table, levels, side="right") - 1
        inverse = np.clip(np.where(levels == 0, last, first), 0, 255).astype(np.uint8)
        if self._whole():
            back = cv2.LUT(np.ascontiguousarray(processed), inverse)
        else:
            # a redrawn pixel where the photo was not levelled was drawn in the photo's own tones
            inside, where = self._levelled_where(original)
            back = processed.copy()
            part = np.ascontiguousarray(processed[inside])
            back[inside] = np.where(where, cv2.LUT(part, inverse), part)
        changed = (processed != levelled).any(axis=2, keepdims=True)
        return np.where(changed, back, original)


@dataclass(frozen=True)
class ToneMap:
    """Levels applied one after the other (regions do not overlap), and undone in reverse."""

    steps: tuple[Levels, ...]

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
    """Each shadowed face's levels (:func:`shadow_levels`); overlapping regions are joined
    under the first face's curve. The photo's ``others`` faces (their boxes grown by half
    their size each way, where they are redrawn) are left in their own tones."""
    exclude = tuple(
        (int(x1 - (x2 - x1) / 2), int(y1 - (y2 - y1) / 2), int(np.ceil(x2 + (x2 - x1) / 2)), int(np.ceil(y2 + (y2 - y1) / 2)))
        for x1, y1, x2, y2 in others
    )
    levels = [shadow_levels(image, face) for face in faces]
    regions = [level.region for level in levels if level.region is not None]
    return ToneMap(tuple(
        replace(next(level for level in levels if _overlap(level.region, region)), region=region, exclude=exclude)
        for region in _join_overlapping(regions)
    ))


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
    :func:`shadows`). A photo with neither costs a percentile computation on a small copy."""

    def __init__(
        self,
        detector: FaceDetector,
        iou: float = 0.3,
        min_face_size: int = 20,
        shadow_detector: FaceDetector | None = None,
    ) -> None:
        super().__init__()
        self.detector = detector
        #: shadows are searched upright only: levelled, JPEG blocks and hair in shadow read as
        #: faces turned sideways (4 of 310 dataset photos at MTCNN scores 0.9-0.98, none upright)
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
            candidates = [(d, SHADOW_TAG) for d in self._in_shadows(image)]
        # only faces the photo itself does not show: a face found in both keeps the photo's
        # detection (and the photo is then worked on as it is)
        extra: list[Detection] = []
        for d, tag in candidates:
            if d.score >= (SHADOW_MIN_SCORE if tag == SHADOW_TAG else LEVELLED_MIN_SCORE) and all(
                box_iou(d.box, other.box) < self.iou for other in found + extra
            ):
                extra.append(Detection(d.box, d.score, d.landmarks, f"{d.detector}{tag}"))
        return suppress_overlaps(found + extra, self.iou) if extra else found

    def _in_shadows(self, image: np.ndarray) -> list[Detection]:
        """Dark faces the upright detector finds in ``image``'s levelled shadows, in the
        image's coordinates; shadows over SHADOW_MAX_PIXELS in all are searched scaled down."""
        found_shadows = shadows(image, self.min_face_size)
        area = sum((x2 - x1) * (y2 - y1) for (x1, y1, x2, y2), _ in found_shadows)
        scale = min(1.0, float(np.sqrt(SHADOW_MAX_PIXELS / max(area, 1))))
        faces = []
        for (x1, y1, x2, y2), levels in found_shadows:
            crop = cv2.LUT(np.ascontiguousarray(image[y1:y2, x1:x2]), levels.table)
            if scale < 1.0:
                size = (max(1, round((x2 - x1) * scale)), max(1, round((y2 - y1) * scale)))
                crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
            for d in self.shadow_detector.detect(crop):
                box = tuple(v / scale for v in d.box)
                if _is_dark(image[y1:y2, x1:x2], box):
                    faces.append(Detection(
                        (box[0] + x1, box[1] + y1, box[2] + x1, box[3] + y1), d.score,
                        d.landmarks / scale + np.array([x1, y1], dtype=np.float64), d.detector,
                    ))
        return faces
