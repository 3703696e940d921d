"""Reading any supported input into RGB pixels, and writing outputs without metadata."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from idmrag_plugin.errors import ImageTooLargeError, InvalidImageError

logger = logging.getLogger(__name__)

ImageInput = Image.Image | bytes | bytearray | memoryview | str | os.PathLike | np.ndarray

_MIN_SIDE = 1


_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


#: Default cap on the size of an encoded image (file or bytes).
MAX_BYTES = 200_000_000


def read_file_bounded(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file, refusing one larger than ``max_bytes`` without reading it
    whole (devices, pipes and files that grow while read included)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(f"no regular image file at {path}")
    if path.stat().st_size > max_bytes:
        raise ImageTooLargeError(f"{path} is {path.stat().st_size:,} bytes, over the cap of {max_bytes:,}")
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidImageError(f"cannot read {path}: {exc}") from exc
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{path} is over the cap of {max_bytes:,} bytes")
    return data


def _open(source: ImageInput, max_pixels: int, max_bytes: int) -> Image.Image:
    """Open and fully decode ``source``, refusing oversized images from the header alone."""
    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, max_pixels)
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise InvalidImageError("image bytes are empty")
        if len(source) > max_bytes:
            raise ImageTooLargeError(f"image is {len(source):,} bytes, over the cap of {max_bytes:,}")
        handle: io.BytesIO | Path = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        handle = Path(source)
        if not handle.is_file():
            raise InvalidImageError(f"no regular image file at {handle}")
        if handle.stat().st_size > max_bytes:
            raise ImageTooLargeError(
                f"{handle} is {handle.stat().st_size:,} bytes, over the cap of {max_bytes:,}"
            )
    else:
        raise InvalidImageError(
            f"unsupported image input {type(source).__name__}: pass a PIL image, bytes, a path "
            "or a numpy array"
        )
    try:
        image = Image.open(handle)  # reads the header only
        _check_size(image.width, image.height, max_pixels)
        image.load()
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image refused as a decompression bomb: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(f"cannot decode image: {exc}") from exc
    return image


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width < _MIN_SIDE or height < _MIN_SIDE:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height:,} pixels, over the cap of "
            f"{max_pixels:,}; downscale it or raise AnonymizerConfig.max_pixels"
        )


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Convert a numpy image (HxW, HxWx1/3/4; uint8, uint16, bool or float in [0, 1]) to RGB uint8."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InvalidImageError(f"numpy image must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InvalidImageError("numpy image contains NaN or infinite values")
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise InvalidImageError(f"unsupported numpy dtype {array.dtype}")
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.shape[2] == 4:
        array = _flatten_alpha(array[..., :3], array[..., 3])
    return np.ascontiguousarray(array)


def _flatten_alpha(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite onto white; what was transparent must not hide a face from the detector."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    return (rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        # An animation or a multi-page scan: its first frame is the image (as viewers and
        # multimodal models' loaders take it); the others are never returned, so nothing in
        # them can leak, but say so rather than drop them silently.
        logger.warning("the image has %d frames (an animation or a multi-page file): only the first is "
                       "anonymized and returned, the other %d are dropped", frames, frames - 1)
    try:
        image = ImageOps.exif_transpose(image)
    except (ValueError, TypeError, KeyError, OSError) as exc:  # malformed EXIF orientation
        raise InvalidImageError(f"cannot apply EXIF orientation: {exc}") from exc
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.uint32)
        peak = 65535 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255
        return _array_to_rgb((array.astype(np.float64) / peak).astype(np.float32))
    if mode == "F":
        return _array_to_rgb(np.clip(np.asarray(image, dtype=np.float32) / 255.0, 0, 1))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        return _array_to_rgb(np.asarray(image.convert("RGBA")))
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def load_rgb(source: ImageInput, max_pixels: int, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """Decode ``source`` into an RGB uint8 array, EXIF orientation applied.

    Raises:
        InvalidImageError: unsupported type, empty, corrupt or truncated data.
        ImageTooLargeError: more than ``max_pixels`` pixels (decompression bombs included),
            or encoded data over ``max_bytes``.
    """
    if isinstance(source, np.ndarray):
        if source.ndim < 2:
            raise InvalidImageError(f"numpy image must be at least 2-D, got shape {source.shape}")
        _check_size(source.shape[1], source.shape[0], max_pixels)
        return _array_to_rgb(source)
    image = _open(source, max_pixels, max_bytes)
    try:
        return _pil_to_rgb(image)
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(f"cannot decode image: {exc}") from exc


def to_clean_pil(pixels: np.ndarray) -> Image.Image:
    """A fresh PIL image from pixels: no EXIF, XMP, IPTC, GPS, ICC or text chunks."""
    return Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="RGB")


def encode(pixels: np.ndarray, fmt: str = "PNG", quality: int = 92) -> bytes:
    """Encode pixels with no metadata at all."""
    buffer = io.BytesIO()
    fmt = fmt.upper()
    options: dict[str, object] = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    to_clean_pil(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()
