"""Are five landmarks a face? Checks made before generating, independent of the detector.

A detector can return a confident box whose five points sit in a tight cluster (around
the nose of a face lying on its side, say). Aligning on such points crops a fraction of
the face; the generator repaints that fraction and verification, looking through the same
crop, passes a face whose eyes and mouth are untouched. Every check here is invariant to
in-plane rotation, so faces at any roll are judged alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Bounds around what MTCNN gives on 712 LFW faces (min-max: eye distance 0.18-0.50 of the
# box side, mouth 0.83-3.24 IODs below the eyes under strong yaw, nose 0.12-1.41, mouth
# width 0.60-1.16, spread 0.33-0.60), widened so that real faces pass.
EYE_DISTANCE_TO_BOX = (0.12, 0.95)  # inter-ocular distance / sqrt(box area)
MOUTH_DROP = (0.45, 4.0)  # eye-midpoint -> mouth-midpoint along the face's vertical, in IODs
NOSE_DROP = (0.05, 2.5)  # eye-midpoint -> nose, along the face's vertical, in IODs
MOUTH_WIDTH = (0.3, 1.8)  # mouth corner distance in IODs
SPREAD_TO_BOX = 0.25  # the points' extent / box side, at least
BOX_MARGIN = 0.35  # points may lie this fraction of the box side outside it


@dataclass(frozen=True)
class LandmarkCheck:
    """Outcome of :func:`check_landmarks`: ``reason`` is empty when the points are plausible."""

    reason: str
    roll_degrees: float

    @property
    def plausible(self) -> bool:
        return not self.reason


def face_roll(landmarks: np.ndarray) -> float:
    """Angle in degrees of the line from the left to the right eye (0 = upright face)."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    dx, dy = points[1] - points[0]
    return float(np.degrees(np.arctan2(dy, dx)))


def upright_turns(landmarks: np.ndarray) -> int:
    """Quarter turns ``k`` such that the face stands upright in ``np.rot90(image, k)``."""
    # np.rot90 turns counter-clockwise: a face rolled by +90 degrees (eyes' line pointing
    # down the image) stands upright after one counter-clockwise turn.
    return round(face_roll(landmarks) / 90.0) % 4


def check_landmarks(landmarks: np.ndarray, box: tuple[float, float, float, float]) -> LandmarkCheck:
    """Judge whether five landmarks (eyes, nose, mouth corners) can belong to the face in ``box``."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    roll = face_roll(points) if points.shape[0] >= 2 and np.all(np.isfinite(points)) else 0.0
    if points.shape != (5, 2) or not np.all(np.isfinite(points)):
        return LandmarkCheck("five finite landmarks are required", roll)
    x1, y1, x2, y2 = box
    side = float(np.sqrt(max(x2 - x1, 0.0) * max(y2 - y1, 0.0)))
    if side < 1.0:
        return LandmarkCheck("empty detection box", roll)
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    across = right_eye - left_eye
    iod = float(np.hypot(*across))
    ratio = iod / side
    if not EYE_DISTANCE_TO_BOX[0] <= ratio <= EYE_DISTANCE_TO_BOX[1]:
        return LandmarkCheck(f"eye distance is {ratio:.2f} of the box side", roll)
    unit = across / iod
    down = np.array([-unit[1], unit[0]])  # the face's vertical: eyes -> mouth
    eyes = (left_eye + right_eye) / 2.0
    mouth = (mouth_left + mouth_right) / 2.0
    mouth_drop = float((mouth - eyes) @ down) / iod
    if not MOUTH_DROP[0] <= mouth_drop <= MOUTH_DROP[1]:
        return LandmarkCheck(f"mouth lies {mouth_drop:.2f} eye distances below the eyes", roll)
    nose_drop = float((nose - eyes) @ down) / iod
    if not NOSE_DROP[0] <= nose_drop <= min(NOSE_DROP[1], mouth_drop):
        return LandmarkCheck(f"nose lies {nose_drop:.2f} eye distances below the eyes", roll)
    width = float(np.hypot(*(mouth_right - mouth_left))) / iod
    if not MOUTH_WIDTH[0] <= width <= MOUTH_WIDTH[1]:
        return LandmarkCheck(f"mouth is {width:.2f} eye distances wide", roll)
    if float((mouth_right - mouth_left) @ unit) <= 0:
        return LandmarkCheck("mouth corners are swapped relative to the eyes", roll)
    spread = float(np.max(points.max(axis=0) - points.min(axis=0))) / side
    if spread < SPREAD_TO_BOX:
        return LandmarkCheck(f"landmarks span only {spread:.2f} of the box", roll)
    margin = BOX_MARGIN * side
    inside = (
        (points[:, 0] >= x1 - margin) & (points[:, 0] <= x2 + margin)
        & (points[:, 1] >= y1 - margin) & (points[:, 1] <= y2 + margin)
    )
    if not inside.all():
        return LandmarkCheck("landmarks lie outside the detection box", roll)
    return LandmarkCheck("", roll)


def plausibility_score(landmarks: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """1 for plausible landmarks, 0 otherwise: used to rank overlapping detections."""
    return 1.0 if check_landmarks(landmarks, box).plausible else 0.0
