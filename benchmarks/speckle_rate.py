"""How often a renderer draws a pseudonym as a mottled mask instead of a face.

For LFW photos (the bench's probes), the default engine's detection, alignment, codes and
person's pseudonym codes (its first ``--codes`` in order of preference) are drawn into each
photo's context by each renderer given, at the renderer's own resolution and before the
refiner; a drawing is *speckled* when its score (chroma + luma share of fine detail inside the
mask, ``RendererGenerator.speckle``) is above its ``SPECKLE_LIMIT``.
Reports the share of speckled drawings, of speckled first choices and of photos whose first
``1 + SPECKLE_ALTERNATES`` codes are all speckled (what the engine's first round of alternates
cannot avoid) and whose first ``1 + SPECKLE_ALTERNATES + FURTHER_ALTERNATES`` are (what its
further alternates cannot), the same for *unfit* drawings (speckled or washed out,
``RendererGenerator.unfitness``), and optionally a sheet with one row of drawings per photo and
renderer.

    python benchmarks/speckle_rate.py --lfw ../shared/data/lfw --limit 60 \
        --renderer packaged --renderer runs/renderer_s15/renderer --sheet /tmp/speckle.png
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.bench.dataset import load_evaluation_set
from idmrag_plugin.bench.runner import load_rgb
from idmrag_plugin.engine.align import align_face
from idmrag_plugin.engine.detect import central_face
from idmrag_plugin.generation.renderer import FaceRenderer
from idmrag_plugin.generation.renderer_generator import (
    FURTHER_ALTERNATES,
    SPECKLE_ALTERNATES,
    SPECKLE_LIMIT,
    RendererGenerator,
)
from idmrag_plugin.weights import RENDERER_DIR, packaged

logger = logging.getLogger("speckle_rate")


def drawings(generator: RendererGenerator, renderer: FaceRenderer, crop: np.ndarray, codes: np.ndarray,
             attr: np.ndarray) -> torch.Tensor:
    """The engine's drawings (K, 3, r, r) of ``codes`` into ``crop``'s context, by ``renderer``
    (run in torch) in place of the generator's own."""
    own = generator._renderer, generator._renderer_onnx
    generator._renderer, generator._renderer_onnx = renderer, None
    try:
        return generator._draw(codes, crop, attr)
    finally:
        generator._renderer, generator._renderer_onnx = own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--limit", type=int, default=60, help="LFW probes (the bench's, from the first)")
    parser.add_argument("--skip", type=int, default=100, help="probes skipped before them")
    parser.add_argument("--codes", type=int, default=1 + SPECKLE_ALTERNATES + FURTHER_ALTERNATES,
                        help="pseudonym codes per photo")
    parser.add_argument("--renderer", action="append", help="renderer folder, or 'packaged' (repeatable)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/speckle_rate.json")
    parser.add_argument("--sheet", default=None, help="PNG: the first 10 photos' drawings, a row per renderer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    folders = args.renderer or ["packaged"]
    renderers = [FaceRenderer.from_pretrained(packaged(RENDERER_DIR) if f == "packaged" else Path(f)) for f in folders]
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0, threads=args.threads))
    generator = engine.generator
    generator.secret = b"idmrag-bench/0"
    evaluation = load_evaluation_set(Path(args.lfw), args.skip + args.limit, 4, 0)
    scores: list[list[np.ndarray]] = [[] for _ in renderers]
    unfitness: list[list[np.ndarray]] = [[] for _ in renderers]
    rows = []
    for probe in evaluation.probes[args.skip:args.skip + args.limit]:
        image = load_rgb(probe.path)
        face = central_face(engine.detector.detect(image), image.shape)
        if face is None:
            continue
        crop = align_face(image, face.landmarks, 128).crop
        id_mu, attr = generator._encoded(crop)
        generator._note_person(id_mu[0], crop)
        codes = generator.pseudonym_codes(id_mu[0], 0, args.codes)
        for k, renderer in enumerate(renderers):
            drawn = drawings(generator, renderer, crop, codes, attr)
            scores[k].append(generator.speckle(drawn))
            unfitness[k].append(generator.unfitness(drawn, crop))
            if args.sheet and len(rows) < 10 * len(renderers):
                pictures = ((drawn.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
                rows.append(np.hstack([cv2.resize(p, (128, 128), interpolation=cv2.INTER_CUBIC) for p in pictures]))
    result = {"probes": len(scores[0]), "codes_per_probe": args.codes, "limit": SPECKLE_LIMIT, "renderers": {}}
    first_round, every_round = 1 + SPECKLE_ALTERNATES, 1 + SPECKLE_ALTERNATES + FURTHER_ALTERNATES
    for folder, rows_of, unfit_rows in zip(folders, scores, unfitness, strict=True):
        s = np.array(rows_of)
        speckled = s > SPECKLE_LIMIT
        unfit = np.array(unfit_rows) > 1.0
        result["renderers"][folder] = {
            "speckled_drawings": round(float(speckled.mean()), 4),
            "speckled_first_choice": round(float(speckled[:, 0].mean()), 4),
            "none_clean_within_alternates": round(float(speckled[:, :first_round].all(axis=1).mean()), 4),
            "median_score": round(float(np.median(s)), 3),
            "unfit_drawings": round(float(unfit.mean()), 4),
            "unfit_first_choice": round(float(unfit[:, 0].mean()), 4),
            "none_fit_within_alternates": round(float(unfit[:, :first_round].all(axis=1).mean()), 4),
        }
        if args.codes >= every_round:
            result["renderers"][folder]["none_clean_within_further_alternates"] = round(
                float(speckled[:, :every_round].all(axis=1).mean()), 4)
            result["renderers"][folder]["none_fit_within_further_alternates"] = round(
                float(unfit[:, :every_round].all(axis=1).mean()), 4)
        logger.info("%s: %s", folder, result["renderers"][folder])
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.sheet and rows:
        cv2.imwrite(args.sheet, cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    main()
