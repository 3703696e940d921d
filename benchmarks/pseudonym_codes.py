"""How well each pseudonym source suits the person, before anything is drawn.

For held-out faces of a prepared dataset, the renderer's pseudonym code is chosen by the
one-pass path (the identity sampler's Gaussian mixture, redrawn until the renderer would draw
the person's perceived gender and age) and by the code LCM at 1, 2 and 4 steps. Reported per
source: how often the code the renderer gets draws the person's gender (code probes against
the photo's reading) and how decisively (the code probe's mean |logit|), the mean age gap in
years, the mean cosine between pseudonym and original codes (lower: further from the person),
how often the code passes the rules it is held to (distinct, realistic, nobody real: the
sampler's level for its own draws, the model's novelty level for the LCM's), and the time per
code. The bench (``idmrag bench``) then
judges the drawn faces with models the project never trained against.

    python benchmarks/pseudonym_codes.py --data runs/faces128.npz --limit 300 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="faces .npz from `idmrag prepare-data` (its val split is used)")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--code-lcm", default=None, help="OUTPUT/lcm of `idmrag train-code-lcm` (default: packaged)")
    parser.add_argument("--steps", default="1,2,4")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/pseudonym_codes.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from idmrag_plugin.generation.attributes import AttributeProbes
    from idmrag_plugin.generation.renderer_generator import RendererGenerator
    from idmrag_plugin.generation.renderer_lcm_generator import RendererLCMGenerator
    from idmrag_plugin.training.data import unpack_crops
    from idmrag_plugin.weights import (
        ATTRIBUTE_PROBES_FILE,
        CODE_LCM_DIR,
        CODES_VAE_DIR,
        RENDERER_DIR,
        SAMPLER_FILE,
        STUDENT_FILE,
        packaged,
    )

    data = np.load(args.data, allow_pickle=False)
    faces = unpack_crops(data)[data["split"] == "val"][: args.limit]
    common = (packaged(RENDERER_DIR), packaged(CODES_VAE_DIR), packaged(SAMPLER_FILE))
    probes_path, student = packaged(ATTRIBUTE_PROBES_FILE), packaged(STUDENT_FILE)
    lcm_dir = Path(args.code_lcm) if args.code_lcm else packaged(CODE_LCM_DIR)
    sources = {"sampler (one-pass renderer)": RendererGenerator(*common, secret=b"bench", attribute_probes_path=probes_path,
                                                                student_path=student)}
    for steps in (int(s) for s in args.steps.split(",")):
        sources[f"code LCM @{steps}"] = RendererLCMGenerator(lcm_dir, *common, probes_path, student, steps=steps,
                                                             secret=b"bench")
    probes = AttributeProbes.load(probes_path)
    results = {}
    for name, generator in sources.items():
        generator._load()
        gender, margin, age_gap, accepted, closeness, ms = [], [], [], [], [], []
        novelty = (generator._load_code_model().config.novelty_cos or None
                   if isinstance(generator, RendererLCMGenerator) else None)
        for face in faces:
            code = generator.encode(face[None])[0][0]
            generator._note_person(code, face)
            wanted = generator._readings[generator._seed_code(code).tobytes()]
            start = time.perf_counter()
            z = generator.replacement_code(code, 0)
            ms.append(1000 * (time.perf_counter() - start))
            drawn = probes.read_code(z[None])[0]
            gender.append(drawn.gender == wanted.gender)
            age_gap.append(abs(drawn.years - wanted.years))
            accepted.append(bool(generator._sampler.judge(code, z[None], novelty)[1][0]))
            weight, bias = probes.code_gender
            margin.append(abs(float(z @ weight + bias)))
            closeness.append(float(z @ code / (np.linalg.norm(z) * np.linalg.norm(code))))
        results[name] = {"faces": len(faces), "drawn gender = photo's": round(100 * float(np.mean(gender)), 1),
                         "drawn-gender logit margin": round(float(np.mean(margin)), 2),
                         "age gap (years)": round(float(np.mean(age_gap)), 1),
                         "cosine to the original's code": round(float(np.mean(closeness)), 3),
                         "passes sampler rules": round(100 * float(np.mean(accepted)), 1),
                         "ms per code (median)": round(statistics.median(ms), 1)}
        print(f"{name}: {json.dumps(results[name])}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"data": args.data, "threads": torch.get_num_threads(), **results}, indent=2))


if __name__ == "__main__":
    main()
