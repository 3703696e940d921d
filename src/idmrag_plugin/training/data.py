"""``idmrag prepare-data``: detect and align every face of image folders into one dataset.

Output (a single ``.npz``): ``crops`` (N, S, S, 3) uint8 canonical crops, ``identity``
(int, -1 when unknown), ``names`` (identity names), ``split`` ("train"/"val": LFW
identities are split by a hash of their name, so validation identities are never seen in
training), ``age``, ``gender`` and ``race`` (UTKFace's labels; -1 when unknown), ``source``
(relative path) and each
oracle's embedding of the face (``emb_<oracle>``), computed from the original photo.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idmrag_plugin.engine.align import align_face
from idmrag_plugin.engine.detect import FaceDetector, central_face
from idmrag_plugin.engine.oracles import FaceOracle
from idmrag_plugin.errors import IdmragError
from idmrag_plugin.image_io import load_rgb

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".pgm", ".webp", ".bmp")


@dataclass(frozen=True)
class Sample:
    path: Path
    identity: str | None = None
    age: int = -1
    gender: int = -1
    race: int = -1  # UTKFace's perceived-group label (see attributes.GROUP_LABELS)


def validation_identity(name: str, fraction: float = 0.1) -> bool:
    """Deterministic identity-level split: about ``fraction`` of identities are held out."""
    return hashlib.sha256(f"val:{name}".encode()).digest()[0] < 256 * fraction


def lfw_samples(root: Path) -> list[Sample]:
    images = root / "images" if (root / "images").is_dir() else root
    return [
        Sample(p, identity=p.parent.name)
        for p in sorted(images.glob("*/*"))
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]


def utkface_samples(root: Path) -> list[Sample]:
    labels = {}
    with open(root / "labels.csv", newline="") as handle:
        for row in csv.reader(handle):
            if row and row[0] != "file":
                labels[row[0]] = (int(row[1]), int(row[2]), int(row[3]) if len(row) > 3 and row[3] else -1)
    return [
        Sample(root / "images" / name, age=age, gender=gender, race=race)
        for name, (age, gender, race) in sorted(labels.items())
        if (root / "images" / name).is_file()
    ]


def folder_samples(root: Path) -> list[Sample]:
    return [Sample(p) for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]


def samples_for(path: Path) -> list[Sample]:
    """LFW (identity folders), UTKFace (labels.csv) or any folder of photos."""
    if (path / "labels.csv").is_file():
        return utkface_samples(path)
    if (path / "pairs.txt").is_file() or (path / "images").is_dir():
        return lfw_samples(path)
    return folder_samples(path)


def prepare_dataset(
    sources: list[Path],
    output: Path,
    detector: FaceDetector,
    oracles: list[FaceOracle],
    size: int = 128,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Align the central face of every photo and save the dataset; returns counts."""
    from tqdm import tqdm

    samples = [s for src in sources for s in samples_for(Path(src))]
    if limit:
        samples = samples[:limit]
    if not samples:
        raise IdmragError(f"no images found under {', '.join(map(str, sources))}")
    names = sorted({s.identity for s in samples if s.identity})
    index = {n: i for i, n in enumerate(names)}
    crops, ids, ages, genders, races, splits, paths = [], [], [], [], [], [], []
    embeddings: dict[str, list[np.ndarray]] = {o.name: [] for o in oracles}
    skipped = 0
    for sample in tqdm(samples, desc="aligning faces", disable=not progress):
        try:
            image = load_rgb(sample.path, 50_000_000)
        except IdmragError as exc:
            logger.warning("skipping %s: %s", sample.path, exc)
            skipped += 1
            continue
        face = central_face(detector.detect(image), image.shape)
        if face is None:
            skipped += 1
            continue
        try:
            crops.append(align_face(image, face.landmarks, size).crop)
        except ValueError:
            skipped += 1
            continue
        for oracle in oracles:
            embeddings[oracle.name].append(oracle.embed_faces(image, [face.landmarks])[0])
        ids.append(index[sample.identity] if sample.identity else -1)
        ages.append(sample.age)
        genders.append(sample.gender)
        races.append(sample.race)
        splits.append("val" if sample.identity and validation_identity(sample.identity) else "train")
        paths.append(str(sample.path))
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        output,
        crops=np.stack(crops),
        identity=np.array(ids, np.int32),
        names=np.array(names),
        age=np.array(ages, np.int16),
        gender=np.array(genders, np.int8),
        race=np.array(races, np.int8),
        split=np.array(splits),
        source=np.array(paths),
        **{f"emb_{k}": np.stack(v).astype(np.float32) for k, v in embeddings.items()},
    )
    counts = {"faces": len(crops), "skipped": skipped, "identities": len(names),
              "val_faces": splits.count("val")}
    logger.info("wrote %s: %s", output, counts)
    return counts


#: Image formats :func:`pack_dataset` encodes crops in (OpenCV's extensions; WebP is about a
#: third smaller than JPEG at the same error on 128 px faces).
PACK_FORMATS = {"jpeg": (".jpg", "IMWRITE_JPEG_QUALITY"), "webp": (".webp", "IMWRITE_WEBP_QUALITY")}


def pack_dataset(source: Path, output: Path, size: int = 64, quality: int = 90, split: str = "train",
                 fmt: str = "jpeg", embeddings: bool = True, limit: int | None = None,
                 seed: int = 0) -> dict[str, int]:
    """A compact copy of a prepared dataset for moving to another machine: crops resized to
    ``size`` and encoded (``fmt``: jpeg or webp) into one byte buffer, embeddings as float16
    unless ``embeddings`` is False (the renderer's training then measures them on the crops),
    at most ``limit`` faces (a seeded random choice)."""
    import cv2

    if fmt not in PACK_FORMATS:
        raise IdmragError(f"pack format must be one of {', '.join(PACK_FORMATS)}, got {fmt!r}")
    extension, flag = PACK_FORMATS[fmt]
    data = np.load(source, allow_pickle=False)
    keep = data["split"] == split
    if limit is not None and keep.sum() > limit:
        chosen = np.random.default_rng(seed).choice(np.flatnonzero(keep), limit, replace=False)
        keep = np.zeros_like(keep)
        keep[chosen] = True
    chunks, offsets = [], [0]
    for crop in data["crops"][keep]:
        small = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(extension, cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [getattr(cv2, flag), quality])
        if not ok:
            raise IdmragError(f"{fmt} encoding failed")
        chunks.append(encoded.ravel())
        offsets.append(offsets[-1] + encoded.size)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        output,
        jpeg=np.concatenate(chunks),  # the name predates WebP: any format OpenCV decodes
        offsets=np.array(offsets, np.int64),
        identity=data["identity"][keep],
        split=data["split"][keep],
        **{k: data[k][keep].astype(np.float16) for k in data.files if k.startswith("emb_") and embeddings},
    )
    return {"faces": int(keep.sum()), "bytes": int(output.stat().st_size)}


def add_embeddings(source: Path, output: Path, oracle: FaceOracle, batch: int = 64,
                   progress: bool = True) -> int:
    """Copy a prepared dataset with one more oracle's embedding of every aligned crop
    (``emb_<oracle name>``, measured on the crop at the template's landmarks); returns the count."""
    from tqdm import tqdm

    data = np.load(source, allow_pickle=False)
    crops = unpack_crops(data)
    embeddings = [oracle.embed_aligned(crops[start : start + batch])
                  for start in tqdm(range(0, len(crops), batch), desc=f"{oracle.name} embeddings",
                                    disable=not progress)]
    arrays = {k: data[k] for k in data.files}
    arrays[f"emb_{oracle.name}"] = np.concatenate(embeddings).astype(np.float32)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, **arrays)
    return len(crops)


def unpack_crops(data: np.lib.npyio.NpzFile) -> np.ndarray:
    """RGB uint8 crops from a dataset written by :func:`prepare_dataset` or :func:`pack_dataset`."""
    if "crops" in data.files:
        return data["crops"]
    import cv2

    buffer, offsets = data["jpeg"], data["offsets"]
    return np.stack([
        cv2.cvtColor(cv2.imdecode(buffer[a:b], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        for a, b in itertools.pairwise(offsets)
    ])
