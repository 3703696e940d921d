"""The evaluation set: one probe photo per identity, the identity's other photos as gallery."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from idmrag_plugin.errors import ConfigError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".pgm", ".ppm", ".tif", ".tiff"}


@dataclass(frozen=True)
class Photo:
    identity: str
    path: Path


@dataclass
class EvaluationSet:
    """``probes``: one photo per identity (what gets anonymized); ``gallery``: up to
    ``gallery_per_identity`` OTHER photos of the same identities (what an attacker searches);
    ``companions``: for each probe, one other photo of the same person, anonymized too to
    measure pseudonym consistency."""

    root: Path
    probes: list[Photo]
    gallery: list[Photo]
    companions: dict[str, Photo] = field(default_factory=dict)

    @property
    def identities(self) -> list[str]:
        return [p.identity for p in self.probes]


def identity_root(path: Path) -> Path:
    """LFW's layout has the identity folders under ``images/``; accept both."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder of identity subfolders (e.g. ../shared/data/lfw)")
    return path / "images" if (path / "images").is_dir() else path


def load_evaluation_set(
    path: Path, limit: int | None = 300, gallery_per_identity: int = 4, seed: int = 0
) -> EvaluationSet:
    """Pick ``limit`` identities with two or more photos (seeded), a probe and a gallery each."""
    root = identity_root(path)
    folders = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if len(photos) >= 2:
            folders.append((folder.name, photos))
    if len(folders) < 2:
        raise ConfigError(
            f"{root} has {len(folders)} identity folder(s) with two or more photos; re-identification "
            "needs at least 2 such identities"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(folders))
    if limit is not None:
        if limit < 2:
            raise ConfigError("--limit must be at least 2 identities")
        order = order[:limit]
    probes, gallery, companions = [], [], {}
    for index in sorted(order):
        name, photos = folders[index]
        picks = rng.permutation(len(photos))
        probe = Photo(name, photos[picks[0]])
        others = [Photo(name, photos[i]) for i in picks[1 : 1 + gallery_per_identity]]
        probes.append(probe)
        gallery.extend(others)
        companions[name] = others[0]
    return EvaluationSet(root, probes, gallery, companions)
