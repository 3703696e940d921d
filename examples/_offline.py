"""Offline stand-ins shared by the example chatbots: a photo folder, a deterministic
text embedding, and a multimodal 'model' that reports what it received."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

SAMPLES = {
    "astronaut": "portrait of an astronaut in a space suit with the american flag",
    "camera": "a man with a camera on a tripod outdoors",
    "coffee": "a cup of coffee on a saucer",
    "chelsea": "a cat looking at the camera",
}


def sample_folder(target: Path) -> Path:
    """Write scikit-image's sample photos (two with a person) into ``target``."""
    import skimage.data

    target.mkdir(parents=True, exist_ok=True)
    for name, caption in SAMPLES.items():
        path = target / f"{name}.jpg"
        if not path.exists():
            pixels = getattr(skimage.data, name)()
            Image.fromarray(pixels).convert("RGB").save(path, quality=92)
            path.with_suffix(".txt").write_text(caption)
    return target


def caption_for(path: Path) -> str:
    side = path.with_suffix(".txt")
    return side.read_text().strip() if side.exists() else re.sub(r"[_\-]+", " ", path.stem)


def embed_text(text: str, dim: int = 256) -> np.ndarray:
    """Hashed bag of words: deterministic, offline, good enough to rank captions."""
    vector = np.zeros(dim, np.float32)
    for word in re.findall(r"[a-z]+", text.lower()):
        vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
    norm = np.linalg.norm(vector)
    return vector / norm if norm else vector


def save_received(images_b64: list[str], out_dir: Path) -> list[Path]:
    """Write the images the model received, so a person can look at them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    start = len(list(out_dir.glob("received_*.png")))  # one model call after another
    for i, data in enumerate(images_b64, start=start):
        raw = base64.b64decode(data.split(",", 1)[-1])
        image = Image.open(io.BytesIO(raw))
        path = out_dir / f"received_{i}.png"
        image.save(path)
        paths.append(path)
    return paths


def describe_received(paths: list[Path], texts: list[str]) -> str:
    lines = [f"[mock multimodal model] I received {len(paths)} image(s) and {len(texts)} text block(s)."]
    lines += [f"  image {i}: {p} ({Image.open(p).size[0]}x{Image.open(p).size[1]})" for i, p in enumerate(paths)]
    return "\n".join(lines)
