"""``idmrag fit-sampler``: encode the training faces with the trained VAE and fit the
identity sampler (mixture prior, rejection levels, attribute probes)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from idmrag_plugin.generation.sampler import IdentitySampler
from idmrag_plugin.generation.vae_generator import VAEDecodeGenerator
from idmrag_plugin.training.data import unpack_crops

logger = logging.getLogger(__name__)


def encode_all(generator: VAEDecodeGenerator, crops: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    ids, attrs = [], []
    for start in range(0, len(crops), batch):
        i, a = generator.encode(crops[start : start + batch])
        ids.append(i)
        attrs.append(a)
    return np.concatenate(ids), np.concatenate(attrs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="idmrag fit-sampler", description=__doc__)
    parser.add_argument("--data", required=True, help=".npz from idmrag prepare-data")
    parser.add_argument("--model", required=True, help="folder with the trained VAE")
    parser.add_argument("--output", required=True, help="sampler .safetensors to write")
    parser.add_argument("--components", type=int, default=16)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = np.load(args.data, allow_pickle=False)
    train = data["split"] == "train"
    crops = unpack_crops(data)[train]
    codec = VAEDecodeGenerator(args.model, sampler_path=Path("unused"))
    from idmrag_plugin.generation.encoder import DisentangledFaceVAE

    codec._model = DisentangledFaceVAE.from_pretrained(args.model)  # encode only; no sampler yet
    codes, _ = encode_all(codec, crops)
    sampler = IdentitySampler.fit(
        codes, data["identity"][train], args.components,
        gender=data["gender"][train].astype(np.int64), age=data["age"][train].astype(np.int64),
    )
    sampler.save(Path(args.output))
    logger.info("sampler: distinct_cos=%.3f density_floor=%.1f", sampler.distinct_cos, sampler.density_floor)
    logger.info("fitted on %d codes", len(codes))


if __name__ == "__main__":
    main()
