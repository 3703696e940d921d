"""What a user sees: scikit-image's astronaut and cameraman anonymized by each generator,
shown at 1:1 pixels around the face (no resampling of the output), next to the original.

    python benchmarks/renderer_grid.py --out docs/renderer_grid.png --generators vae-decode,renderer,renderer-lcm

A ``-unrefined`` suffix (``renderer-lcm-unrefined@1``) shows the renderer's 64 px drawing
resized up instead of refined at 128 px; ``-poisson`` / ``-tone`` (last) another
``face_blend`` than the default.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.config import DEFAULT_FACE_BLEND

logger = logging.getLogger("renderer_grid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/renderer_grid.png")
    parser.add_argument("--renderer-weights", default=None, help="OUTPUT/renderer of train-renderer (default: packaged)")
    parser.add_argument("--code-lcm-weights", default=None, help="OUTPUT/lcm of train-code-lcm (default: packaged)")
    parser.add_argument("--attribute-probes", default=None,
                        help="attribute probes fitted for --renderer-weights (fit-attribute-probes; default: packaged)")
    parser.add_argument("--refiner-weights", default=None, help="OUTPUT/refiner of train-refiner (default: packaged)")
    parser.add_argument("--generators", default="vae-decode,renderer,renderer-lcm")
    parser.add_argument("--side", type=int, default=220, help="side of the 1:1 window around each face")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    photos = {"astronaut": skimage.data.astronaut(),
              "cameraman": np.repeat(skimage.data.camera()[..., None], 3, axis=2)}
    columns: dict[str, dict[str, np.ndarray]] = {"original": photos}
    boxes: dict[str, tuple[float, ...]] = {}
    for name in args.generators.split(","):
        generator, _, steps = name.partition("@")  # e.g. renderer-lcm@1
        blend = next((b for b in ("poisson", "tone") if generator.endswith(f"-{b}")), DEFAULT_FACE_BLEND)
        generator = generator.removesuffix(f"-{blend}")
        refine = not generator.endswith("-unrefined")
        generator = generator.removesuffix("-unrefined")
        own = {"renderer": args.renderer_weights, "renderer-lcm": args.code_lcm_weights}.get(generator)
        weights = Path(own) if own else None
        engine = FaceAnonymizer(AnonymizerConfig(generator=generator, generator_weights=weights, rotations=(0,),
                                                 generator_steps=int(steps) if steps else None,
                                                 refine_faces=refine, face_blend=blend, cache_size=0, threads=args.threads))
        if engine.generator is not None and hasattr(engine.generator, "secret"):
            engine.generator.secret = b"renderer-grid"  # one secret: the columns draw the same pseudonyms
        if args.renderer_weights and generator == "renderer-lcm" and engine.generator is not None:
            engine.generator.renderer_dir = Path(args.renderer_weights)  # the LCM's codes drawn by that renderer
        if args.attribute_probes and engine.generator is not None and hasattr(engine.generator, "attribute_probes_path"):
            engine.generator.attribute_probes_path = Path(args.attribute_probes)
        if args.refiner_weights and refine and getattr(engine.generator, "refiner_dir", None) is not None:
            engine.generator.refiner_dir = Path(args.refiner_weights)
        columns[name] = {}
        for key, photo in photos.items():
            result = engine.anonymize(photo)
            columns[name][key] = np.asarray(result.pixels)
            boxes.setdefault(key, tuple(result.faces[0].detection.box))
            logger.info("%s on %s: %s", name, key, [(f.method, f.attempts) for f in result.faces])
    side, header = args.side, 18
    grid = Image.new("RGB", (len(columns) * side, len(photos) * side + header), "white")
    draw = ImageDraw.Draw(grid)
    for col, (title, images) in enumerate(columns.items()):
        draw.text((col * side + 4, 3), title, fill="black")
        for row, key in enumerate(photos):
            x1, y1, x2, y2 = boxes[key]
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            image = images[key]
            left = int(np.clip(cx - side // 2, 0, image.shape[1] - side))
            top = int(np.clip(cy - side // 2, 0, image.shape[0] - side))
            window = image[top : top + side, left : left + side]
            grid.paste(Image.fromarray(window), (col * side, header + row * side))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
