"""Picture grid of the identity codes on photos that ship with scikit-image:
rows = astronaut, cameraman; columns = original crop, reconstruction, swap (the other's
z_id with this face's z_attr), and the face in the engine's anonymized output.

    python benchmarks/codes_grid.py --out docs/codes_grid.png
"""

from __future__ import annotations

import argparse

import numpy as np
import skimage.data
from PIL import Image, ImageDraw

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.align import align_face


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/codes_grid.png")
    args = parser.parse_args()
    engine = FaceAnonymizer(AnonymizerConfig(generator="vae-decode"))
    generator = engine.generator
    photos = [skimage.data.astronaut(), np.repeat(skimage.data.camera()[..., None], 3, axis=2)]
    faces, results = [], []
    for photo in photos:
        (det,) = engine.detector.detect(photo)
        faces.append(align_face(photo, det.landmarks, 128).crop)
        result = engine.anonymize(photo)
        results.append(align_face(result.pixels, det.landmarks, 128).crop)
    ids, attrs = generator.encode(np.stack(faces))
    recon = generator.decode(ids, attrs, 128)
    swaps = generator.decode(ids[::-1], attrs, 128)
    tile, header = 128, 18
    grid = Image.new("RGB", (4 * tile, 2 * tile + header), "white")
    draw = ImageDraw.Draw(grid)
    for col, title in enumerate(["original", "reconstruction", "swap z_id", "anonymized"]):
        draw.text((col * tile + 4, 3), title, fill="black")
    for row in range(2):
        for col, image in enumerate([faces[row], recon[row], swaps[row], results[row]]):
            grid.paste(Image.fromarray(image), (col * tile, header + row * tile))
    grid.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
