"""What the framework integrations share: resolving an image reference, anonymizing it, and
turning the outcome into bytes, a MIME type and a report, or a refusal."""

from __future__ import annotations

import ast
import base64
import binascii
import dataclasses
import io
import logging
import re
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from idmrag_plugin.config import AnonymizerConfig
from idmrag_plugin.errors import ConfigError, IdmragError, ImageWithheldError, InvalidImageError
from idmrag_plugin.fetch import FetchPolicy
from idmrag_plugin.integrations._locations import (
    IMAGE_SUFFIXES,
    links_images,
    pseudonymous_id,
    reveals_location,
    shareable_reason,
    unlink_images,
)
from idmrag_plugin.pipeline import FaceAnonymizer

logger = logging.getLogger(__name__)

MIMETYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
REPORT_KEY = "idmrag_report"

#: Metadata keys naming where an original came from; removed from every anonymized item,
#: in both frameworks (LlamaIndex's message builders even fall back to ``file_path``).
LOCATION_KEYS = (
    "file_path", "file_name", "filename", "image_path", "image_url", "image_uri", "url", "uri", "source", "path",
)
#: Words that mark a metadata key as the photo's embedded metadata or where it was taken
#: (EXIF, GPS, XMP, IPTC, geotags): loaders copy these out of the original file, and they
#: would reach the model beside the clean image. Matched against the key's words, so that
#: ``GPSInfo``, ``exif:GPSLatitude``, ``geo_location`` and ``lat`` all match.
PHOTO_METADATA_WORDS = frozenset({
    "gps", "exif", "xmp", "iptc", "geo", "geotag", "geotags", "geolocation", "geocode", "latitude", "longitude",
    "lat", "lon", "lng", "altitude", "coordinates", "coords", "location", "place", "address",
})
_KEY_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def is_photo_metadata_key(key: Any) -> bool:
    """True for a metadata key carrying the original photo's embedded metadata or location."""
    if not isinstance(key, str):
        return False
    return any(word.lower() in PHOTO_METADATA_WORDS for word in _KEY_WORDS.findall(key))


def drop_entries(value: Any, is_dropped: Callable[[Any, Any], bool], removed: list[str], path: str = "") -> Any:
    """``value`` without the dict entries for which ``is_dropped(key, value)`` (nested dicts,
    lists and tuples too); the dotted path of each entry dropped is appended to ``removed``."""
    if isinstance(value, dict):
        kept = {}
        for key, inner in value.items():
            where = f"{path}.{key}" if path else str(key)
            if is_dropped(key, inner):
                removed.append(where)
            else:
                kept[key] = drop_entries(inner, is_dropped, removed, where)
        return kept
    if isinstance(value, (list, tuple)):
        kept_items = []
        for index, inner in enumerate(value):
            if is_dropped(None, inner):  # a list item has no key of its own
                removed.append(f"{path}[{index}]")
            else:
                kept_items.append(drop_entries(inner, is_dropped, removed, path))
        return type(value)(kept_items)
    return value


def drop_photo_metadata(value: Any, removed: list[str], path: str = "") -> Any:
    """``value`` without the entries of :func:`is_photo_metadata_key` (nested dicts and lists
    too); the dotted path of each entry dropped is appended to ``removed``."""
    return drop_entries(value, lambda key, _: is_photo_metadata_key(key), removed, path)


def drop_locations(value: Any, location_keys: Sequence[str], removed: list[str], path: str = "") -> Any:
    """``value`` without the entries naming where an original came from, at any depth: the
    ``location_keys`` and any entry whose value is a path or URL of an image file; the dotted
    path of each entry dropped is appended to ``removed``."""
    keys = frozenset(location_keys)
    return drop_entries(value, lambda key, inner: key in keys or is_image_location(inner), removed, path)


#: Metadata keys describing the image's encoding; set to the output's after anonymization.
MIME_KEYS = ("image_mimetype", "image_mime_type", "mimetype", "mime_type", "content_type", "file_type")


def sniff_image(raw: bytes) -> bool:
    """True when ``raw`` starts like an image file of any common format (Pillow or not)."""
    if raw.startswith((b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"8BPS", b"qoif",
                       b"\x00\x00\x01\x00", b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51", b"P5", b"P6")):
        return True
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return True
    # ISO base media (AVIF, HEIC/HEIF): a ftyp box with an image brand
    return raw[4:8] == b"ftyp" and raw[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1", b"hevc")


#: Marks of documents that carry pictures even when their bytes decode as text: PDF and
#: PostScript (ASCII-encoded image streams), RTF (``\\pict`` groups), MIME parts of an image.
_PICTURE_CARRIERS = (b"%pdf", b"%!ps", b"{\\rtf", b"content-type: image/")


#: Why a document other than an image or plain text is withheld at the model guards.
DOCUMENT_WITHHELD = ("a document other than an image or plain text can hold photos this engine cannot "
                     "anonymize (withhold_documents=False sends it as it is)")


def document_text(raw: bytes) -> str | None:
    """The text of a document's bytes when it is plain text (UTF-8, no NUL byte, none of the
    marks of a format that carries pictures in text form), else None."""
    lowered = raw.lower()
    if b"\x00" in raw or any(mark in lowered for mark in _PICTURE_CARRIERS):
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class AnonymizedImage:
    data: bytes
    mimetype: str
    report: dict[str, Any]

    @property
    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    @property
    def data_uri(self) -> str:
        return f"data:{self.mimetype};base64,{self.base64}"


def _base64_bytes(text: str) -> bytes:
    """Bytes of base64 text in either alphabet (standard or URL-safe), percent-encoded or not,
    wrapped or not, padded or not (a lone last character, which encodes no whole byte, is
    dropped). Raises :class:`binascii.Error` or :class:`ValueError` when it is not base64."""
    text = "".join(text.split()).replace("\\/", "/")  # JSON's escaped slashes
    if "%" in text:
        text = urllib.parse.unquote(text, errors="strict")
    text = text.replace("-", "+").replace("_", "/").rstrip("=")
    text = text[: len(text) - (len(text) % 4 == 1)]
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _data_uri_bytes(uri: str) -> bytes:
    """Bytes of a data URI's payload: base64 (see :func:`_base64_bytes`) or percent-encoded."""
    header, _, body = uri.partition(",")
    if ";base64" in header.lower():
        return _base64_bytes(body)
    return urllib.parse.unquote_to_bytes(body)


def decode_base64_image(text: str | bytes) -> bytes:
    """Bytes of an image given as base64 (standard or URL-safe alphabet, percent-encoded or
    not) or as a data URI (base64 or percent-encoded payload)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii", errors="strict")
        except UnicodeDecodeError as exc:
            raise InvalidImageError("image field is neither base64 text nor an image") from exc
    try:
        return _data_uri_bytes(text) if text[:5].lower() == "data:" else _base64_bytes(text)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError(f"image field is not valid base64: {exc}") from exc


#: Characters of a data URI's payload read to tell whether it is an image.
_SNIFFED_CHARS = 128


def _base64_head(text: str) -> bytes:
    """The first bytes (up to 48) of base64 text, enough to tell an image file's header."""
    head = "".join(text[:96].split())[:64]
    return _base64_bytes(head[: len(head) // 4 * 4])


def looks_like_base64_image(text: str) -> bool:
    """True when ``text`` is an image data URI, a data URI of another declared type whose
    bytes start like an image file, or base64 that decodes into an image header."""
    if not isinstance(text, str):
        return False
    if text[:11].lower() == "data:image/":
        return True
    try:
        if text[:5].lower() == "data:":
            comma = text.find(",")
            return comma > 0 and sniff_image(_data_uri_bytes(text[: comma + 1 + _SNIFFED_CHARS]))
        return len(text) >= 32 and sniff_image(_base64_head(text))
    except (binascii.Error, ValueError):
        return False


#: Smallest side of a 2-D 8-bit array taken for a greyscale image (smaller ones: masks, codes).
MIN_ARRAY_IMAGE_SIDE = 16
#: Channels (last axis) of an array taken for an image: grey, grey + alpha, RGB, RGBA.
IMAGE_CHANNELS = (1, 2, 3, 4)


def _is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor; torch is not imported for it: its module says so."""
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _tensor_pixels(value: Any) -> tuple[np.ndarray, str] | None:
    """A torch tensor image as a height x width x channels array, with its layout (``"hwc"``,
    ``"chw"`` as vision models take it, or ``"nchw"``, a batch of one); None for anything
    else."""
    if not _is_tensor(value):
        return None
    tensor = value.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":
        tensor = tensor.float()  # numpy has no bfloat16
    array, layout = tensor.numpy(), "hwc"
    if array.ndim == 4 and array.shape[0] == 1:
        array, layout = array[0], "nchw"
    if array.ndim == 3 and array.shape[0] in IMAGE_CHANNELS and array.shape[2] not in IMAGE_CHANNELS:
        array, layout = array.transpose(1, 2, 0), "chw" if layout == "hwc" else layout
    elif layout == "nchw":
        return None
    return (array, layout) if _is_image_array(array) else None


def is_image_object(value: Any) -> bool:
    """True for an image held in memory: a PIL image, an 8-bit array shaped like one (height x
    width, or height x width x 1/2/3/4), a numeric array of another type (floats in [0, 1]
    or [0, 255], 16-bit...) shaped height x width x 1/2/3/4 with both sides at least
    ``MIN_ARRAY_IMAGE_SIDE``, or a torch tensor shaped so (or channels first, as vision models
    take it). Two-dimensional arrays of other types are not taken for images: embedding
    matrices and token ids are."""
    if isinstance(value, Image.Image):
        return True
    if _tensor_pixels(value) is not None:
        return True
    return _is_image_array(value)


def _is_image_array(value: Any) -> bool:
    """:func:`is_image_object` for numpy arrays."""
    if not isinstance(value, np.ndarray) or value.dtype == np.bool_:
        return False
    if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
        return False
    if value.dtype == np.uint8 and value.ndim == 2:
        return min(value.shape) >= MIN_ARRAY_IMAGE_SIDE
    if value.ndim != 3 or value.shape[2] not in IMAGE_CHANNELS:
        return False
    return min(value.shape[:2]) >= (1 if value.dtype == np.uint8 else MIN_ARRAY_IMAGE_SIDE)


def image_batch(value: Any) -> bool:
    """True for a numpy array or torch tensor of several images along its first axis (each an
    image by :func:`is_image_object`)."""
    is_array = isinstance(value, np.ndarray) or _is_tensor(value)
    return bool(is_array and getattr(value, "ndim", 0) == 4 and len(value) > 1 and is_image_object(value[0]))


def nested_list_image(value: Any) -> np.ndarray | None:
    """The array of an image kept as nested lists (``array.tolist()``: rows of pixels of 1-4
    numbers), or None for any other list."""
    if not (isinstance(value, (list, tuple)) and len(value) >= MIN_ARRAY_IMAGE_SIDE
            and isinstance(value[0], (list, tuple)) and len(value[0]) >= MIN_ARRAY_IMAGE_SIDE
            and isinstance(value[0][0], (list, tuple))):
        return None
    try:
        array = np.asarray(value)
    except ValueError:  # ragged
        return None
    return array if array.ndim == 3 and is_image_object(array) else None


def _value_range(array: np.ndarray) -> tuple[float, float]:
    """The range an array image's values are read in: [0, 1] or [0, 255] for floats within
    them, the type's own for unsigned integers, else the array's own minimum and maximum (a
    normalised tensor's, say). Raises :class:`InvalidImageError` for NaN or infinite values."""
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InvalidImageError("in-memory image holds NaN or infinite values: it cannot be anonymized")
    low, high = float(array.min(initial=0)), float(array.max(initial=0))
    if array.dtype == np.uint8:
        return 0.0, 255.0
    if low >= 0.0 and high <= 1.0 and np.issubdtype(array.dtype, np.floating):
        return 0.0, 1.0
    if low >= 0.0 and high <= 255.0:
        return 0.0, 255.0
    if array.dtype == np.uint16:
        return 0.0, 65535.0
    return (low, high) if high > low else (low, low + 1.0)


def _as_8bit(array: np.ndarray) -> np.ndarray:
    """An array image's values mapped from :func:`_value_range` onto 8 bits."""
    if array.dtype == np.uint8:
        return array
    low, high = _value_range(array)
    scaled = (array.astype(np.float64) - low) / (high - low) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _png_of(value: Any) -> bytes:
    if isinstance(value, Image.Image):
        picture = value
    else:
        tensor = _tensor_pixels(value)
        pixels = _as_8bit(value if tensor is None else tensor[0])
        picture = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    try:
        picture.save(buffer, "PNG")
    except (OSError, ValueError) as exc:  # a mode PNG cannot hold: convert, never pass on
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, "PNG")
        logger.debug("in-memory image of mode %s converted to RGB (%s)", picture.mode, exc)
    return buffer.getvalue()


def _object_in_kind(original: Any, image: AnonymizedImage) -> Any:
    """The anonymized image as the same kind of in-memory object as ``original`` (an array of
    its shape, type and value range). An alpha channel comes back opaque: the engine judged
    the pixels composited onto white, and the original's alpha is the original's data (a
    matte, or a face hidden there), never passed on."""
    tensor = _tensor_pixels(original)
    if tensor is not None:
        import torch

        array, layout = tensor
        pixels = np.array(_object_in_kind(array, image))  # writable: torch shares its memory
        if layout != "hwc":
            pixels = np.ascontiguousarray(pixels.transpose(2, 0, 1))
        if layout == "nchw":
            pixels = pixels[None]
        return torch.from_numpy(pixels).to(device=original.device, dtype=original.dtype)
    with Image.open(io.BytesIO(image.data)) as decoded:
        rgb = decoded.convert("RGB")
    if isinstance(original, Image.Image):
        return rgb.convert("L") if original.mode in ("L", "LA", "1", "I", "I;16", "F") else rgb
    channels = 1 if original.ndim == 2 else original.shape[2]
    pixels = np.asarray(rgb.convert("L"))[..., None] if channels in (1, 2) else np.asarray(rgb)
    if channels in (2, 4):
        pixels = np.concatenate([pixels, np.full((*pixels.shape[:2], 1), 255, np.uint8)], axis=2)
    if original.ndim == 2:
        pixels = pixels[..., 0]
    if original.dtype == np.uint8:
        return pixels
    low, high = _value_range(original)
    values = pixels.astype(np.float64) / 255.0 * (high - low) + low
    if np.issubdtype(original.dtype, np.integer):
        info = np.iinfo(original.dtype)
        values = np.clip(np.round(values), info.min, info.max)
    return values.astype(original.dtype)


def image_bytes_of(value: Any) -> bytes | None:
    """The image inside ``value`` when it carries image data (bytes, base64, data URI), else None.

    Raises :class:`InvalidImageError` when it claims to be an image (an ``image/`` data
    URI, say) but cannot be decoded: such a value must be withheld, never passed on.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if sniff_image(raw):
            return raw
        try:  # bytes holding base64 text
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        return decode_base64_image(text) if looks_like_base64_image(text) else None
    if isinstance(value, str) and looks_like_base64_image(value):
        return decode_base64_image(value)
    return None


def in_kind(original: Any, image: AnonymizedImage) -> Any:
    """The anonymized image encoded like ``original`` was (bytes, data URI, base64, or an
    in-memory PIL image or array)."""
    if is_image_object(original):
        return _object_in_kind(original, image)
    if isinstance(original, (bytes, bytearray, memoryview)):
        return image.data
    if isinstance(original, str) and original[:5].lower() == "data:":
        return image.data_uri
    return image.base64


def anonymize_inline_images(
    value: Any, anonymize: Callable[..., AnonymizedImage], reports: list[dict[str, Any]]
) -> Any:
    """``value`` with every image inside it (bytes, base64 or data URI, in nested dicts and
    lists too) replaced by ``anonymize(data=...)``'s output in the same encoding; each
    output's report is appended to ``reports``. An undecodable image raises
    :class:`InvalidImageError`: it must be withheld, never passed on."""
    if isinstance(value, dict):
        return {k: anonymize_inline_images(v, anonymize, reports) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        pixels = nested_list_image(value)
        if pixels is not None:  # pixels made JSON-friendly with ``.tolist()``
            return type(value)(anonymize_inline_images(pixels, anonymize, reports).tolist())
        return type(value)(anonymize_inline_images(v, anonymize, reports) for v in value)
    if image_batch(value):  # frames, thumbnails: one array or tensor of several images
        parts = [anonymize_inline_images(frame, anonymize, reports) for frame in value]
        if isinstance(value, np.ndarray):
            return np.stack(parts)
        import torch

        return torch.stack(parts)
    data = _png_of(value) if is_image_object(value) else image_bytes_of(value)
    if data is None:
        return anonymize_embedded_images(value, anonymize, reports) if isinstance(value, str) else value
    image = anonymize(data=data)
    reports.append(image.report)
    return in_kind(value, image)


#: The report of an image link removed from text: the image behind it was never anonymized.
LINK_REMOVED = "image link removed: the image behind it was not anonymized"
#: An image data URI inside text (Markdown ``![](data:image/...)``, HTML ``<img src=...>``).
DATA_URI_IN_TEXT = re.compile(r"data:image/[\w.+-]+(?:;[\w.+-]+=[^;,\s]*)*;base64,[A-Za-z0-9+/]+={0,2}", re.IGNORECASE)
#: Shortest bare base64 run taken for an image (96 bytes: no photo is smaller), so that a
#: token of prose whose first bytes happen to read as a two-byte magic number is left alone.
MIN_BARE_IMAGE_CHARS = 128
#: Image data inside text in any form: a data URI of any declared type (a photo labelled
#: ``application/octet-stream`` is still a photo), base64 (either alphabet, percent-encoded or
#: not) or percent-encoded raw bytes, or a bare base64 run, line-wrapped or not, as prompts
#: paste images ("Image (base64): /9j/4AAQ...") or tools print bytes (in hex, or as Python's
#: ``b'\\xff\\xd8...'`` literal, which a tool's bytes become as text); slashes escaped
#: as JSON may escape them (``\\/``) too. Each is judged by its bytes.
DATA_IN_TEXT = re.compile(
    r"(?P<uri>data:[\w.+-]+\\?/[\w.+-]+(?:;[\w.+-]+=[^;,\s]*)*(?P<b64>;base64)?,)"
    r"(?P<payload>(?(b64)(?:[A-Za-z0-9+/_-]|\\/|%[0-9A-Fa-f]{2})+(?:=|%3[Dd]){0,2}|[^\s\"'<>)\]]+))"
    r"|(?<![A-Za-z0-9_])(?P<pybytes>b'(?:[^'\\\r\n]|\\.){64,}'|b\"(?:[^\"\\\r\n]|\\.){64,}\")"
    r"|(?<![A-Za-z0-9+/=_\\-])(?P<bare>[A-Za-z0-9+/_\\-]{64,}(?:\r?\n[A-Za-z0-9+/_\\-]{4,})*={0,2})",
    re.IGNORECASE,
)


def _starts_like_image(head: bytes) -> bool:
    """:func:`sniff_image` with the two-byte magic numbers checked further (a BMP's header
    size, a PNM's whitespace), for data nothing declares an image: one random run in some
    20,000 starts with ``BM``, ``P5`` or ``P6``."""
    if not sniff_image(head):
        return False
    if head[:2] == b"BM":
        return int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124)
    if head[:2] in (b"P5", b"P6"):
        return head[2:3] in (b" ", b"\t", b"\n", b"\r")
    return True


def _is_embedded_image(match: re.Match[str]) -> bool:
    """Whether a :data:`DATA_IN_TEXT` match is an image: an image data URI (it claims to be
    one, readable or not), or data whose first bytes start like an image file."""
    uri = match.group("uri")
    if uri is not None and uri[5:11].lower() == "image/":
        return True
    if match.group("pybytes") is not None:
        return _starts_like_image(_embedded_bytes(match)[:64])
    if uri is None and len(match.group("bare")) < MIN_BARE_IMAGE_CHARS:
        return False
    try:
        if uri is not None:
            return _starts_like_image(_data_uri_bytes(uri + match.group("payload")[:_SNIFFED_CHARS]))
        if _is_hex(match):
            return _starts_like_image(bytes.fromhex("".join(match.group("bare")[:96].split())[:64]))
        return _starts_like_image(_base64_head(match.group("bare")))
    except (binascii.Error, ValueError):
        return False


def _is_hex(match: re.Match[str]) -> bool:
    """Whether a bare :data:`DATA_IN_TEXT` run is a hex dump (as tools print bytes) rather than
    base64: hex digits only, an even number of them."""
    bare = match.group("bare")
    compact = "".join(bare.split()) if bare is not None else ""
    return bool(compact) and len(compact) % 2 == 0 and _HEX.fullmatch(compact) is not None


_HEX = re.compile(r"[0-9a-fA-F]+")


def _embedded_bytes(match: re.Match[str]) -> bytes:
    """The bytes of a :data:`DATA_IN_TEXT` match (empty when undecodable)."""
    try:
        if match.group("pybytes") is not None:
            value = ast.literal_eval(match.group("pybytes"))  # a literal only: nothing runs
            return value if isinstance(value, bytes) else b""
        if match.group("uri") is not None:
            return _data_uri_bytes(match.group("uri") + match.group("payload"))
        if _is_hex(match):
            return bytes.fromhex("".join(match.group("bare").split()))
        return _base64_bytes(match.group("bare"))
    except (binascii.Error, ValueError, SyntaxError):
        return b""


def anonymize_embedded_images(
    text: str,
    anonymize: Callable[..., AnonymizedImage],
    reports: list[dict[str, Any]],
    on_error: Callable[[IdmragError], str] | None = None,
) -> str:
    """``text`` with every image inside it (a data URI, or bare base64 whose bytes are an
    image: :data:`DATA_IN_TEXT`) replaced by ``anonymize(data=...)``'s output in the same form;
    each output's report is appended to ``reports``. An image that
    cannot be anonymized raises its :class:`IdmragError` (withhold the text), or, with
    ``on_error``, is replaced by what ``on_error`` returns for it."""

    def replaced(match: re.Match[str]) -> str:
        if not _is_embedded_image(match):
            return match.group(0)  # base64 of something else: a key, a hash, a document
        try:
            image = anonymize(data=_embedded_bytes(match))
        except IdmragError as exc:
            if on_error is None:
                raise
            reports.append({"status": "withheld", "error": shareable_reason(str(exc))})
            return on_error(exc)
        reports.append(image.report)
        if match.group("uri"):
            return image.data_uri
        if match.group("pybytes"):
            return repr(image.data)
        return image.data.hex() if _is_hex(match) else image.base64

    text, unlinked = unlink_images(DATA_IN_TEXT.sub(replaced, text))
    reports.extend({"status": "withheld", "error": LINK_REMOVED} for _ in range(unlinked))
    return text


def embeds_images(text: str) -> bool:
    """True when ``text`` holds image data (a data URI, bare base64 of an image: see
    :data:`DATA_IN_TEXT`) or links to an image (Markdown, HTML, URL)."""
    return any(_is_embedded_image(m) for m in DATA_IN_TEXT.finditer(text)) or links_images(text)


def anonymize_text_images(text: str, anonymize: Callable[..., AnonymizedImage], reports: list[dict[str, Any]]) -> str:
    """``text`` anonymized when it is an image in base64 (the whole text, as some loaders
    store images), else with the images embedded in it anonymized (see
    :func:`anonymize_embedded_images`)."""
    stripped = text.strip()
    if DATA_URI_IN_TEXT.fullmatch(stripped) is None and looks_like_base64_image(stripped):
        image = anonymize(data=decode_base64_image(stripped))
        reports.append(image.report)
        return image.base64
    return anonymize_embedded_images(text, anonymize, reports)


def carries_images(value: Any) -> bool:
    """True when ``value`` holds, at any depth, image data (an image data URI inside text
    too) or a path or URL of an image file."""
    if isinstance(value, dict):
        return any(carries_images(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return nested_list_image(value) is not None or any(carries_images(v) for v in value)
    if isinstance(value, str) and embeds_images(value):
        return True
    return is_inline_image(value) or is_image_location(value)


def is_inline_image(value: Any) -> bool:
    """True for image data (bytes, base64, data URI, an in-memory image, pixels as nested
    lists), readable or not."""
    if is_image_object(value) or nested_list_image(value) is not None or image_batch(value):
        return True
    try:
        return image_bytes_of(value) is not None
    except InvalidImageError:
        return True  # it claims to be an image


def image_reference(value: Any) -> dict[str, Any]:
    """The ``data``/``path``/``url`` keyword arguments of the engine for an image given as
    data, a path or an http(s) URL; other URL schemes and types raise :class:`InvalidImageError`."""
    if isinstance(value, Path):
        return {"path": value}
    data = image_bytes_of(value)
    if data is not None:
        return {"data": data}
    if not isinstance(value, str):
        raise InvalidImageError(f"unsupported image value of type {type(value).__name__}")
    if value.lower().startswith(("http://", "https://")):
        return {"url": value}
    if "://" in value:
        raise InvalidImageError(f"unsupported image URL scheme in {value[:30]!r}")
    return {"path": value}


def is_image_location(value: Any) -> bool:
    """True for a path or http(s)/file URL string whose name ends like an image file."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or len(value) > 4096 or "\n" in value:
        return False
    path = value.split("?", 1)[0].split("#", 1)[0].lower()
    return path.endswith(IMAGE_SUFFIXES)


def config_to_dict(config: AnonymizerConfig) -> dict[str, Any]:
    """The engine settings as plain JSON values (tuples as lists, paths as strings)."""
    out: dict[str, Any] = {}
    for key, value in asdict(config).items():
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Path):
            value = str(value)
        out[key] = value
    return out


def config_from_dict(data: dict[str, Any]) -> AnonymizerConfig:
    fields = {f.name for f in dataclasses.fields(AnonymizerConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown engine settings {unknown}; known: {sorted(fields)}")
    values = dict(data)
    for key in ("rotations", "oracles", "detection_thresholds"):
        if key in values and values[key] is not None:
            values[key] = tuple(values[key])
    for key in ("generator_weights", "cache_dir"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    return AnonymizerConfig(**values)


class EngineHolder:
    """The engine an integration uses: injected, or created on first use from ``config``."""

    def __init__(self, engine: FaceAnonymizer | None = None, config: AnonymizerConfig | None = None) -> None:
        self._engine = engine
        self.config = engine.config if engine is not None else (config or AnonymizerConfig())
        self._lock = threading.Lock()

    @property
    def engine(self) -> FaceAnonymizer:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = FaceAnonymizer(self.config)
        return self._engine


class AnonymizerBridge:
    """Holds the engine (injected, or created on first use) and the URL policy.

    Args:
        engine: a shared :class:`FaceAnonymizer`; default: one created lazily.
        fetch_urls: load images given only by URL (with ``timeout_s`` and ``max_bytes``);
            when False such images are refused and withheld.
        output_format: encoding of anonymized images handed on (JPEG, PNG or WEBP).
    """

    def __init__(
        self,
        engine: FaceAnonymizer | EngineHolder | None = None,
        fetch_urls: bool = True,
        timeout_s: float = 10.0,
        max_bytes: int = 20_000_000,
        output_format: str = "JPEG",
        fetch_allow: tuple[str, ...] = (),
    ) -> None:
        if output_format.upper() not in MIMETYPES:
            raise ValueError(f"output_format must be one of {sorted(MIMETYPES)}")
        self._holder = engine if isinstance(engine, EngineHolder) else EngineHolder(engine)
        self.fetch_urls = fetch_urls
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.output_format = output_format.upper()
        self.fetch_allow = fetch_allow

    @property
    def engine(self) -> FaceAnonymizer:
        return self._holder.engine

    def shareable_id(self, identifier: str | None, known: Sequence[str] = ()) -> str | None:
        """``identifier`` (a node's or document's id) as it may be handed on: unchanged unless
        it spells where the image came from (a path, a URL, a file name, one of ``known``),
        then a stand-in keyed by the engine's pseudonym secret (see :func:`pseudonymous_id`)."""
        if not identifier or not reveals_location(identifier, known):
            return identifier
        secret = getattr(self.engine.generator, "secret", None)
        return pseudonymous_id(identifier, bytes(secret) if isinstance(secret, (bytes, bytearray)) else None)

    @staticmethod
    def reason(exc: BaseException, known: Sequence[str] = ()) -> str:
        """Why an image was withheld, as it may travel with the data: without paths or URLs."""
        return shareable_reason(str(exc), known)

    def withhold(self, exc: IdmragError, what: str) -> None:
        """Apply the failure policy to an image that cannot be handed on: re-raise under
        ``on_failure="raise"``, else log (the caller then drops the item)."""
        if self._holder.config.on_failure == "raise":
            raise exc
        logger.warning("%s withheld: %s", what, exc)

    def fetch(self, url: str) -> bytes:
        if not self.fetch_urls:
            raise ImageWithheldError(f"image given only by URL and fetch_urls is off: {url!r} withheld")
        return FetchPolicy(self.timeout_s, self.max_bytes, allow=tuple(self.fetch_allow)).fetch(url)

    def prefetch(self, sources: list[bytes | Path]) -> None:
        """Anonymize several images together ahead of an item-by-item pass, which then finds
        them in the engine's result cache: the engine's oracles judge a whole batch of images
        in one forward pass each. Only when the cache can hold them all; an image that fails
        here is reported by the item-by-item pass, under the policy, as it would be anyway."""
        engine = self.engine
        cache = engine.cache
        if len(sources) < 2 or cache is None or (cache.folder is None and len(sources) > cache.max_entries):
            return
        missing = [s for s in sources if not isinstance(s, bytes) or not cache.has_encoded(cache.bytes_key(s))]
        if len(missing) > 1:  # a single image gains nothing from a batch
            engine.anonymize_many(missing)

    def anonymize(
        self, *, data: bytes | None = None, path: str | Path | None = None, url: str | None = None
    ) -> AnonymizedImage:
        """Anonymize the first image reference given (data, else path, else URL).

        Raises an :class:`~idmrag_plugin.errors.IdmragError` when the image cannot be handed
        on safely: :class:`ImageWithheldError` when the engine's policy withheld it.
        """
        if data is not None:
            source: bytes | Path = data
        elif path is not None:
            source = Path(path)
        elif url is not None:
            # a data: URL carries the image itself; anything else is fetched under the policy
            source = decode_base64_image(url) if url[:5].lower() == "data:" else self.fetch(url)
        else:
            raise InvalidImageError("no image data, path or URL")
        result = self.engine.anonymize(source)
        if result.pixels is None:
            raise ImageWithheldError(f"image withheld: {result.error}")
        return AnonymizedImage(
            result.to_bytes(self.output_format), MIMETYPES[self.output_format], result.report()
        )


def known_output_format(value: str) -> str:
    """Validate an integration's ``output_format`` field (JPEG, PNG or WEBP)."""
    if value.upper() not in MIMETYPES:
        raise ValueError(f"output_format must be one of {sorted(MIMETYPES)}, got {value!r}")
    return value.upper()


class EngineSettingsMixin:
    """Engine handling shared by the pydantic integration classes of both frameworks.

    The class declares the fields ``engine_config``, ``fetch_urls``, ``fetch_allow``,
    ``timeout_s``, ``max_bytes``, ``output_format`` and the private attributes ``_holder``
    and ``_injected``; its ``__init__`` calls :meth:`_init_engine` after pydantic's. Every
    call reads the fields afresh (:attr:`_bridge`), and an ``engine_config`` changed after
    construction builds a new engine unless one was injected.
    """

    @staticmethod
    def _engine_data(engine: FaceAnonymizer | None, data: dict[str, Any]) -> dict[str, Any]:
        if engine is not None:
            data["engine_config"] = config_to_dict(engine.config)
        return data

    def _init_engine(self, engine: FaceAnonymizer | None) -> None:
        self._injected = engine is not None
        config = config_from_dict(self.engine_config) if self.engine_config else None  # type: ignore[attr-defined]
        self._holder = EngineHolder(engine, config)
        if self.engine_config is None:  # type: ignore[attr-defined]
            self.engine_config = config_to_dict(self._holder.config)

    def _engine_holder(self) -> EngineHolder:
        if not self._injected and self.engine_config is not None:  # type: ignore[attr-defined]
            wanted = config_from_dict(self.engine_config)  # type: ignore[attr-defined]
            if wanted != self._holder.config:  # changed after construction: a new engine
                self._holder = EngineHolder(config=wanted)
        return self._holder

    @property
    def _bridge(self) -> AnonymizerBridge:
        """Built from the current field values at every call."""
        return AnonymizerBridge(
            self._engine_holder(), fetch_urls=self.fetch_urls, timeout_s=self.timeout_s,  # type: ignore[attr-defined]
            max_bytes=self.max_bytes, output_format=self.output_format,  # type: ignore[attr-defined]
            fetch_allow=tuple(self.fetch_allow),  # type: ignore[attr-defined]
        )

    @property
    def engine(self) -> FaceAnonymizer:
        return self._engine_holder().engine
