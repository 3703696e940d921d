"""The generator's networks on ONNX Runtime: the codes encoder, the renderer and the refiner.

At batch 1 on this project's CPU (one thread) ONNX Runtime runs the encoder in 9.8 ms against
torch's 16.3, the renderer in 5.9 against 9.2 and the refiner in 14.1 against 18.9, with
outputs equal to ~3e-6. Each network is exported once per weights (their sha256 names the
export) into the cache folder and checked against the torch module at every load, as the
oracles' are (:mod:`idmrag_plugin.engine.onnx_runtime`); where that fails, torch runs. The
torch modules stay the reference and the path of training and of other devices.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from idmrag_plugin.engine.onnx_runtime import OnnxNetwork, onnx_network, wants_onnxruntime

logger = logging.getLogger(__name__)


class EncoderMeans(nn.Module):
    """The codes VAE's posterior means: crops (N,3,S,S) -> (id_mu (N,D), attr_mu (N,C,s,s))."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        id_mu, _, attr_mu, _ = self.vae.encode(x)
        return id_mu, attr_mu


class RendererGraph(nn.Module):
    """The renderer with its noise maps as inputs: (context, mask, z_id, z_attr, *noise)."""

    def __init__(self, renderer: nn.Module) -> None:
        super().__init__()
        self.renderer = renderer

    def forward(self, context: torch.Tensor, mask: torch.Tensor, z_id: torch.Tensor, z_attr: torch.Tensor,
                *noise: torch.Tensor) -> torch.Tensor:
        return self.renderer(context, mask, z_id, z_attr, noise=list(noise))


class RefinerGraph(nn.Module):
    """The refiner with its noise maps as inputs: (context, mask, drawing, *noise)."""

    def __init__(self, refiner: nn.Module) -> None:
        super().__init__()
        self.refiner = refiner

    def forward(self, context: torch.Tensor, mask: torch.Tensor, drawing: torch.Tensor,
                *noise: torch.Tensor) -> torch.Tensor:
        return self.refiner(context, mask, drawing, noise=list(noise))


def on_onnxruntime(graph: nn.Module, input_shapes: list[tuple[int, ...]], kind: str, weights: Path, runtime: str,
                   device: str, cache_dir: Path | None = None, threads: int | None = None) -> OnnxNetwork | None:
    """``graph`` on ONNX Runtime when ``runtime`` asks for it on this device, else None.

    ``kind`` and the weights' sha256 name the export, so that engines with other weights
    (``generator_weights``) keep exports of their own. ``runtime="onnxruntime"`` makes a
    failure an error; ``"auto"`` falls back to torch (None)."""
    from idmrag_plugin.errors import ModelLoadError
    from idmrag_plugin.generation.latent_diffusion import codes_fingerprint
    from idmrag_plugin.weights import cache_dir as resolve_cache

    if not wants_onnxruntime(runtime, device):
        return None
    try:
        sha = codes_fingerprint(weights)  # the sha256 a weights folder's config records
    except ModelLoadError:  # without it an export could not be told apart from another's
        logger.warning("%s has no sha256 in its config: its %s runs on torch", weights, kind)
        return None
    return onnx_network(graph.eval(), input_shapes, f"{kind}_{sha[:16]}", resolve_cache(cache_dir), threads,
                        required=runtime == "onnxruntime")
