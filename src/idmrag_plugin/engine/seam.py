"""Faces across a 360-degree panorama's seam.

An equirectangular panorama (twice as wide as it is high) wraps around: its viewer shows the
left edge joined to the right one. A face standing across that seam is two pieces in the
file, one at each edge; the search finds the larger piece, cut by the frame, and often not
the smaller one, and a drawing over the larger piece leaves the rest of the face as it was.
Joined again, as any viewer shows it, the face is two halves of different drawings (or a
drawing beside a grey fill), and a piece the search misses stays the person's: of 30 LFW
photos rolled so that the face stands across their edges, 30% of its width on one side,
1 was matched to the person once rolled back (2 of 30 at 70%; `/work/scratch/s39/roll_probe.py`).

So a panorama's seam is searched too: the strip of its right and left edges joined (a quarter
of its width from each) is searched upright, and a face standing across the join with a
share of its width on each side is a face of its own (tagged SEAM_TAG, its box in the
photo's coordinates reaching past the right edge). The engine then works on the photo rolled
(:class:`Roll`) so that the seam face is whole and the new edges cut no face, and rolls the
result back.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from idmrag_plugin.engine.detect import (
    Detection,
    FaceDetector,
    box_iou,
    centre_inside,
    scaled_detection,
)

#: A photo this many times as wide as it is high (within PANORAMA_TOLERANCE of it) is taken
#: for an equirectangular panorama, whose left and right edges meet.
PANORAMA_ASPECT = 2.0
PANORAMA_TOLERANCE = 0.02
#: The strip searched: this share of the panorama's width from each edge, joined.
SEAM_STRIP = 0.25
#: The strip is searched at most this large (scaled down beyond it).
SEAM_MAX_PIXELS = 1_000_000
#: A face across the join counts when MTCNN scores it this high ...
SEAM_MIN_SCORE = 0.95
#: ... and this share of its box's width lies on each side of the join (a face beside the
#: join, touching it, is one the photo shows whole or the border search finds cut). Of 350
#: pairs of LFW and UTKFace photos side by side and 10 scenes cropped to 2:1, 2 had a face
#: across the join at 0.25 (a face cut by one photo's edge, found with a strip of the other
#: photo's edge), 4 at 0.15.
SEAM_MIN_SHARE = 0.25
SEAM_TAG = "@seam"
#: Columns kept clear of the new edges around every face when the photo is rolled, as a share
#: of its box's width on each side (the aligned crops reach past the box).
ROLL_CLEARANCE = 0.5


def is_panorama(shape: tuple[int, ...]) -> bool:
    """Whether an image of ``shape`` has an equirectangular panorama's proportions."""
    height, width = shape[:2]
    return height > 0 and abs(width / height - PANORAMA_ASPECT) <= PANORAMA_ASPECT * PANORAMA_TOLERANCE


def _shifted(detection: Detection, dx: float, tag: str = "") -> Detection:
    x1, y1, x2, y2 = detection.box
    landmarks = np.asarray(detection.landmarks, dtype=np.float64) + np.array([dx, 0.0])
    return Detection((x1 + dx, y1, x2 + dx, y2), detection.score, landmarks, detection.detector + tag)


def seam_faces(detector: FaceDetector, image: np.ndarray) -> list[Detection]:
    """The faces ``detector`` finds standing across the seam of the panorama ``image``, in its
    coordinates (their boxes reach past its right edge), tagged SEAM_TAG."""
    width = image.shape[1]
    side = max(1, int(width * SEAM_STRIP))
    strip = np.ascontiguousarray(np.concatenate([image[:, width - side:], image[:, :side]], axis=1))
    scale = min(1.0, float(np.sqrt(SEAM_MAX_PIXELS / (strip.shape[0] * strip.shape[1]))))
    if scale < 1.0:
        strip = cv2.resize(strip, (max(1, round(strip.shape[1] * scale)), max(1, round(strip.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    join = side * scale
    found = []
    for d in detector.detect(strip):
        x1, _, x2, _ = d.box
        share = SEAM_MIN_SHARE * (x2 - x1)
        if d.score < SEAM_MIN_SCORE or not (x1 <= join - share and x2 >= join + share):
            continue
        found.append(_shifted(scaled_detection(d, 1.0 / scale, 1.0 / scale), width - side, SEAM_TAG))
    return found


def _piece_of(detection: Detection, seam_face: Detection, width: int) -> bool:
    """Whether ``detection`` (the photo's) is a piece of ``seam_face`` at either edge."""
    for dx in (0.0, float(width)):
        box = _shifted(detection, dx).box
        if box_iou(box, seam_face.box) >= 0.3 or centre_inside(box, seam_face.box):
            return True
    return False


class SeamSearch(FaceDetector):
    """``detector``'s faces, and on a panorama the faces ``seam_detector`` finds across its
    seam (see :func:`seam_faces`), which replace the pieces of them ``detector`` found."""

    def __init__(self, detector: FaceDetector, seam_detector: FaceDetector | None = None) -> None:
        super().__init__()
        self.detector = detector
        self.seam_detector = seam_detector or detector
        self.name = detector.name

    def _load(self) -> None:
        self.detector.load()
        self.seam_detector.load()

    def _detect(self, image: np.ndarray) -> list[Detection]:
        found = self.detector.detect(image)
        if not is_panorama(image.shape):
            return found
        across = seam_faces(self.seam_detector, image)
        width = image.shape[1]
        return [d for d in found if not any(_piece_of(d, s, width) for s in across)] + across


@dataclass(frozen=True)
class Roll:
    """A panorama rolled left by ``cut`` columns (column ``cut`` becomes its left edge), and back."""

    cut: int

    @classmethod
    def around(cls, detections: list[Detection], width: int) -> Roll:
        """The roll whose new edges fall in the widest run of columns that no face of
        ``detections`` (their boxes grown by ROLL_CLEARANCE of their width each way) covers."""
        covered = np.zeros(width, np.int32)
        for d in detections:
            x1, _, x2, _ = d.box
            grow = (x2 - x1) * ROLL_CLEARANCE
            start, stop = int(np.floor(x1 - grow)), int(np.ceil(x2 + grow))
            if stop - start >= width:
                covered += 1
                continue
            covered[np.arange(start, stop) % width] += 1
        free = covered == covered.min()
        best_start, best_length, run_start, run = 0, 0, 0, 0
        for x in range(2 * width):  # twice round: a run may wrap past the right edge
            if free[x % width]:
                if run == 0:
                    run_start = x
                run += 1
                if run > best_length:
                    best_start, best_length = run_start, min(run, width)
            else:
                run = 0
        return cls(int((best_start + best_length // 2) % width))

    def apply(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.roll(image, -self.cut, axis=1))

    def restore(self, original: np.ndarray, rolled: np.ndarray, processed: np.ndarray) -> np.ndarray:
        """``processed`` (``rolled``, this roll of ``original``, with some regions redrawn)
        rolled back: every pixel not redrawn is the original's exactly."""
        return np.ascontiguousarray(np.roll(processed, self.cut, axis=1))

    def to_view(self, detection: Detection, shape: tuple[int, ...]) -> Detection:
        """``detection`` (in the photo's coordinates) in the rolled copy's."""
        width = shape[1]
        x1 = detection.box[0]
        return _shifted(detection, ((x1 - self.cut) % width) - x1)

    def from_view(self, detection: Detection, shape: tuple[int, ...]) -> Detection:
        """``detection`` in the rolled copy back in the photo's coordinates (a face across the
        seam reaches past the right edge)."""
        width = shape[1]
        x1 = detection.box[0]
        return _shifted(detection, ((x1 + self.cut) % width) - x1)
