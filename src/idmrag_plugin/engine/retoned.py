"""The search of a photo's re-toned copy (its negative, its grey levels): the faces a detector
finds only there, found again at full resolution.

Subclasses say how the copy is made (:meth:`RetonedSearch.retoned`) and tag what they find;
the engine then works on that copy (see :mod:`idmrag_plugin.engine.negative` and
:mod:`idmrag_plugin.engine.grey`).
"""

from __future__ import annotations

from abc import abstractmethod

import cv2
import numpy as np

from idmrag_plugin.engine.detect import Detection, FaceDetector, box_iou

#: The copy is searched at this scale (faces from min_face_size / SEARCH_SCALE px), at most
#: SEARCH_MAX_SIDE long (faces from min_face_size * side / SEARCH_MAX_SIDE px).
SEARCH_SCALE = 0.5
SEARCH_MAX_SIDE = 640
#: A face found in the copy is found again in a cut around it at most this many px long.
REFIND_SIDE = 480
#: A face found only in the copy must score at least this (MTCNN's last stage).
MIN_SCORE = 0.95


class RetonedSearch(FaceDetector):
    """``detector``'s faces, plus the faces ``retoned_detector`` finds upright in the image's
    re-toned copy (at SEARCH_SCALE, at most SEARCH_MAX_SIDE long, scoring MIN_SCORE) where
    ``detector`` found none (tagged ``tag``, their landmarks taken again at full resolution)."""

    tag: str
    #: what a face found only in a copy must score (MTCNN's last stage)
    min_score: float = MIN_SCORE

    def __init__(self, detector: FaceDetector, retoned_detector: FaceDetector | None = None, iou: float = 0.3) -> None:
        super().__init__()
        self.detector = detector
        self.retoned_detector = retoned_detector or detector
        self.iou = iou
        self.name = detector.name

    @abstractmethod
    def retoned(self, image: np.ndarray) -> np.ndarray | None:
        """The copy searched (same size as ``image``), or None when there is none worth searching."""

    def retoned_copies(self, image: np.ndarray) -> list[np.ndarray]:
        """The copies searched, in order (by default the one of :meth:`retoned`, if any)."""
        copy = self.retoned(image)
        return [] if copy is None else [copy]

    def _load(self) -> None:
        self.detector.load()
        self.retoned_detector.load()

    def _detect(self, image: np.ndarray) -> list[Detection]:
        found = self.detector.detect(image)
        extra: list[Detection] = []
        for retoned in self.retoned_copies(image):
            h, w = retoned.shape[:2]
            scale = min(SEARCH_SCALE, SEARCH_MAX_SIDE / max(h, w))
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(retoned, size, interpolation=cv2.INTER_AREA)
            factor = np.array([w / size[0], h / size[1]])
            for d in self.retoned_detector.detect(small):
                box = (d.box[0] * factor[0], d.box[1] * factor[1], d.box[2] * factor[0], d.box[3] * factor[1])
                # a face the photo itself shows is the photo's (the false faces a detector finds in
                # the photo are no reason to skip this pass)
                if d.score < self.min_score or any(box_iou(box, f.box) >= self.iou for f in found + extra):
                    continue
                face = self._at_full_resolution(retoned, Detection(box, d.score, d.landmarks * factor, d.detector))
                extra.append(Detection(face.box, face.score, face.landmarks, f"{face.detector}{self.tag}"))
        return found + extra

    def _at_full_resolution(self, retoned: np.ndarray, face: Detection) -> Detection:
        """``face`` found again in a full-resolution cut of the copy around it: the oracles
        align what they judge by its landmarks, and at half size they are twice as coarse."""
        x1, y1, x2, y2 = face.box
        side = max(x2 - x1, y2 - y1)
        h, w = retoned.shape[:2]
        left, top = int(max(0, x1 - side)), int(max(0, y1 - side))
        right, bottom = int(min(w, x2 + side)), int(min(h, y2 + side))
        cut = np.ascontiguousarray(retoned[top:bottom, left:right])
        shrink = min(1.0, REFIND_SIDE / max(cut.shape[:2]))
        if shrink < 1.0:
            cut = cv2.resize(cut, (max(1, round(cut.shape[1] * shrink)), max(1, round(cut.shape[0] * shrink))),
                             interpolation=cv2.INTER_AREA)
        best: Detection | None = None
        for d in self.retoned_detector.detect(cut):
            box = (d.box[0] / shrink + left, d.box[1] / shrink + top, d.box[2] / shrink + left, d.box[3] / shrink + top)
            if box_iou(box, face.box) >= 0.5 and (best is None or d.score > best.score):
                best = Detection(box, d.score, d.landmarks / shrink + np.array([left, top], dtype=np.float64), d.detector)
        return best if best is not None else face
