"""Latent diffusion generators: the consistency-distilled model (1-4 steps) and its teacher.

They share the VAE-decode generator's codes and pseudonym registry: the face is encoded into
(z_id, z_attr), z_id is replaced by the session's pseudonym code from the sampler, and the
diffusion model renders the face from noise conditioned on (z_id', z_attr). The engine still
verifies every rendered face with the oracles and fails closed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from idmrag_plugin.engine.generator import GenerationRequest
from idmrag_plugin.errors import ConfigError, ModelLoadError
from idmrag_plugin.generation.sampler import noise_seed
from idmrag_plugin.generation.vae_generator import VAEDecodeGenerator


class LatentDiffusionGenerator(VAEDecodeGenerator):
    """Render replacement faces with a :class:`~idmrag_plugin.generation.latent_diffusion.FaceLatentDiffusion`.

    Args:
        diffusion_dir: folder written by ``idmrag train-lcm`` (``OUTPUT/lcm`` or ``OUTPUT/teacher``).
        model_dir, sampler_path: the codes VAE and identity sampler (as for VAE-decode).
        steps: sampling steps (1-4 for an LCM; e.g. 50 for the teacher).
    """

    def __init__(
        self,
        diffusion_dir: str | Path,
        model_dir: str | Path,
        sampler_path: str | Path,
        steps: int = 4,
        device: str = "cpu",
        secret: bytes | None = None,
    ) -> None:
        super().__init__(model_dir, sampler_path, device=device, secret=secret)
        if steps < 1:
            raise ConfigError(f"sampling steps must be at least 1, got {steps}")
        self.diffusion_dir = Path(diffusion_dir)
        self.steps = steps
        self._diffusion = None
        self._diffusion_lock = threading.Lock()

    @property
    def name(self) -> str:  # type: ignore[override]
        kind = self._diffusion.config.kind if self._diffusion is not None else "ldm"
        return f"{kind}@{self.steps}"

    def _load_diffusion(self):
        if self._diffusion is None:
            with self._diffusion_lock:
                if self._diffusion is None:
                    from idmrag_plugin.generation.latent_diffusion import (
                        FaceLatentDiffusion,
                        codes_fingerprint,
                    )

                    model = FaceLatentDiffusion.from_pretrained(self.diffusion_dir)
                    trained_on = model.config.extra.get("codes_sha256")
                    if trained_on is not None and trained_on != codes_fingerprint(self.model_dir):
                        raise ModelLoadError(
                            f"{self.diffusion_dir} was trained on codes model {trained_on[:12]}, not on "
                            f"{self.model_dir}; retrain it with `idmrag train-lcm --codes {self.model_dir}`"
                        )
                    self._diffusion = model.to(self.device)
        return self._diffusion

    def generate(self, request: GenerationRequest) -> np.ndarray:
        import torch

        from idmrag_plugin.generation.latent_diffusion import sample_latents

        model = self._load_diffusion()
        id_mu, attr_mu = self.encode(request.face[None])
        if request.identity is None:
            self._seed_code(id_mu[0], request.original_embeddings)  # the person, by dlib where the request says
        z = request.identity if request.identity is not None else self.replacement_code(id_mu[0], request.attempt)
        # The start noise follows the pseudonym, not the photo: one person's replacement code is
        # rendered the same way in every photo of the session (consistency), and a retry, which
        # draws another code, gets other noise too.
        generator = torch.Generator().manual_seed(noise_seed(z))
        z_id = torch.as_tensor(np.atleast_2d(z), device=self.device).float()
        z_attr = torch.as_tensor(attr_mu, device=self.device).float()
        faces = sample_latents(model, z_id, z_attr, self.steps, generator)
        image = ((faces[0] + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        size = request.face.shape[0]
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
