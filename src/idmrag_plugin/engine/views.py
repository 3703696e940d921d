"""The views through which the oracles judge a replaced face.

Verification must not trust the alignment the generator used: a face whose landmarks
are wrong is cropped wrongly for the generator *and* for the oracles, so both look at the
same wrong part of the face. Each face is therefore also judged

* ``refit``: through landmarks estimated afresh on each image by dlib's 5-point shape
  predictor inside the detected box (a second landmark model, blind to the detector's
  points); computed whenever they disagree with the detector's, since otherwise the crop
  is the aligned one; and
* ``box``: over the whole detected box, unaligned (FaceNet was trained on detector boxes),
  with its own calibrated threshold;
* ``shifted``: when the aligned similarity comes within the oracle's ``shift_margin`` of its threshold,
  through the output's landmarks moved, turned and scaled a little (``ALIGNMENT_SHIFTS``),
  the most similar shift counting: an attacker aligns the output with landmarks of their own,
  and a pseudonym just under the threshold in the engine's alignment can be over it in
  another (``benchmarks/attacker_eval.py``).

A face is verified only when every oracle judges it a different person in every view. In the
views cut by the detector's landmarks (aligned, shifted) the similarity must stay under the calibrated
threshold less the oracle's ``alignment_margin``: an attacker's own alignment moved the
oracles' similarities by up to a few hundredths (dlib) or a tenth (FaceNet) on anonymized LFW
faces, and a face just under the threshold in the engine's view is over it in theirs.

An oracle with an int8 screening copy (FaceNet on ONNX Runtime, see
:mod:`idmrag_plugin.engine.screening`) is compared through it first; a screened similarity
within ``SCREEN_MARGIN`` of its threshold is recomputed by the exact network, on the original
and on the output, and the exact similarity is the verdict's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from idmrag_plugin.engine.detect import Detection, FaceDetector, box_iou, landmarks_from_dlib_shape
from idmrag_plugin.engine.oracles import DlibShapePredictor, FaceOracle, OracleVerdict, cosine
from idmrag_plugin.engine.plausibility import upright_turns
from idmrag_plugin.engine.screening import SCREEN_MARGIN
from idmrag_plugin.engine.upright import upright_patch

#: Refit eyes further than this (in inter-ocular distances) from the detector's make the
#: refit view a different crop, worth its own embedding. On 200 LFW photos the two models'
#: eyes differ by 0.03-0.06 IOD (median) and 0.17-0.19 (90th percentile). Only the eyes are
#: compared: dlib marks the nose's base where MTCNN marks its tip, and the refit mouth is
#: completed from a template.
REFIT_TOLERANCE = 0.25
#: The box view's square side, relative to the detection box's longer side.
BOX_GROW = 1.15
#: The shifted view's alignments: (right, down) in inter-ocular distances, scale, degrees
#: counter-clockwise, applied to the output's five landmarks about their centre. MTCNN's points
#: found afresh on 300 anonymized LFW faces, and Gaussian noise of 1.5 px on each point, moved
#: the oracles' similarity to the original by up to +0.045 over the engine's alignment.
ALIGNMENT_SHIFTS: tuple[tuple[float, float, float, float], ...] = (
    (0.05, 0.0, 1.0, 0.0), (-0.05, 0.0, 1.0, 0.0), (0.0, 0.05, 1.0, 0.0), (0.0, -0.05, 1.0, 0.0),
    (0.0, 0.0, 1.05, 0.0), (0.0, 0.0, 0.95, 0.0), (0.0, 0.0, 1.0, 4.0), (0.0, 0.0, 1.0, -4.0),
)


def box_view_name(oracle: str) -> str:
    return f"{oracle}@box"


def box_view_description(oracle: str) -> str:
    """What ``box_view_name(oracle)`` embeds, as the calibration records it."""
    return (f"{oracle} over the whole detection box: an upright square {BOX_GROW}x the box's longer "
            "side, resized to the network's input, unaligned (engine.views.box_crop)")


def view_name(oracle: str, view: str) -> str:
    """The verdict's name for ``oracle`` in ``view`` ("aligned" or "box")."""
    return oracle if view == "aligned" else box_view_name(oracle)


def refit_view_name(oracle: str) -> str:
    return f"{oracle}@refit"


def shifted_view_name(oracle: str) -> str:
    return f"{oracle}@shifted"


def redetected_view_name(oracle: str) -> str:
    return f"{oracle}@redetected"


def crosses_border(box: tuple[float, ...], shape: tuple[int, ...]) -> bool:
    """Whether a detection box reaches past the image's frame (a face the frame cuts)."""
    h, w = shape[:2]
    return box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h


def redetect_near(detector: FaceDetector, image: np.ndarray, box: tuple[float, ...]) -> Detection | None:
    """``detector``'s own detection of the face at ``box`` (IoU at least 0.3), searched in a
    window around it (the box grown by its size each way, within the frame), or None."""
    h, w = image.shape[:2]
    side = max(box[2] - box[0], box[3] - box[1], 1.0)
    left, top = int(max(0, box[0] - side)), int(max(0, box[1] - side))
    right, bottom = int(min(w, box[2] + side)), int(min(h, box[3] + side))
    if right - left < 2 or bottom - top < 2:
        return None
    found = detector.detect(np.ascontiguousarray(image[top:bottom, left:right]))
    offset = np.array([left, top], dtype=np.float64)
    moved = [Detection((d.box[0] + left, d.box[1] + top, d.box[2] + left, d.box[3] + top), d.score,
                       d.landmarks + offset, d.detector) for d in found]
    near = [d for d in moved if box_iou(d.box, box) >= 0.3]
    return max(near, key=lambda d: box_iou(d.box, box)) if near else None


def shifted_landmarks(
    landmarks: np.ndarray, right: float, down: float, scale: float, degrees: float
) -> np.ndarray:
    """``landmarks`` (5, 2) moved by (right, down) inter-ocular distances, scaled by ``scale``
    and turned by ``degrees`` (counter-clockwise on the image) about their centre."""
    points = np.asarray(landmarks, dtype=np.float64)
    center = points.mean(axis=0)
    iod = max(float(np.hypot(*(points[1] - points[0]))), 1.0)
    t = np.radians(degrees)
    # image y points down, so a counter-clockwise turn on screen is clockwise in (x, y)
    rotation = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    return (points - center) @ rotation.T * scale + center + np.array([right, down]) * iod


class LandmarkRefitter:
    """Five landmarks estimated afresh inside a detection box by dlib's 5-point predictor.

    The box is first turned upright (by the quarter turns the detection's eyes indicate),
    since the predictor, like dlib's detector, expects upright faces.
    """

    def __init__(self) -> None:
        self._predictor = DlibShapePredictor("shape_predictor_5_face_landmarks.dat")

    def refit(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        import dlib

        patch = upright_patch(image, detection.box, upright_turns(detection.landmarks), margin=0.3)
        corners = patch.to_patch(np.array([detection.box[:2], detection.box[2:]], dtype=np.float64))
        (x1, y1), (x2, y2) = corners.min(axis=0), corners.max(axis=0)
        rect = dlib.rectangle(round(x1), round(y1), round(x2), round(y2))
        return patch.to_image(landmarks_from_dlib_shape(self._predictor(patch.pixels, rect)))


def eye_deviation(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance between corresponding eyes, in inter-ocular distances of ``a``."""
    iod = max(float(np.hypot(*(a[1] - a[0]))), 1.0)
    return float(np.max(np.hypot(*(a[:2] - b[:2]).T))) / iod


def box_crop(image: np.ndarray, detection: Detection, size: int, grow: float = BOX_GROW) -> np.ndarray:
    """The detection's box as an upright square ``size`` x ``size`` crop (edges mirrored)."""
    x1, y1, x2, y2 = detection.box
    side = max(x2 - x1, y2 - y1, 1.0) * grow
    center = ((x1 + x2) / 2.0, (y1 + y2) / 2.0)
    # np.rot90's quarter turns are counter-clockwise, as are cv2's positive angles.
    matrix = cv2.getRotationMatrix2D(center, 90.0 * upright_turns(detection.landmarks), size / side)
    matrix[:, 2] += (size / 2.0 - center[0], size / 2.0 - center[1])
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )


@dataclass
class OriginalViews:
    """The original image's embeddings, computed once per image and reused across attempts.

    Every mapping is keyed by the face's index in ``detections``. The embeddings of the
    oracles named in ``screened`` are their int8 screening copies'; exact ones are computed
    when a verdict needs them and kept in ``exact`` (keyed by oracle, view and face).
    """

    pixels: np.ndarray
    detections: list[Detection]
    aligned: dict[str, dict[int, np.ndarray]]
    box: dict[str, dict[int, np.ndarray]]
    refit_landmarks: dict[int, np.ndarray]
    refit: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    #: the plain detector's own detection of each face the frame cuts (None: it finds none)
    redetected: dict[int, Detection | None] = field(default_factory=dict)
    screened: frozenset[str] = frozenset()
    exact: dict[tuple[str, str, int], np.ndarray] = field(default_factory=dict)

    def exact_aligned(self) -> dict[str, dict[int, np.ndarray]]:
        """``aligned`` without the screening embeddings (only exact ones leave the verifier)."""
        return {name: faces for name, faces in self.aligned.items() if name not in self.screened}


class Verifier:
    """Judges replaced faces against their originals with every oracle in every view."""

    def __init__(
        self,
        oracles: Sequence[FaceOracle],
        thresholds: Mapping[str, float],
        refitter: LandmarkRefitter | None = None,
        redetector: FaceDetector | None = None,
    ) -> None:
        self.oracles = list(oracles)
        self.thresholds = dict(thresholds)
        self.refitter = refitter or LandmarkRefitter()
        self.redetector = redetector
        self.box_oracles = [o for o in self.oracles if o.box_view and box_view_name(o.name) in self.thresholds]

    def threshold(self, oracle: FaceOracle, view: str) -> float:
        """The similarity ``oracle``'s verdicts in ``view`` must stay under: the calibrated
        threshold, less the oracle's alignment margin in the views cut by detector landmarks
        (aligned, shifted, redetected). The refit view is itself another alignment, judged at
        the calibrated threshold."""
        if view == "box":
            return self.thresholds[box_view_name(oracle.name)]
        if view == "refit":
            return self.thresholds[oracle.name]
        return self.thresholds[oracle.name] - oracle.alignment_margin

    def prepare(
        self, pixels: np.ndarray, detections: Sequence[Detection], indices: Sequence[int]
    ) -> OriginalViews:
        """Embed the faces ``indices`` of ``detections`` in the original image, every view."""
        return self.prepare_many([(pixels, detections, indices)])[0]

    def prepare_many(
        self, requests: Sequence[tuple[np.ndarray, Sequence[Detection], Sequence[int]]]
    ) -> list[OriginalViews]:
        """:meth:`prepare` for several images, with one forward pass per oracle for all of them."""
        requests = [(pixels, list(detections), list(indices)) for pixels, detections, indices in requests]
        sites = [(pixels, [detections[i] for i in indices]) for pixels, detections, indices in requests]
        aligned: list[dict[str, dict[int, np.ndarray]]] = [{} for _ in requests]
        box: list[dict[str, dict[int, np.ndarray]]] = [{} for _ in requests]
        screened = frozenset(o.name for o in self.oracles if o.screens)
        for oracle in self.oracles:
            embedded = self._embed_views(oracle, sites, screen=oracle.name in screened)
            for slot, ((_, _, indices), (rows, box_rows)) in enumerate(zip(requests, embedded, strict=True)):
                aligned[slot][oracle.name] = dict(zip(indices, rows, strict=True)) if indices else {}
                if box_rows is not None:
                    box[slot][oracle.name] = dict(zip(indices, box_rows, strict=True)) if indices else {}
        return [
            OriginalViews(
                pixels=pixels,
                detections=detections,
                aligned=aligned[slot],
                box=box[slot],
                refit_landmarks={i: self.refitter.refit(pixels, detections[i]) for i in indices},
                screened=screened,
            )
            for slot, (pixels, detections, indices) in enumerate(requests)
        ]

    def _embed_views(
        self, oracle: FaceOracle, sites: Sequence[tuple[np.ndarray, Sequence[Detection]]], screen: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per (image, detections) site, the aligned and (for box-view oracles) whole-box
        embeddings: every crop of every site in one forward pass (of the screening copy when
        ``screen``)."""
        with_box = oracle in self.box_oracles
        parts = [oracle.crops(image, [d.landmarks for d in detections]) for image, detections in sites]
        if with_box:
            parts += [np.stack([box_crop(image, d, oracle.input_size) for d in detections])
                      for image, detections in sites if detections]
        crops = [p for p in parts if len(p)]
        embed = oracle.embed_screen if screen else oracle.embed
        embedded = embed(np.concatenate(crops)) if crops else np.zeros((0, 1), np.float32)
        out: list[tuple[np.ndarray, np.ndarray | None]] = []
        cursor = 0
        for _, detections in sites:
            out.append((embedded[cursor : cursor + len(detections)], None))
            cursor += len(detections)
        if with_box:
            for slot, (_, detections) in enumerate(sites):
                out[slot] = (out[slot][0], embedded[cursor : cursor + len(detections)])
                cursor += len(detections)
        return out

    def verdicts(self, originals: OriginalViews, output: np.ndarray, indices: Sequence[int]) -> list[list[OracleVerdict]]:
        """Every view's verdicts for the faces ``indices`` of ``originals`` as they are in ``output``."""
        return self.verdicts_many([(originals, output, indices)])[0]

    def verdicts_many(
        self, requests: Sequence[tuple[OriginalViews, np.ndarray, Sequence[int]]]
    ) -> list[list[list[OracleVerdict]]]:
        """:meth:`verdicts` for several images, with one forward pass per oracle for all of them
        (the rare refit views, whose landmarks disagree with the detector's, go face by face)."""
        requests = [(originals, output, list(indices)) for originals, output, indices in requests]
        sites = [(output, [originals.detections[i] for i in indices]) for originals, output, indices in requests]
        per_image: list[list[list[OracleVerdict]]] = [[[] for _ in indices] for _, _, indices in requests]
        for oracle in self.oracles:
            screen = any(oracle.name in originals.screened for originals, _, _ in requests)
            embedded = self._embed_views(oracle, sites, screen=screen)
            # (request, face slot, view, similarity, exact) of every comparison, views in order
            found: list[tuple[int, int, str, float, bool]] = []
            for r, ((originals, _, indices), (now_aligned, now_box)) in enumerate(zip(requests, embedded, strict=True)):
                if not indices:
                    continue
                views = [("aligned", originals.aligned[oracle.name], now_aligned)]
                if now_box is not None:
                    views.append(("box", originals.box[oracle.name], now_box))
                for view, before, now in views:
                    sims = cosine(np.stack([before[i] for i in indices]), now)
                    found += [(r, slot, view, float(sim), not screen) for slot, sim in enumerate(sims)]
            if screen:
                found = self._settle_screened(oracle, requests, found)
            for r, slot, view, sim, exact in found:
                name = view_name(oracle.name, view)
                per_image[r][slot].append(OracleVerdict(name, sim, self.threshold(oracle, view), exact))
            for r, slot, sim in self._shifted(oracle, requests, found):
                per_image[r][slot].append(
                    OracleVerdict(shifted_view_name(oracle.name), sim, self.threshold(oracle, "shifted")))
        for (originals, output, indices), per_face, (_, detections) in zip(requests, per_image, sites, strict=True):
            self._refit_verdicts(originals, output, indices, detections, per_face)
            self._redetected_verdicts(originals, output, indices, detections, per_face)
        return per_image

    def _redetected_verdicts(
        self,
        originals: OriginalViews,
        output: np.ndarray,
        indices: list[int],
        detections: list[Detection],
        per_face: list[list[OracleVerdict]],
    ) -> None:
        """Add, for faces the frame cuts, every oracle's verdict through the plain detector's own
        detection on each image. The engine's views complete a cut face by mirroring and centre
        where the whole face would be; an attacker's detector finds the part in the frame and
        centres there, where more of the photo's own pixels stay (on LFW faces cut 30% by the
        frame, FaceNet matched 10 of 38 such faces that way, benchmarks/attacker_eval.py --cut).
        Box-view oracles also judge the plain detector's whole box on each image (an attacker's
        FaceNet over the box their MTCNN finds matched 1 of 123 such faces, 0.006 over the box
        threshold, when only the engine's own box was judged)."""
        if self.redetector is None:
            return
        for slot, index, detection in zip(per_face, indices, detections, strict=True):
            if not crosses_border(detection.box, output.shape):
                continue
            if index not in originals.redetected:
                originals.redetected[index] = redetect_near(self.redetector, originals.pixels, detection.box)
            before = originals.redetected[index]
            now = redetect_near(self.redetector, output, detection.box) if before is not None else None
            if now is None:
                continue  # the attacker's detector finds no face to compare
            for oracle in self.oracles:
                # the aligned crop, and the whole box for a box-view oracle: one forward per image
                key = (oracle.name, "redetected", index)
                if key not in originals.exact:
                    originals.exact[key] = oracle.embed(self._redetected_crops(oracle, originals.pixels, before))
                sims = cosine(originals.exact[key], oracle.embed(self._redetected_crops(oracle, output, now)))
                slot.append(OracleVerdict(redetected_view_name(oracle.name), float(sims[0]),
                                          self.threshold(oracle, "redetected")))
                if len(sims) > 1:
                    slot.append(OracleVerdict(redetected_view_name(box_view_name(oracle.name)), float(sims[1]),
                                              self.threshold(oracle, "box")))

    def _redetected_crops(self, oracle: FaceOracle, image: np.ndarray, detection: Detection) -> np.ndarray:
        """``detection``'s aligned crop, and for a box-view oracle its whole box, stacked."""
        crops = oracle.crops(image, [detection.landmarks])
        if oracle not in self.box_oracles:
            return crops
        return np.concatenate([crops, box_crop(image, detection, oracle.input_size)[None]])

    def _view_crop(self, oracle: FaceOracle, view: str, image: np.ndarray, detection: Detection) -> np.ndarray:
        if view == "box":
            return box_crop(image, detection, oracle.input_size)
        return oracle.crops(image, [detection.landmarks])[0]

    def _shifted(
        self, oracle: FaceOracle, requests: Sequence[tuple[OriginalViews, np.ndarray, list[int]]],
        found: list[tuple[int, int, str, float, bool]],
    ) -> list[tuple[int, int, float]]:
        """(request, face slot, similarity) of the shifted view for every aligned similarity
        within the oracle's ``shift_margin`` under the threshold (one forward pass for all of
        them); the similarity is the largest over ``ALIGNMENT_SHIFTS``, against the original's
        exact aligned embedding."""
        threshold = self.threshold(oracle, "shifted")
        near = [(r, slot) for r, slot, view, sim, _ in found
                if view == "aligned" and threshold - oracle.shift_margin <= sim < threshold]
        if not near:
            return []
        crops, before = [], []
        for r, slot in near:
            originals, output, indices = requests[r]
            index = indices[slot]
            landmarks = originals.detections[index].landmarks
            crops.append(oracle.crops(output, [shifted_landmarks(landmarks, *s) for s in ALIGNMENT_SHIFTS]))
            if oracle.name not in originals.screened:
                before.append(originals.aligned[oracle.name][index])
                continue
            key = (oracle.name, "aligned", index)
            if key not in originals.exact:  # settled verdicts have it; any other is embedded here
                originals.exact[key] = oracle.embed(self._view_crop(oracle, "aligned", originals.pixels,
                                                                    originals.detections[index])[None])[0]
            before.append(originals.exact[key])
        embedded = oracle.embed(np.concatenate(crops)).reshape(len(near), len(ALIGNMENT_SHIFTS), -1)
        return [
            (r, slot, float(np.max(cosine(np.broadcast_to(b, now.shape), now))))
            for (r, slot), b, now in zip(near, before, embedded, strict=True)
        ]

    def _settle_screened(
        self, oracle: FaceOracle, requests: Sequence[tuple[OriginalViews, np.ndarray, list[int]]],
        found: list[tuple[int, int, str, float, bool]],
    ) -> list[tuple[int, int, str, float, bool]]:
        """``found`` with every screened similarity near its threshold replaced by the exact one
        (the exact network on the output's crop and on the original's, the latter kept)."""
        near = [
            k for k, (_, _, view, sim, _) in enumerate(found)
            if abs(sim - self.threshold(oracle, view)) <= SCREEN_MARGIN
        ]
        if not near:
            return found
        outputs, keys = [], []
        pending: dict[tuple[int, tuple[str, str, int]], np.ndarray] = {}  # originals' crops to embed
        for k in near:
            r, slot, view, _, _ = found[k]
            originals, output, indices = requests[r]
            detection = originals.detections[indices[slot]]
            outputs.append(self._view_crop(oracle, view, output, detection))
            key = (oracle.name, view, indices[slot])
            keys.append(key)
            if key not in originals.exact and (r, key) not in pending:
                pending[(r, key)] = self._view_crop(oracle, view, originals.pixels, detection)
        embedded = oracle.embed(np.stack(outputs + list(pending.values())))
        for (r, key), row in zip(pending, embedded[len(outputs):], strict=True):
            requests[r][0].exact[key] = row
        settled = list(found)
        for k, key, now in zip(near, keys, embedded[: len(outputs)], strict=True):
            r, slot, view, _, _ = found[k]
            before = requests[r][0].exact[key]
            settled[k] = (r, slot, view, float(cosine(before[None], now[None])[0]), True)
        return settled

    def _refit_verdicts(
        self,
        originals: OriginalViews,
        output: np.ndarray,
        indices: list[int],
        detections: list[Detection],
        per_face: list[list[OracleVerdict]],
    ) -> None:
        """Add the refit views' verdicts to ``per_face`` for the faces whose refit landmarks
        (on the original or on the output) stray from the detector's."""
        for slot, index, detection in zip(per_face, indices, detections, strict=True):
            refit_now = self.refitter.refit(output, detection)
            refit_before = originals.refit_landmarks[index]
            if max(
                eye_deviation(detection.landmarks, refit_before),
                eye_deviation(detection.landmarks, refit_now),
            ) <= REFIT_TOLERANCE:
                continue  # the refit crops are the aligned ones
            for oracle in self.oracles:
                key = (oracle.name, index)
                if key not in originals.refit:
                    originals.refit[key] = oracle.embed_faces(originals.pixels, [refit_before])[0]
                now = oracle.embed_faces(output, [refit_now])[0]
                sim = float(cosine(originals.refit[key][None], now[None])[0])
                slot.append(OracleVerdict(refit_view_name(oracle.name), sim, self.threshold(oracle, "refit")))
