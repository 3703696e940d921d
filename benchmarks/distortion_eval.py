"""Faces in photos stretched out of proportion or cast in one colour: detection recall and
how many stay recognisable.

Each LFW photo (the second of identities with two or more) is distorted (stretched along its
width or height, cubic resampling; cast in green or cyan, or a grey photo printed in green; its
green channel inverted; a black bar over the subject's eyes; a surgical mask; a translucent white, grey or blue
overlay over the subject's head; printed as a halftone or dithered to one bit; through an
editor's emboss, contour or edge filter) and anonymized
by the default engine, with and without the search that looks for such faces
(``stretch_search``, ``grey_search``, ``hog_search``, ``exposure_search``, ``descreen_search``). What an attacker sees is then compared, by each oracle, with the
original's central face: the output resized back to the photo's proportions, its grey levels,
its green channel inverted back, its levels around the face stretched, blurred (recognisable = any
oracle at or above its threshold). Recall counts photos in
which a face was found over the subject's nose.

    python benchmarks/distortion_eval.py --limit 40
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageFilter
from rotation_eval import photos

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import MTCNNDetector, central_face
from idmrag_plugin.engine.oracles import cosine

Distort = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (photo, the subject's five points) -> photo


@dataclass(frozen=True)
class Distortion:
    """How a photo is distorted, the search meant for it, and how an attacker undoes it."""

    distort: Distort
    switch: str
    #: the subject's nose moves by this much along x and y
    scale: tuple[float, float] = (1.0, 1.0)
    #: the attacker's views of an output already resized back to the photo's proportions
    #: (given the subject's five points there)
    undo: Callable[[np.ndarray, np.ndarray], list[np.ndarray]] = lambda seen, points: [seen, grey_of(seen)]


def stretched(axis: str, factor: float) -> Distort:
    def distort(image: np.ndarray, points: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        size = (round(w * factor), h) if axis == "x" else (w, round(h * factor))
        return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    return distort


def grey_of(image: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def cast(weights: tuple[float, float, float], grey_first: bool = False) -> Distort:
    def distort(image: np.ndarray, points: np.ndarray) -> np.ndarray:
        return ((grey_of(image) if grey_first else image) * np.array(weights)).astype(np.uint8)
    return distort


def inverted(channel: int) -> Callable[[np.ndarray], np.ndarray]:
    def invert(image: np.ndarray) -> np.ndarray:
        out = image.copy()
        out[..., channel] = 255 - out[..., channel]
        return out
    return invert


def censor_bar(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """A black bar over the eyes: 2.1 eye distances wide, 0.55 high, centred on them."""
    eyes = points[:2]
    distance = float(np.linalg.norm(eyes[1] - eyes[0]))
    cx, cy = eyes.mean(axis=0)
    out = image.copy()
    cv2.rectangle(out, (int(cx - 1.05 * distance), int(cy - 0.275 * distance)),
                  (int(cx + 1.05 * distance), int(cy + 0.275 * distance)), (0, 0, 0), -1)
    return out


def face_mask(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """A pale blue surgical mask from the bridge of the nose to below the chin, following the
    face's roll."""
    eyes, nose, mouth = points[:2], points[2], points[3:5].mean(axis=0)
    across = eyes[1] - eyes[0]
    distance = float(np.linalg.norm(across))
    across = across / max(distance, 1e-6)
    down = np.array([-across[1], across[0]])
    top = nose - 0.45 * distance * down
    bottom = mouth + 0.95 * distance * down
    corners = [top - 1.1 * distance * across, top + 1.1 * distance * across,
               bottom + 0.75 * distance * across, bottom - 0.75 * distance * across]
    out = image.copy()
    cv2.fillPoly(out, [np.round(corners).astype(np.int32)], (170, 205, 225), lineType=cv2.LINE_AA)
    return out


def overlay(colour: tuple[int, int, int], opacity: float) -> Distort:
    """A translucent overlay (a caption box, glare) of ``colour`` at ``opacity`` over the
    subject's head: an ellipse 4.4 x 5.6 eye distances, its edge feathered."""
    def distort(image: np.ndarray, points: np.ndarray) -> np.ndarray:
        eyes = points[:2]
        distance = float(np.linalg.norm(eyes[1] - eyes[0]))
        cx, cy = points.mean(axis=0)
        mask = np.zeros(image.shape[:2], np.float32)
        cv2.ellipse(mask, (int(cx), int(cy)), (int(2.2 * distance), int(2.8 * distance)), 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), distance * 0.3)[..., None] * opacity
        return (image * (1.0 - mask) + np.array(colour, np.float32) * mask + 0.5).astype(np.uint8)
    return distort


def halftone(cell: int) -> Distort:
    """The photo's grey levels printed as a screen of round black dots ``cell`` px apart."""
    def distort(image: np.ndarray, points: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        grey = cv2.blur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0, (cell, cell))
        yy, xx = np.mgrid[0:h, 0:w]
        reach = np.hypot(xx % cell - cell / 2 + 0.5, yy % cell - cell / 2 + 0.5) / (cell / np.sqrt(2.0))
        paper = reach > np.sqrt(np.clip(1.0 - grey, 0.0, 1.0))  # a dot's area grows with the darkness
        return np.repeat((paper * 255).astype(np.uint8)[..., None], 3, axis=2)
    return distort


def one_bit(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The photo dithered to black and white (Floyd-Steinberg)."""
    return np.asarray(Image.fromarray(image).convert("1").convert("RGB"))


def descreened(seen: np.ndarray, points: np.ndarray) -> list[np.ndarray]:
    """The output as it is and blurred, as anyone looking at a print from a step back sees it."""
    return [seen] + [cv2.GaussianBlur(seen, (0, 0), sigma) for sigma in (1.0, 2.0, 3.0, 4.0)]


def filtered(kind: ImageFilter.Filter) -> Distort:
    """The photo through one of an editor's line filters (PIL's EMBOSS, CONTOUR, FIND_EDGES)."""
    return lambda image, points: np.asarray(Image.fromarray(image).filter(kind))


def lines_seen(seen: np.ndarray, points: np.ndarray) -> list[np.ndarray]:
    """A line drawing as it is, blurred, and its negative."""
    return [seen, cv2.GaussianBlur(seen, (0, 0), 1.5), 255 - seen]


def relevelled(seen: np.ndarray, points: np.ndarray) -> list[np.ndarray]:
    """The output as it is, and with each channel's levels around the subject's face stretched
    to the full range (what an attacker does to see through an overlay)."""
    eyes = points[:2]
    distance = float(np.linalg.norm(eyes[1] - eyes[0]))
    cx, cy = points.mean(axis=0)
    x1, y1 = int(max(0, cx - 1.2 * distance)), int(max(0, cy - 1.5 * distance))
    patch = seen[y1 : int(cy + 1.5 * distance), x1 : int(cx + 1.2 * distance)].reshape(-1, 3).astype(np.float32)
    lo, hi = np.percentile(patch, 0.5, axis=0), np.percentile(patch, 99.5, axis=0)
    stretched = (seen.astype(np.float32) - lo) * 255.0 / np.maximum(hi - lo, 1.0)
    return [seen, np.clip(stretched + 0.5, 0, 255).astype(np.uint8)]


DISTORTIONS: dict[str, Distortion] = {
    "stretched 3x wide": Distortion(stretched("x", 3.0), "stretch_search", (3.0, 1.0), lambda seen, points: [seen]),
    "stretched 3x tall": Distortion(stretched("y", 3.0), "stretch_search", (1.0, 3.0), lambda seen, points: [seen]),
    "stretched 5x wide": Distortion(stretched("x", 5.0), "stretch_search", (5.0, 1.0), lambda seen, points: [seen]),
    "stretched 5x tall": Distortion(stretched("y", 5.0), "stretch_search", (1.0, 5.0), lambda seen, points: [seen]),
    "green cast (red, blue x0.3)": Distortion(cast((0.3, 1.0, 0.3)), "grey_search"),
    "cyan cast (red x0.1)": Distortion(cast((0.1, 1.0, 1.0)), "grey_search"),
    "grey printed in green": Distortion(cast((0.15, 1.0, 0.15), grey_first=True), "grey_search"),
    "green channel inverted": Distortion(lambda image, points: inverted(1)(image), "grey_search",
                                         undo=lambda seen, points: [inverted(1)(seen), grey_of(inverted(1)(seen))]),
    "black bar over the eyes": Distortion(censor_bar, "hog_search"),
    "surgical mask": Distortion(face_mask, "hog_search"),
    "halftone, 4 px dots": Distortion(halftone(4), "descreen_search", undo=descreened),
    "halftone, 8 px dots": Distortion(halftone(8), "descreen_search", undo=descreened),
    "one-bit dither": Distortion(one_bit, "descreen_search", undo=descreened),
    "embossed": Distortion(filtered(ImageFilter.EMBOSS), "hog_search", undo=lines_seen),
    "contour filter": Distortion(filtered(ImageFilter.CONTOUR), "hog_search", undo=lines_seen),
    "edge filter": Distortion(filtered(ImageFilter.FIND_EDGES), "hog_search", undo=lines_seen),
    "92% white overlay": Distortion(overlay((255, 255, 255), 0.92), "exposure_search", undo=relevelled),
    "92% grey overlay": Distortion(overlay((128, 128, 128), 0.92), "exposure_search", undo=relevelled),
    "90% pale blue overlay": Distortion(overlay((200, 220, 255), 0.90), "exposure_search", undo=relevelled),
}


def evaluate(engine: FaceAnonymizer, paths: list[Path], detector: MTCNNDetector, name: str) -> dict:
    distortion = DISTORTIONS[name]
    found = recognisable = total = 0
    seconds = 0.0
    for path in paths:
        original = np.asarray(Image.open(path).convert("RGB"))
        subject = central_face(detector.detect(original), original.shape)
        if subject is None:
            continue
        total += 1
        distorted = distortion.distort(original, subject.landmarks)
        start = time.perf_counter()
        result = engine.anonymize(distorted)
        seconds += time.perf_counter() - start
        nose = subject.landmarks[2] * np.array(distortion.scale)
        found += any(f.detection.box[0] <= nose[0] <= f.detection.box[2]
                     and f.detection.box[1] <= nose[1] <= f.detection.box[3] for f in result.faces)
        seen = cv2.resize(result.pixels, (original.shape[1], original.shape[0]), interpolation=cv2.INTER_AREA)
        recognisable += any(
            float(cosine(o.embed_faces(original, [subject.landmarks]), o.embed_faces(view, [subject.landmarks]))[0])
            >= engine.thresholds[o.name]
            for o in engine.oracles for view in distortion.undo(seen, subject.landmarks)
        )
    return {
        "photos": total,
        "recall": round(found / max(total, 1), 4),
        "recognisable": round(recognisable / max(total, 1), 4),
        "seconds_per_photo": round(seconds / max(total, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/distortion_eval.json")
    parser.add_argument("--only", nargs="*", default=[], help="distortions whose names hold any of these words")
    args = parser.parse_args()
    only = args.only
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    paths = photos(Path(args.lfw), args.limit)
    detector = MTCNNDetector()
    rows: dict[str, dict] = {}
    shared = None
    for searching in (False, True):
        engines: dict[str, FaceAnonymizer] = {}
        for name, distortion in DISTORTIONS.items():
            switch = distortion.switch
            if only and not any(word in name for word in only):
                continue
            if switch not in engines:
                engines[switch] = FaceAnonymizer(AnonymizerConfig(cache_size=0, **{switch: searching}), oracles=shared)
                shared = engines[switch].oracles
            key = f"{switch}={searching}: {name}"
            rows[key] = evaluate(engines[switch], paths, detector, name)
            print(key, json.dumps(rows[key]), flush=True)
    output = Path(args.output)
    if only and output.is_file():  # a partial run updates its rows of the last full one
        rows = {**json.loads(output.read_text())["results"], **rows}
    output.write_text(json.dumps({"photos": len(paths), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
