"""Whether a face wears glasses, read from dlib's descriptor of its aligned crop.

The renderer draws glasses from the pseudonym code and the context, whatever the photo shows:
of 284 of the default engine's drawings on LFW faces, labelled by eye, 97 wore glasses (often
faint, rimless ghosts of frames), against 89 of 480 photos; 67 of the 234 people without
glasses were given some. Glasses are what a multimodal model is asked about ("is he wearing
glasses?"), so a drawing should show them as the photo does. A linear probe on dlib's 128-d
descriptor of the aligned crop (which the engine computes for the gender screen anyway) reads
them: fitted by ``idmrag fit-glasses-probe`` on hand-labelled LFW photos and drawings
(``training/glasses_labels.json``), 0.90 area under the ROC curve on drawings held out by
person. A drawing that reads as glasses (``GLASSES_LIMIT``) where the photo's face does not
read as wearing them (``PHOTO_GLASSES_LIMIT``), or that clearly reads bare
(``DROPPED_GLASSES_LIMIT``) where the photo's face does, gives way to the person's next code,
as a smudged or misgendered one does. The renderer cannot be asked for glasses: a face whose
every code draws them (older faces, often) keeps them, and the glasses a drawing keeps are the
renderer's, never the person's (their pixels are not in its input).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idmrag_plugin.errors import ModelLoadError

#: A drawing reading glasses with at least this probability wears them: on held-out drawings
#: 72% of those with glasses and 12% of those without (0.5: 88% and 19%; 0.7: 57% and 6%).
GLASSES_LIMIT = 0.6
#: A photo's face reading glasses with at least this probability wears them (its drawings must
#: not clearly drop them); under it, its drawings must not add them. High, since a bare face
#: read as wearing glasses lets glasses be added, while a face with glasses read bare may lose
#: them: on photos held out (5 folds), 38% of those with glasses and
#: 2.3% of those without read 0.7 or more (0.5: 78% and 13%).
PHOTO_GLASSES_LIMIT = 0.7
#: A drawing of such a face reading glasses under this probability has dropped them: 2% of the
#: held-out drawings with glasses and 58% of those without read under 0.35.
DROPPED_GLASSES_LIMIT = 0.35


@dataclass(frozen=True)
class GlassesProbe:
    """Logistic regression on a face descriptor: P(glasses) = sigmoid(e . weight + bias)."""

    weight: np.ndarray  # (D,)
    bias: float
    reader: str = "dlib"

    def probability(self, embeddings: np.ndarray) -> np.ndarray:
        """P(glasses) (N,) of faces from their descriptors (N, D) by ``reader``."""
        e = np.atleast_2d(np.asarray(embeddings, np.float64))
        if e.shape[1] != self.weight.shape[0]:
            raise ModelLoadError(
                f"the glasses probe reads {self.weight.shape[0]}-d {self.reader} descriptors, got {e.shape[1]}-d"
            )
        return 1.0 / (1.0 + np.exp(-(e @ self.weight + self.bias)))

    def save(self, path: str | Path, provenance: str = "") -> None:
        from safetensors.numpy import save_file

        save_file({"weight": self.weight.astype(np.float32), "bias": np.array([self.bias], np.float32)}, str(path),
                  metadata={"reader": self.reader, "provenance": provenance})

    @classmethod
    def load(cls, path: str | Path) -> GlassesProbe:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                weight, bias = handle.get_tensor("weight"), handle.get_tensor("bias")
        except (OSError, KeyError) as exc:
            raise ModelLoadError(f"cannot read the glasses probe {path}: {exc}") from exc
        return cls(weight.astype(np.float64), float(bias[0]), metadata.get("reader", "dlib"))


def glasses_difference(photo: float, drawn: float) -> float:
    """How far a drawing that reads glasses with probability ``drawn`` is from the glasses of
    a face whose photo reads ``photo``, in units of the limits (above 1: unfit): for a bare
    face, ``drawn`` over ``GLASSES_LIMIT`` (glasses added); for a face reading as wearing
    glasses, how far ``drawn`` is below 1 over how far ``DROPPED_GLASSES_LIMIT`` is (glasses
    clearly dropped)."""
    if photo >= PHOTO_GLASSES_LIMIT:
        return (1.0 - drawn) / (1.0 - DROPPED_GLASSES_LIMIT)
    return drawn / GLASSES_LIMIT
