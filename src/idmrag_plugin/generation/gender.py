"""Perceived gender kept across the swap, judged where it shows: in the drawn face.

Two linear probes, fitted by ``idmrag fit-gender-probes`` for one renderer:

* ``image``: the perceived gender of a face photo, read from the identity student's embedding
  (the small network distilled from FaceNet) and fitted on UTKFace's labels;
* ``code``: the gender the renderer *draws* for an identity code, fitted on codes from the
  sampler, each rendered into a real face's context and judged by the image probe.

A person's gender is read from their photo (the first one of the session, kept with their
pseudonym), and a pseudonym code suits them when the code probe puts it on the same side. A
probe of gender on the codes themselves, fitted on labelled faces' codes, was tried first: the
renderer does not draw what it reads (gender agreement 61% against 57% without it, on 300 LFW
faces), since the renderer's response to a code is not the encoder's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idmrag_plugin.errors import ModelLoadError

#: Side "True" of both probes (the label 1 of the data it was fitted on).
FEMALE = True


@dataclass(frozen=True)
class GenderProbes:
    """Logistic read-outs; ``renderer_sha256`` names the renderer weights the code probe describes."""

    image_weight: np.ndarray
    image_bias: float
    code_weight: np.ndarray
    code_bias: float
    renderer_sha256: str

    def image_side(self, embeddings: np.ndarray) -> np.ndarray:
        """Perceived gender (bool per row) of identity-student embeddings (N, D)."""
        return np.atleast_2d(embeddings).astype(np.float64) @ self.image_weight + self.image_bias > 0.0

    def code_side(self, codes: np.ndarray) -> np.ndarray:
        """The gender (bool per row) the renderer draws for identity codes (N, id_dim)."""
        return np.atleast_2d(codes).astype(np.float64) @ self.code_weight + self.code_bias > 0.0

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        save_file(
            {"image.weight": self.image_weight.astype(np.float32), "image.bias": np.array([self.image_bias], np.float32),
             "code.weight": self.code_weight.astype(np.float32), "code.bias": np.array([self.code_bias], np.float32)},
            str(path), metadata={"renderer_sha256": self.renderer_sha256},
        )

    @classmethod
    def load(cls, path: str | Path) -> GenderProbes:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
                metadata = handle.metadata() or {}
            return cls(tensors["image.weight"].astype(np.float64), float(tensors["image.bias"][0]),
                       tensors["code.weight"].astype(np.float64), float(tensors["code.bias"][0]),
                       metadata.get("renderer_sha256", ""))
        except (OSError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"{path} does not hold gender probes ({exc}); refit them with "
                                 "`idmrag fit-gender-probes`") from exc
