"""Per-face and per-image reports: what an auditor reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from idmrag_plugin.engine.detect import Detection
from idmrag_plugin.engine.oracles import OracleVerdict
from idmrag_plugin.image_io import encode

GENERATED = "generated"
OBFUSCATED = "obfuscated"
WITHHELD = "withheld"


@dataclass
class FaceReport:
    """How one detected face left the engine."""

    index: int
    detection: Detection
    method: str = OBFUSCATED
    reason: str = ""
    attempts: int = 0
    verdicts: list[OracleVerdict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        """True when every oracle judged the final face a different person."""
        return bool(self.verdicts) and all(v.anonymous for v in self.verdicts)

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            **self.detection.to_dict(),
            "method": self.method,
            "reason": self.reason,
            "attempts": self.attempts,
            "verified": self.verified,
            "oracles": [v.to_dict() for v in self.verdicts],
            "errors": list(self.errors),
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> FaceReport:
        """Rebuild a report from :meth:`to_dict` (landmarks are not kept there: NaN)."""
        detection = Detection(
            tuple(float(v) for v in data["box"]),  # type: ignore[arg-type]
            float(data["score"]), np.full((5, 2), np.nan), str(data["detector"]),
        )
        return cls(
            index=int(data["index"]), detection=detection, method=str(data["method"]),
            reason=str(data.get("reason", "")), attempts=int(data.get("attempts", 0)),
            verdicts=[OracleVerdict(v["oracle"], float(v["similarity"]), float(v["threshold"]),
                                    bool(v.get("exact", True))) for v in data.get("oracles", [])],
            errors=list(data.get("errors", [])), timings_ms=dict(data.get("timings_ms", {})),
        )


#: Encodings (format, quality) of one cached result kept with it.
ENCODINGS_KEPT = 3


@dataclass
class AnonymizationResult:
    """The anonymized image (``None`` when withheld) and its report.

    ``status`` is ``"anonymized"`` (faces replaced or obfuscated), ``"no_faces"`` (pixels
    unchanged, metadata stripped), ``"dropped"`` (a face could not be verified and the
    policy withholds the image) or ``"error"`` (the input could not be processed; only
    from :meth:`FaceAnonymizer.anonymize_many`).
    """

    status: str
    width: int
    height: int
    pixels: np.ndarray | None
    faces: list[FaceReport] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    privacy_level: str = ""
    error: str | None = None
    #: True when the result came from the anonymization cache (no model ran).
    cached: bool = False
    # Encodings of the cached entry's pixels, shared by every result handed out from that
    # entry (see ``cache.ResultCache``): a repeated hit is not re-encoded. Only used while
    # this result's pixels still equal the entry's.
    _encodings: dict[tuple[str, int], bytes] | None = field(default=None, init=False, repr=False, compare=False)
    _encoded_pixels: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def image(self) -> Image.Image | None:
        """A fresh PIL image with no metadata, or ``None`` when the image is withheld."""
        if self.pixels is None:
            return None
        return Image.fromarray(self.pixels, mode="RGB")

    def to_bytes(self, fmt: str = "PNG", quality: int = 92) -> bytes:
        """The image encoded without any metadata (EXIF, XMP, IPTC, GPS, ICC)."""
        if self.pixels is None:
            raise ValueError(f"no image to encode: status is {self.status!r}")
        memo, source = self._encodings, self._encoded_pixels
        if memo is None or source is None or not (self.pixels is source or np.array_equal(self.pixels, source)):
            return encode(self.pixels, fmt, quality)
        key = (fmt.upper(), int(quality))
        data = memo.get(key)
        if data is None:
            data = encode(self.pixels, fmt, quality)
            if len(memo) < ENCODINGS_KEPT:
                memo[key] = data
        return data

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for face in self.faces:
            out[face.method] = out.get(face.method, 0) + 1
        return out

    def summary(self) -> str:
        parts = ", ".join(f"{n} {m}" for m, n in sorted(self.counts().items()))
        return f"{self.status}: {len(self.faces)} face(s)" + (f" ({parts})" if parts else "")

    def report(self) -> dict[str, object]:
        return {
            "status": self.status,
            "width": self.width,
            "height": self.height,
            "privacy_level": self.privacy_level,
            "faces": [f.to_dict() for f in self.faces],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "error": self.error,
            "cached": self.cached,
        }
