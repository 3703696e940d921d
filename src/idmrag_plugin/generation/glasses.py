"""Whether a face wears glasses, in a photo and in a drawing of it.

The renderer draws glasses from the pseudonym code and the context, whatever the photo shows:
of 284 of the default engine's drawings on LFW faces, labelled by eye, 97 wore glasses (often
faint, rimless ghosts of frames), against 89 of 480 photos; 67 of the 234 people without
glasses were given some. Glasses are what a multimodal model is asked about ("is he wearing
glasses?"), so a drawing should show them as the photo does. Two linear probes read them,
fitted by ``idmrag fit-glasses-probe`` on hand-labelled LFW photos and drawings
(``training/glasses_labels.json``) and kept in one file:

* the photo's face: the histogram of oriented gradients of the eye band of the aligned crop
  (frames are edges there) beside dlib's 128-d descriptor of the crop; on photos held out
  (5 folds) 0.97 area under the ROC curve, where dlib's descriptor alone read 0.90;
* a drawing: dlib's descriptor alone (which the engine computes for the gender screen
  anyway), fitted on drawings and photos; 0.90 on drawings held out by person (the soft
  drawings' edges read no better).

A drawing that reads as glasses (``GLASSES_LIMIT``) where the photo's face reads bare
(``PHOTO_BARE_LIMIT``), or that clearly reads bare (``DROPPED_GLASSES_LIMIT``) where the photo's
face reads as wearing them (``PHOTO_GLASSES_LIMIT``), gives way to the person's next code, as a
smudged or misgendered one does; a face read in between is not held to either. The renderer
cannot be asked for glasses: a face whose every code draws them (older faces, often) keeps
them, and the glasses a drawing keeps are the renderer's, never the person's (their pixels are
not in its input).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idmrag_plugin.errors import ModelLoadError

#: A drawing reading glasses with at least this probability wears them: on held-out drawings
#: 72% of those with glasses and 12% of those without (0.5: 88% and 19%; 0.7: 57% and 6%).
GLASSES_LIMIT = 0.6
#: A photo's face reading glasses with at least this probability wears them: its drawings must
#: not clearly drop them. On photos held out (5 folds), 83% of those with glasses and
#: 0.5% of those without read 0.7 or more.
PHOTO_GLASSES_LIMIT = 0.7
#: A photo's face reading glasses under this probability is bare: its drawings must not add
#: them. Held out, 95% of the faces without glasses and 4.5% of those with them read under 0.3;
#: a face read in between is held to neither (a face with glasses read bare would lose them).
PHOTO_BARE_LIMIT = 0.3
#: A drawing of a face wearing glasses reading glasses under this probability has dropped them:
#: 2% of the held-out drawings with glasses and 58% of those without read under 0.35.
DROPPED_GLASSES_LIMIT = 0.35
#: The eye band of the engine's 128 px canonical crop (rows, then columns: from above the
#: brows' inner ends to below the eyes, across both temples), where frames draw their edges.
EYE_BAND = (slice(44, 80), slice(28, 100))
#: The eye band's gradient histograms: cell side in pixels (of the 128 px crop), orientations.
EYE_BAND_CELL = 8
EYE_BAND_ORIENTATIONS = 9
#: What each probe reads: a drawing dlib's descriptor; a photo the eye band's gradient
#: histograms, then dlib's descriptor.
DRAWING_FEATURES = "dlib"
PHOTO_FEATURES = "eye-hog+dlib"


def eye_band_gradients(crops: np.ndarray) -> np.ndarray:
    """Histograms of oriented gradients (N, F) of the eye band of aligned crops (N, S, S, 3)
    uint8, any size S (resampled to the canonical 128 px first)."""
    import cv2
    from skimage.feature import hog

    rows = []
    for crop in np.asarray(crops).reshape(-1, *np.shape(crops)[-3:]):
        if crop.shape[0] != 128:
            interpolation = cv2.INTER_AREA if crop.shape[0] > 128 else cv2.INTER_LINEAR
            crop = cv2.resize(crop, (128, 128), interpolation=interpolation)
        grey = crop.astype(np.float32).mean(axis=2)[EYE_BAND] / 255.0
        rows.append(hog(grey, orientations=EYE_BAND_ORIENTATIONS, pixels_per_cell=(EYE_BAND_CELL, EYE_BAND_CELL),
                        cells_per_block=(2, 2), feature_vector=True))
    return np.asarray(rows, np.float64)


@dataclass(frozen=True)
class GlassesProbe:
    """Logistic regression on a face's features: P(glasses) = sigmoid(x . weight + bias), with
    x the face's ``features`` (:data:`DRAWING_FEATURES` or :data:`PHOTO_FEATURES`)."""

    weight: np.ndarray  # (D,)
    bias: float
    features: str = DRAWING_FEATURES

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(glasses) (N,) of faces from their features (N, D)."""
        x = np.atleast_2d(np.asarray(features, np.float64))
        if x.shape[1] != self.weight.shape[0]:
            raise ModelLoadError(
                f"the glasses probe reads {self.weight.shape[0]} features ({self.features}), got {x.shape[1]}"
            )
        return 1.0 / (1.0 + np.exp(-(x @ self.weight + self.bias)))

    def read(self, crops: np.ndarray, descriptors: np.ndarray) -> np.ndarray:
        """P(glasses) (N,) of aligned crops (N, S, S, 3) with dlib's descriptors of them (N, 128)."""
        descriptors = np.atleast_2d(np.asarray(descriptors, np.float64))
        if self.features == DRAWING_FEATURES:
            return self.probability(descriptors)
        if self.features == PHOTO_FEATURES:
            return self.probability(np.hstack([eye_band_gradients(crops), descriptors]))
        raise ModelLoadError(f"a glasses probe of unknown features {self.features!r}; refit it")


@dataclass(frozen=True)
class GlassesProbes:
    """The photo's probe and the drawing's, kept in one file."""

    photo: GlassesProbe
    drawing: GlassesProbe

    def save(self, path: str | Path, provenance: str = "") -> None:
        from safetensors.numpy import save_file

        tensors, metadata = {}, {"provenance": provenance}
        for role, probe in (("photo", self.photo), ("drawing", self.drawing)):
            tensors[f"{role}.weight"] = probe.weight.astype(np.float32)
            tensors[f"{role}.bias"] = np.array([probe.bias], np.float32)
            metadata[f"{role}.features"] = probe.features
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> GlassesProbes:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                probes = {
                    role: GlassesProbe(handle.get_tensor(f"{role}.weight").astype(np.float64),
                                       float(handle.get_tensor(f"{role}.bias")[0]), metadata[f"{role}.features"])
                    for role in ("photo", "drawing")
                }
        except (OSError, KeyError, SafetensorError) as exc:
            raise ModelLoadError(f"cannot read the glasses probes {path}: {exc}; refit them with "
                                 "`idmrag fit-glasses-probe`") from exc
        return cls(**probes)


def glasses_difference(photo: float, drawn: float) -> float:
    """How far a drawing that reads glasses with probability ``drawn`` is from the glasses of
    a face whose photo reads ``photo``, in units of the limits (above 1: unfit): for a face
    reading bare, ``drawn`` over ``GLASSES_LIMIT`` (glasses added); for a face reading as
    wearing glasses, how far ``drawn`` is below 1 over how far ``DROPPED_GLASSES_LIMIT`` is
    (glasses clearly dropped); 0 for a face read in between."""
    if photo >= PHOTO_GLASSES_LIMIT:
        return (1.0 - drawn) / (1.0 - DROPPED_GLASSES_LIMIT)
    if photo < PHOTO_BARE_LIMIT:
        return drawn / GLASSES_LIMIT
    return 0.0
