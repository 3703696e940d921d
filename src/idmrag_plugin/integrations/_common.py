"""What the framework integrations share: resolving an image reference, anonymizing it, and
turning the outcome into bytes, a MIME type and a report, or a refusal."""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idmrag_plugin.errors import IdmragError, ImageWithheldError, InvalidImageError
from idmrag_plugin.pipeline import FaceAnonymizer

logger = logging.getLogger(__name__)

MIMETYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
REPORT_KEY = "idmrag_report"


@dataclass(frozen=True)
class AnonymizedImage:
    data: bytes
    mimetype: str
    report: dict[str, Any]

    @property
    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


def decode_base64_image(text: str | bytes) -> bytes:
    """Bytes of a base64 image, with or without a ``data:image/...;base64,`` prefix."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="strict")
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError(f"image field is not valid base64: {exc}") from exc


def looks_like_base64_image(text: str) -> bool:
    """True when ``text`` decodes as base64 into the header of a known image format."""
    if len(text) < 32:
        return False
    head = text.split(",", 1)[-1] if text.startswith("data:image") else text
    try:
        raw = base64.b64decode("".join(head[:64].split())[:60], validate=True)
    except (binascii.Error, ValueError):
        return False
    signatures = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")
    return raw.startswith(signatures)


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
        engine: FaceAnonymizer | None = None,
        fetch_urls: bool = True,
        timeout_s: float = 10.0,
        max_bytes: int = 20_000_000,
        output_format: str = "JPEG",
    ) -> None:
        if output_format.upper() not in MIMETYPES:
            raise ValueError(f"output_format must be one of {sorted(MIMETYPES)}")
        self._engine = engine
        self._lock = threading.Lock()
        self.fetch_urls = fetch_urls
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.output_format = output_format.upper()

    @property
    def engine(self) -> FaceAnonymizer:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = FaceAnonymizer()
        return self._engine

    def withhold(self, exc: IdmragError, what: str) -> None:
        """Apply the failure policy to an image that cannot be handed on: re-raise under
        ``on_failure="raise"``, else log (the caller then drops the item)."""
        if self.engine.config.on_failure == "raise":
            raise exc
        logger.warning("%s withheld: %s", what, exc)

    def fetch(self, url: str) -> bytes:
        if not self.fetch_urls:
            raise ImageWithheldError(f"image given only by URL and fetch_urls is off: {url!r} withheld")
        if not url.lower().startswith(("http://", "https://")):
            raise InvalidImageError(f"only http(s) image URLs are fetched, got {url[:40]!r}")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                data = response.read(self.max_bytes + 1)
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            raise InvalidImageError(f"cannot fetch image URL: {exc}") from exc
        if len(data) > self.max_bytes:
            raise InvalidImageError(f"image at URL is larger than max_bytes={self.max_bytes}")
        return data

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
            source = self.fetch(url)
        else:
            raise InvalidImageError("no image data, path or URL")
        result = self.engine.anonymize(source)
        if result.pixels is None:
            raise ImageWithheldError(f"image withheld: {result.error}")
        return AnonymizedImage(
            result.to_bytes(self.output_format), MIMETYPES[self.output_format], result.report()
        )
