"""The first learned generator: encode the face, replace z_id by a sampled pseudonym code,
decode with the face's own z_attr.

Pseudonyms are consistent within one generator instance: a face whose identity code is
close to one already seen (cosine above the sampler's different-person level) reuses that
face's replacement, so one person across the images of a session gets one synthetic
identity. The registry lives as long as the instance (its scope); a new instance, or a new
``secret``, gives unlinkable pseudonyms.
"""

from __future__ import annotations

import logging
import secrets
import threading
from pathlib import Path

import cv2
import numpy as np

from idmrag_plugin.engine.generator import FaceGenerator, GenerationRequest
from idmrag_plugin.generation.sampler import IdentitySampler, pseudonym_key

logger = logging.getLogger(__name__)

#: Redraws of a pseudonym code that does not suit the person (see ``mismatch``).
REDRAWS = 16
#: Attempts (counted from 0) before which a pseudonym must suit the person. A pseudonym of the
#: person's gender is nearer them in a recognizer's eyes, so it fails verification more often;
#: after a few failures a verified face of other attributes beats one that fails closed.
SUITED_ATTEMPTS = 3


class VAEDecodeGenerator(FaceGenerator):
    name = "vae-decode"

    def __init__(
        self,
        model_dir: str | Path,
        sampler_path: str | Path,
        device: str = "cpu",
        secret: bytes | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.sampler_path = Path(sampler_path)
        self.device = device
        self.secret = secret if secret is not None else secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._model = None
        self._sampler: IdentitySampler | None = None
        self._registry: list[tuple[np.ndarray, np.ndarray]] = []  # (unit code, key seed)

    def _load(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is None:
                from idmrag_plugin.generation.encoder import DisentangledFaceVAE

                self._sampler = IdentitySampler.load(self.sampler_path)
                self._model = DisentangledFaceVAE.from_pretrained(self.model_dir).to(self.device)

    def encode(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) uint8 canonical crops -> (id_mu, attr_mu) as numpy."""
        import torch

        self._load()
        assert self._model is not None
        size = self._model.config.image_size
        small = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in faces])
        x = torch.as_tensor(small, device=self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.inference_mode():
            id_mu, _, attr_mu, _ = self._model.encode(x)
        return id_mu.cpu().numpy(), attr_mu.cpu().numpy()

    def decode(self, z_id: np.ndarray, z_attr: np.ndarray, out_size: int) -> np.ndarray:
        import torch

        self._load()
        assert self._model is not None
        with torch.inference_mode():
            y = self._model.decode(
                torch.as_tensor(np.ascontiguousarray(np.atleast_2d(z_id)), device=self.device).float(),
                torch.as_tensor(np.ascontiguousarray(z_attr), device=self.device).float().reshape(-1, *self._attr_shape()),
            )
        images = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return np.stack([cv2.resize(im, (out_size, out_size), interpolation=cv2.INTER_CUBIC) for im in images])

    def _attr_shape(self) -> tuple[int, int, int]:
        assert self._model is not None
        c = self._model.config
        return (c.attr_channels, c.attr_size, c.attr_size)

    def _seed_code(self, code: np.ndarray) -> np.ndarray:
        """The registered code of the same person, or this one (registered now)."""
        assert self._sampler is not None
        unit = code / max(float(np.linalg.norm(code)), 1e-12)
        with self._lock:
            for known, seed in self._registry:
                if float(known @ unit) >= self._sampler.distinct_cos:
                    return seed
            self._registry.append((unit, code))
        return code

    def replacement_code(self, code: np.ndarray, attempt: int, variant: int = 0) -> np.ndarray:
        """The pseudonym code for a face whose identity code is ``code`` at ``attempt``;
        ``variant`` > 0 gives further candidates for the same attempt."""
        self._load()
        assert self._sampler is not None
        seed = self._seed_code(code)
        keep = self.sampler_keeps_attributes()
        z, info = self._sampler.sample(code, pseudonym_key(self.secret, seed, attempt, variant), keep_attributes=keep)
        if not info.accepted:
            logger.info("sampler found no fully acceptable code in %d tries", info.tries)
        if attempt >= SUITED_ATTEMPTS:
            return z
        best, best_mismatch = z, self.mismatch(seed, z)
        for redraw in range(1, REDRAWS + 1):
            if best_mismatch <= 0.0:
                break
            # deterministic: the same person and attempt redraw the same way
            z, _ = self._sampler.sample(code, pseudonym_key(self.secret, seed, attempt + 1000 * redraw, variant),
                                        keep_attributes=keep)
            mismatch = self.mismatch(seed, z)
            if mismatch < best_mismatch:
                best, best_mismatch = z, mismatch
        return best

    def sampler_keeps_attributes(self) -> bool:
        """Whether the sampler's own gender and age-band probes on the codes should filter the
        pseudonyms (a generator that judges attributes its own way turns them off)."""
        return True

    def mismatch(self, person: np.ndarray, code: np.ndarray) -> float:
        """How badly a sampled pseudonym ``code`` suits the person whose registered code is
        ``person``: 0 when it suits; otherwise up to ``REDRAWS`` more are drawn and the least
        bad is kept. Any code suits here."""
        return 0.0

    def generate(self, request: GenerationRequest) -> np.ndarray:
        id_mu, attr_mu = self.encode(request.face[None])
        z = request.identity if request.identity is not None else self.replacement_code(id_mu[0], request.attempt)
        return self.decode(z, attr_mu, request.face.shape[0])[0]
