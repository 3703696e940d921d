"""Impostor-regime thresholds of the oracles, calibrated on LFW and shipped with the package.

A threshold at false-accept rate ``far`` is the similarity that only a fraction ``far`` of
different-person pairs exceed. Calibration embeds the central face of one photo per
identity, splits the identities in two disjoint halves by a hash of their names, sets the
thresholds on all impostor pairs of the first half and measures the false-accept rate on
the held-apart second half; the true-accept rate comes from the genuine pairs of
``pairs.txt``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np

from idmrag_plugin.errors import CalibrationError

logger = logging.getLogger(__name__)

#: Calibrated levels, every one required (the privacy levels, ``config.PRIVACY_LEVELS``).
LEVELS = {"far1e-2": 1e-2, "far1e-3": 1e-3}
#: Stricter levels, calibrated where the impostor pairs can measure them: they chart the tail
#: for the pseudonym registry, whose rule must hold among thousands of registered people
#: (``threshold_at_far``).
TAIL_LEVELS = {"far1e-4": 1e-4, "far1e-5": 1e-5}
CALIBRATION_FILE = "calibration.json"
#: Impostor pairs that must lie above a threshold for it to be estimated at all.
MIN_PAIRS_ABOVE = 10


def load_calibration() -> dict:
    """The calibration shipped with the package (a fresh copy)."""
    try:
        text = resources.files("idmrag_plugin.data").joinpath(CALIBRATION_FILE).read_text()
    except FileNotFoundError as exc:
        raise CalibrationError("the package's calibration.json is missing; reinstall it") from exc
    return json.loads(text)


@functools.lru_cache(maxsize=1)
def _shipped() -> dict:
    """The shipped calibration, read once for the lookups below (which never modify it): the
    pseudonym registry asks for a threshold at every new person."""
    return load_calibration()


def thresholds_for(level: str, oracles: Iterable[str], calibration: dict | None = None) -> dict[str, float]:
    """Each oracle's similarity threshold at a privacy level such as ``"far1e-2"``."""
    calibration = calibration or _shipped()
    result = {}
    for name in oracles:
        try:
            result[name] = float(calibration["oracles"][name]["thresholds"][level])
        except KeyError as exc:
            raise CalibrationError(
                f"no calibrated threshold for oracle {name!r} at {level!r}; run `idmrag calibrate`"
            ) from exc
    return result


def threshold_at_far(oracle: str, far: float, calibration: dict | None = None) -> float:
    """An oracle's similarity threshold at false-accept rate ``far``, interpolated linearly in
    log10(FAR) between its calibrated levels and clamped to them: a rate below the strictest
    calibrated level gets that level's threshold (what the impostor pairs could measure)."""
    calibration = calibration or _shipped()
    levels = calibration.get("oracles", {}).get(oracle, {}).get("thresholds")
    if not levels:
        raise CalibrationError(f"no calibrated thresholds for oracle {oracle!r}; run `idmrag calibrate`")
    points = sorted((float(name.removeprefix("far")), float(t)) for name, t in levels.items())
    rates = np.log10([rate for rate, _ in points])
    return float(np.interp(np.log10(far), rates, [t for _, t in points]))


def _split(name: str) -> int:
    return hashlib.sha256(name.encode()).digest()[0] & 1


def impostor_similarities(embeddings: np.ndarray, labels: list[str]) -> np.ndarray:
    """Cosine similarity of every pair of rows whose labels differ."""
    sims = embeddings @ embeddings.T
    upper = np.triu_indices(len(labels), k=1)
    names = np.asarray(labels)
    different = names[upper[0]] != names[upper[1]]
    return sims[upper][different]


def threshold_at(impostor: np.ndarray, far: float) -> float:
    """Smallest similarity that at most a fraction ``far`` of impostor pairs reach."""
    if impostor.size * far < MIN_PAIRS_ABOVE:
        raise CalibrationError(
            f"{impostor.size} impostor pairs cannot estimate FAR {far:g}; use more identities"
        )
    return float(np.quantile(impostor, 1.0 - far, method="higher"))


def read_pairs(path: Path) -> tuple[list[tuple[str, int, str, int]], list[tuple[str, int, str, int]]]:
    """Genuine and impostor pairs of an LFW pairs.txt (header line optional)."""
    genuine, impostor = [], []
    for line in path.read_text().splitlines():
        parts = line.strip().split()
        if len(parts) == 3:
            genuine.append((parts[0], int(parts[1]), parts[0], int(parts[2])))
        elif len(parts) == 4:
            impostor.append((parts[0], int(parts[1]), parts[2], int(parts[3])))
    return genuine, impostor


def lfw_path(root: Path, name: str, index: int) -> Path:
    return root / "images" / name / f"{name}_{index:04d}.jpg"


Embedder = Callable[[list[Path]], dict[str, dict[Path, np.ndarray]]]


def calibrate(
    lfw_root: Path,
    embed: Embedder,
    oracle_names: list[str],
    identities_per_half: int = 1500,
) -> dict:
    """Calibrate every oracle on LFW; ``embed`` maps image paths to each oracle's embedding
    of the central face (images without a detected face are left out)."""
    root = Path(lfw_root)
    folders = sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
    if not folders:
        raise CalibrationError(f"no identity folders under {root / 'images'}")
    halves: list[list[str]] = [[], []]
    for name in folders:
        halves[_split(name)].append(name)
    chosen = [h[:identities_per_half] for h in halves]
    first_photo = {name: lfw_path(root, name, 1) for h in chosen for name in h}
    genuine, _ = read_pairs(root / "pairs.txt")
    genuine_paths = [(lfw_path(root, a, i), lfw_path(root, b, j)) for a, i, b, j in genuine]
    all_paths = sorted(set(first_photo.values()) | {p for pair in genuine_paths for p in pair})
    embeddings = embed([p for p in all_paths if p.is_file()])

    report: dict = {
        "version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": "LFW deep-funneled, central face of each photo, MTCNN + engine alignment",
        "method": __doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else "",
        "oracles": {},
    }
    for oracle in oracle_names:
        emb = embeddings[oracle]
        halves_emb = []
        for half in chosen:
            names = [n for n in half if first_photo[n] in emb]
            halves_emb.append((np.stack([emb[first_photo[n]] for n in names]), names))
        fit = impostor_similarities(*halves_emb[0])
        held = impostor_similarities(*halves_emb[1])
        genuine_sims = np.array(
            [float(emb[a] @ emb[b]) for a, b in genuine_paths if a in emb and b in emb]
        )
        entry: dict = {
            "similarity": "cosine",
            "fit_identities": len(halves_emb[0][1]),
            "fit_impostor_pairs": int(fit.size),
            "held_identities": len(halves_emb[1][1]),
            "held_impostor_pairs": int(held.size),
            "genuine_pairs": int(genuine_sims.size),
            "thresholds": {},
            "held_out_far": {},
            "genuine_tar": {},
        }
        measurable = {level: far for level, far in TAIL_LEVELS.items() if fit.size * far >= MIN_PAIRS_ABOVE}
        for level, far in {**LEVELS, **measurable}.items():
            t = threshold_at(fit, far)
            entry["thresholds"][level] = round(t, 6)
            entry["held_out_far"][level] = round(float(np.mean(held >= t)), 6)
            entry["genuine_tar"][level] = round(float(np.mean(genuine_sims >= t)), 4)
        report["oracles"][oracle] = entry
        logger.info("calibrated %s: %s", oracle, entry["thresholds"])
    return report


def write_calibration(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


def engine_embedder(detector, oracles, progress: bool = True) -> Embedder:
    """An :data:`Embedder` built from the engine's detector and oracles.

    Oracles that judge unaligned boxes (``box_view``) are also embedded in that view, under
    ``NAME@box`` (see :mod:`idmrag_plugin.engine.views`): it needs thresholds of its own.
    """
    from tqdm import tqdm

    from idmrag_plugin.engine.detect import central_face
    from idmrag_plugin.engine.views import box_crop, box_view_name
    from idmrag_plugin.image_io import load_rgb

    def embed(paths: list[Path]) -> dict[str, dict[Path, np.ndarray]]:
        out: dict[str, dict[Path, np.ndarray]] = {o.name: {} for o in oracles}
        out.update({box_view_name(o.name): {} for o in oracles if o.box_view})
        missed = 0
        for path in tqdm(paths, desc="embedding LFW faces", disable=not progress):
            image = load_rgb(path, max_pixels=50_000_000)
            face = central_face(detector.detect(image), image.shape)
            if face is None:
                missed += 1
                continue
            for oracle in oracles:
                out[oracle.name][path] = oracle.embed_faces(image, [face.landmarks])[0]
                if oracle.box_view:
                    crop = box_crop(image, face, oracle.input_size)[None]
                    out[box_view_name(oracle.name)][path] = oracle.embed(crop)[0]
        logger.info("no face detected in %d of %d photos", missed, len(paths))
        return out

    return embed
