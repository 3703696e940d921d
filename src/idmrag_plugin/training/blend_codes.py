"""``idmrag blend-codes``: interpolate two codes models in weight space.

Both must be fine-tunes of one model (same architecture, one starting point); the blend
start + alpha * (end - start) often keeps most of a fine-tune's gain while giving back less
of what it cost (WiSE-FT, Wortsman et al. 2022). The packaged codes model is such a blend.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from idmrag_plugin.errors import ConfigError
from idmrag_plugin.generation.encoder import DisentangledFaceVAE

logger = logging.getLogger(__name__)


def blend_codes(start: Path, end: Path, alpha: float, output: Path) -> DisentangledFaceVAE:
    """Write ``start + alpha * (end - start)`` to ``output`` (float16, like train-codes)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be within [0, 1], got {alpha}")
    first, second = DisentangledFaceVAE.from_pretrained(start), DisentangledFaceVAE.from_pretrained(end)
    if first.config != second.config:
        raise ConfigError(f"cannot blend codes models of different configs: {first.config} vs {second.config}")
    a, b = first.state_dict(), second.state_dict()
    blended = {
        name: (a[name].float() + alpha * (b[name].float() - a[name].float())).to(a[name].dtype)
        if a[name].is_floating_point() else b[name]
        for name in a
    }
    model = DisentangledFaceVAE(first.config)
    model.load_state_dict(blended)
    model.eval()
    model.save_pretrained(output, dtype=torch.float16)
    logger.info("wrote %s = %s + %.2f * (%s - %s)", output, start, alpha, end, start)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="idmrag blend-codes", description=__doc__)
    parser.add_argument("start", type=Path, help="codes_vae folder the fine-tune started from")
    parser.add_argument("end", type=Path, help="codes_vae folder of the fine-tune")
    parser.add_argument("--alpha", type=float, required=True, help="0 = start, 1 = end")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    blend_codes(args.start, args.end, args.alpha, args.output)
