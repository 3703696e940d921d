"""The generator slot: a replacement identity in, an aligned face out.

Every face a generator returns is pasted back and then verified by the oracle ensemble;
a generator is never trusted. Learned generators (VAE decode, latent consistency model)
implement :class:`FaceGenerator`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GenerationRequest:
    """What a generator gets for one attempt at one face.

    Attributes:
        face: the original face in the canonical aligned crop, RGB uint8 (S, S, 3).
        attempt: 0 for the first try; later tries must give a different identity.
        seed: deterministic seed of this face and attempt.
        identity: replacement identity code chosen by a sampler, when the engine has one.
        original_embeddings: the oracles' embeddings of the original face (L2-normalised, by
            oracle name, from the photo at the detector's landmarks), when the engine has
            computed them for verification; a generator may read perceived attributes from them.
            Exact embeddings only: an oracle that screens through an int8 copy (FaceNet on
            ONNX Runtime, see engine.screening) is left out.
        thresholds: the verifier's similarity thresholds (by oracle name, at the engine's
            privacy level) for the aligned view of each oracle that judges the face: a
            generator may screen out a drawing the verifier would recognise before it is pasted.
        in_frame: for a face the photo's frame cuts, which of the crop's pixels lie inside the
            photo (S, S) bool; None when all do. Only those are pasted: the oracles see the
            rest of their view as black on both the original and the output.
    """

    face: np.ndarray
    attempt: int
    seed: int
    identity: np.ndarray | None = None
    original_embeddings: Mapping[str, np.ndarray] | None = None
    thresholds: Mapping[str, float] | None = None
    in_frame: np.ndarray | None = None


class FaceGenerator(ABC):
    """Turns a request into a new face in the same canonical crop (same shape and dtype)."""

    name: str = "generator"
    #: How the engine pastes this generator's crops back. A generator that redraws the whole
    #: crop gets its colours matched to the original inside the face ellipse; one that keeps
    #: the crop's own context (an inpainter) is pasted as drawn, over its grown ellipse.
    colour_match: bool = True
    paste_grow: float = 1.0

    def paste_grow_for(self, attempt: int) -> float:
        """The face ellipse's growth for pasting this generator's crop at ``attempt``."""
        return self.paste_grow

    def paste_grow_of(self, request: GenerationRequest) -> float:
        """The face ellipse's growth for pasting the crop drawn for ``request`` (the engine's
        call; by default :meth:`paste_grow_for` its attempt)."""
        return self.paste_grow_for(request.attempt)

    @abstractmethod
    def generate(self, request: GenerationRequest) -> np.ndarray:
        """Return an RGB uint8 array shaped like ``request.face``; raise
        :class:`~idmrag_plugin.errors.UnfitDrawingError` to refuse this attempt (the engine
        tries the next one; any other exception fails the attempt and is noted on the face)."""

    def accepted(self, request: GenerationRequest) -> None:
        """Told by the engine when the face drawn for ``request`` was verified anonymous (a
        generator that keeps pseudonyms can try that one first for the person's next photo)."""
