"""How likely the renderer is to draw a pseudonym code fit to keep, read from the code alone.

Most drawings the renderer makes are set aside by the generator's screens (speckled or washed
out, a smudged forehead or chin, a dropped beard, dark sockets; see
:meth:`~idmrag_plugin.generation.renderer_generator.RendererGenerator.unfitness` and the look
screens), and each costs a render and its composite. Whether a code draws fit depends on the
photo, but far more on the code: 32 codes drawn into 24 LFW faces were fit (by the screens of
the context alone) in 0% to 96% of the faces each, eight times the spread chance gives. A logistic probe on the code reads that
share, and the generator draws the codes it reads as likely fit first (see
``RendererLCMGenerator``). It decides the order of drawing only: every drawing is still judged
by every screen, and every face by the oracles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idmrag_plugin.errors import ModelLoadError


@dataclass(frozen=True)
class CodeFitness:
    """A logistic probe: P(drawn fit) = sigmoid(((code - mean) / scale) . weights + bias).
    ``split``: the median of that probability over the codes it was fitted on; a code under it
    is in the less likely half. A property of the code alone, so that a person's candidates are
    split alike in each of their photos (split at each batch's own median, the batches of a
    person's two photos, filtered against each photo's code, split differently, and the bench's
    same-person rate fell from 92% to 83%)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    split: float

    def likelier(self, codes: np.ndarray) -> np.ndarray:
        """True for each code (K, D) in the likelier half (at or over ``split``)."""
        return self.probability(codes) >= self.split

    def probability(self, codes: np.ndarray) -> np.ndarray:
        """P(fit) of each code (K, D) -> (K,)."""
        codes = np.atleast_2d(np.asarray(codes, np.float64))
        if codes.shape[1] != len(self.weights):
            raise ModelLoadError(f"the code fitness probe reads {len(self.weights)}-d codes, got {codes.shape[1]}-d")
        logit = ((codes - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-logit))

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"mean": self.mean.astype(np.float32), "scale": self.scale.astype(np.float32),
                   "weights": self.weights.astype(np.float32), "bias": np.array([self.bias], np.float32),
                   "split": np.array([self.split], np.float32)}, str(path))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CodeFitness:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
            probe = cls(tensors["mean"].astype(np.float64), tensors["scale"].astype(np.float64),
                        tensors["weights"].astype(np.float64), float(tensors["bias"][0]), float(tensors["split"][0]))
        except (OSError, KeyError, SafetensorError) as exc:
            raise ModelLoadError(f"{path} holds no code fitness probe; fit one with `idmrag fit-code-fitness`") from exc
        if (not (probe.mean.shape == probe.scale.shape == probe.weights.shape) or (probe.scale <= 0).any()
                or not 0.0 < probe.split < 1.0):
            raise ModelLoadError(f"{path} holds a malformed code fitness probe; fit it again")
        return probe
