"""What the generator's drawing screens change in the default engine's faces, as a user sees them.

LFW photos (the first photo of randomly drawn people) go through the default engine (fixed
secret); each generated face is aligned, in the photo and in the output, with the detection's
landmarks into the 128 px canonical crop, and read there after the paste:

* the forehead: ``forehead_smudge`` (the share of the forehead band darker than the cheeks,
  beyond the photo's share: :mod:`idmrag_plugin.generation.forehead`); how many faces are over
  ``SMUDGE_LIMIT``;
* the chin: ``chin_smudge`` (the same for the chin-and-jaw band:
  :mod:`idmrag_plugin.generation.chin`); how many faces are over ``CHIN_SMUDGE_LIMIT``, and how
  many bearded chins were drawn bare (the same statistic under ``-BEARD_DROP_LIMIT``);
* the eyes: ``eye_darkening`` (the same for two boxes around the eyes:
  :mod:`idmrag_plugin.generation.eyes`); how many faces are over ``EYE_DARKENING_LIMIT``;
* the mouth: ``mouth_opening`` of photo and output (:mod:`idmrag_plugin.generation.expression`);
  their correlation, how many differ by more than ``MOUTH_TOLERANCE``, and how many open mouths
  (over 0.08) came out closed (under 0.03);
* glasses: how many faces whose photo reads bare (under ``PHOTO_BARE_LIMIT``, by the photo's
  probe) read as wearing glasses after (``GLASSES_LIMIT`` or more, by the drawing's probe), and
  how many whose photo reads as wearing them (``PHOTO_GLASSES_LIMIT``) read clearly bare after
  (under ``DROPPED_GLASSES_LIMIT``): the packaged probes
  (:mod:`idmrag_plugin.generation.glasses`), the screen's own judges: look at the faces too
  (``--glasses-sheet``).

With the screens as shipped and, with ``--off forehead`` / ``--off chin`` / ``--off beard`` / ``--off eyes`` /
``--off mouth`` / ``--off glasses`` (or several,
comma-separated), again with those screens turned off; ``--sheet`` writes the faces with the
worst forehead smudges (photo, output) side by side, ``--glasses-sheet`` the faces whose photo
reads as wearing glasses, ``--chin-sheet`` / ``--eyes-sheet`` those over the chin's / the eyes' limit.

    python benchmarks/drawing_screens.py --lfw ../shared/data/lfw --photos 150 --off mouth
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from idmrag_plugin import FaceAnonymizer
from idmrag_plugin.engine.align import align_face
from idmrag_plugin.engine.face_outline import FaceOutliner
from idmrag_plugin.engine.oracles import build_oracle
from idmrag_plugin.generation.chin import chin_smudge
from idmrag_plugin.generation.expression import mouth_opening
from idmrag_plugin.generation.eyes import eye_darkening
from idmrag_plugin.generation.forehead import forehead_smudge
from idmrag_plugin.generation.glasses import (
    DROPPED_GLASSES_LIMIT,
    GLASSES_LIMIT,
    PHOTO_BARE_LIMIT,
    PHOTO_GLASSES_LIMIT,
    GlassesProbes,
)
from idmrag_plugin.generation.renderer_generator import (
    BEARD_DROP_LIMIT,
    CHIN_SMUDGE_LIMIT,
    EYE_DARKENING_LIMIT,
    MOUTH_TOLERANCE,
    SMUDGE_LIMIT,
)
from idmrag_plugin.weights import GLASSES_PROBE_FILE, packaged

logger = logging.getLogger("drawing_screens")
SCREENS = {"forehead": "smudged", "chin": "smudged_chin", "eyes": "darkened_eyes", "beard": "dropped_beard", "mouth": "misexpressed",
           "glasses": "glasses_off"}


def read_faces(paths: list[Path], off: list[str], secret: bytes) -> list[tuple[float, str, np.ndarray, np.ndarray]]:
    """(smudge, photo name, photo crop, output crop) of every generated face of ``paths``,
    with the screens named in ``off`` turned off."""
    engine = FaceAnonymizer()
    engine.generator.secret = secret
    for screen in off:
        setattr(engine.generator, SCREENS[screen], lambda shown, face, descriptor=None: 0.0)
    found = []
    for path in paths:
        photo = np.asarray(Image.open(path).convert("RGB"))
        result = engine.anonymize(photo)
        output = np.asarray(result.image)
        for face in result.faces:
            if face.method != "generated":
                continue
            before = align_face(photo, face.detection.landmarks, 128).crop
            after = align_face(output, face.detection.landmarks, 128).crop
            found.append((forehead_smudge(after, before), f"{path.parent.name}#{face.index}", before, after))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, required=True, help="LFW folder (images/<person>/*.jpg)")
    parser.add_argument("--photos", type=int, default=150)
    parser.add_argument("--seed", type=int, default=11, help="which people are drawn")
    parser.add_argument("--secret", default="forehead-rate")
    parser.add_argument("--off", help="screens to also run without (forehead, mouth; comma-separated)")
    parser.add_argument("--sheet", type=Path, help="PNG of the worst faces, photo beside output")
    parser.add_argument("--chin-sheet", type=Path, help="PNG of the faces over the chin's limit, photo beside output")
    parser.add_argument("--eyes-sheet", type=Path, help="PNG of the faces over the eyes' limit, photo beside output")
    parser.add_argument("--glasses-sheet", type=Path, help="PNG of the faces read as wearing glasses, photo beside output")
    parser.add_argument("--worst", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/drawing_screens.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    people = sorted((args.lfw / "images").iterdir())
    if not people:
        parser.error(f"no people under {args.lfw / 'images'}")
    chosen = np.random.default_rng(args.seed).choice(len(people), min(args.photos, len(people)), replace=False)
    paths = [min(people[i].glob("*.jpg")) for i in chosen]
    off = [name.strip() for name in args.off.split(",")] if args.off else []
    if any(name not in SCREENS for name in off):
        parser.error(f"--off takes {', '.join(SCREENS)}, got {args.off}")
    report: dict[str, object] = {"photos": len(paths), "smudge limit": SMUDGE_LIMIT, "mouth tolerance": MOUTH_TOLERANCE,
                                 "glasses limits (photo bare, photo wearing, drawing)": [PHOTO_BARE_LIMIT, PHOTO_GLASSES_LIMIT,
                                                                         GLASSES_LIMIT]}
    probes = GlassesProbes.load(packaged(GLASSES_PROBE_FILE))
    dlib = build_oracle("dlib")
    sheets, glasses_sheets, chin_sheets, eyes_sheets = {}, {}, {}, {}
    outliner = FaceOutliner()
    for turned_off in ([[], off] if off else [[]]):
        started = time.perf_counter()
        found = read_faces(paths, turned_off, args.secret.encode())
        seconds = time.perf_counter() - started
        scores = np.array([s for s, *_ in found])
        mouths = np.array([[mouth_opening(outliner.points(crop)) for crop in (before, after)]
                           for _, _, before, after in found])
        described = [(before, after, dlib.embed_aligned(np.stack([before, after]))) for _, _, before, after in found]
        glasses = np.array([[probes.photo.read(before[None], e[:1])[0], probes.drawing.read(after[None], e[1:])[0]]
                            for before, after, e in described])
        key = "as shipped" if not turned_off else "without " + " and ".join(turned_off)
        report[key] = {
            "faces": len(found), "seconds": round(seconds, 1), "forehead over limit": int((scores > SMUDGE_LIMIT).sum()),
            "chin over limit": int(sum(chin_smudge(after, before) > CHIN_SMUDGE_LIMIT for _, _, before, after in found)),
            "beards dropped": int(sum(-chin_smudge(after, before) > BEARD_DROP_LIMIT for _, _, before, after in found)),
            "eyes over limit": int(sum(eye_darkening(after, before) > EYE_DARKENING_LIMIT for _, _, before, after in found)),
            "mouth correlation": round(float(np.corrcoef(mouths.T)[0, 1]), 3),
            "mouth off by more than the tolerance": int((np.abs(mouths[:, 0] - mouths[:, 1]) > MOUTH_TOLERANCE).sum()),
            "open mouths": int((mouths[:, 0] > 0.08).sum()),
            "open mouths drawn closed": int(((mouths[:, 0] > 0.08) & (mouths[:, 1] < 0.03)).sum()),
            "bare faces": int((glasses[:, 0] < PHOTO_BARE_LIMIT).sum()),
            "bare faces drawn with glasses": int(((glasses[:, 0] < PHOTO_BARE_LIMIT)
                                                  & (glasses[:, 1] >= GLASSES_LIMIT)).sum()),
            "faces with glasses": int((glasses[:, 0] >= PHOTO_GLASSES_LIMIT).sum()),
            "faces with glasses drawn bare": int(((glasses[:, 0] >= PHOTO_GLASSES_LIMIT)
                                                  & (glasses[:, 1] < DROPPED_GLASSES_LIMIT)).sum()),
            "worst foreheads": [(round(s, 3), name) for s, name, *_ in sorted(found, key=lambda f: -f[0])[:args.worst]]}
        print(key, {k: v for k, v in report[key].items() if k != "worst foreheads"})
        sheets[key] = sorted(found, key=lambda f: -f[0])[:args.worst]
        chin_sheets[key] = [face for face in found if chin_smudge(face[3], face[2]) > CHIN_SMUDGE_LIMIT]
        eyes_sheets[key] = [face for face in found if eye_darkening(face[3], face[2]) > EYE_DARKENING_LIMIT]
        glasses_sheets[key] = [face for face, read in zip(found, glasses[:, 0], strict=True)
                               if read >= PHOTO_GLASSES_LIMIT]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for path, chosen_faces in ((args.sheet, sheets), (args.glasses_sheet, glasses_sheets), (args.chin_sheet, chin_sheets),
                               (args.eyes_sheet, eyes_sheets)):
        if path:
            write_sheet(path, [face for key in chosen_faces for face in chosen_faces[key]])


def write_sheet(path: Path, faces: list[tuple[float, str, np.ndarray, np.ndarray]]) -> None:
    """Photo beside output, four pairs a row (a last short row padded with black)."""
    tiles = [np.concatenate([cv2.resize(before, (160, 160)), cv2.resize(after, (160, 160))], 1)
             for _, _, before, after in faces]
    tiles += [np.zeros((160, 320, 3), np.uint8)] * (-len(tiles) % 4)
    if tiles:
        Image.fromarray(np.concatenate([np.concatenate(tiles[i:i + 4], 1) for i in range(0, len(tiles), 4)], 0)).save(path)


if __name__ == "__main__":
    main()
