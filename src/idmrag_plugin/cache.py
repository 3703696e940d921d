"""Anonymization cache: the same image, engine settings and pseudonym secret give the same
result without running a model.

RAG retrieves the same popular images again and again. A cache entry is the anonymized
output and its report, found by a key derived from the decoded input pixels, the engine's
settings and thresholds, the generator and the weights it was built with (a new version's
weights miss), and (keyed with it) the generator's pseudonym secret. Nothing original is stored: not the input's pixels, bytes, path or URL, only the
output (already verified, or obfuscated) and the report. A new secret gives new keys, so
the cache is scoped like the pseudonyms themselves: results cached under one secret are
unreachable under another, and the keys reveal nothing without it.

Two layers: an in-memory LRU (bounded by entries and by the outputs' pixel bytes; each entry
also keeps up to ``report.ENCODINGS_KEPT`` encodings of its output, made on first request,
so that a repeated hit is not re-encoded) and an optional on-disk store
(``AnonymizerConfig.result_cache_dir``) shared between processes, written atomically.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import io
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from idmrag_plugin.report import AnonymizationResult, FaceReport

logger = logging.getLogger(__name__)

_VERSION = b"idmrag-result-cache-v1"


def weights_fingerprint(generator: Any) -> str:
    """sha256 over the weights a generator was built with: every ``Path`` attribute naming a
    model folder (its recorded sha256) or a file (its own). The packaged weights keep their
    paths across upgrades, so without it an on-disk cache kept under the same secret would hand
    out the previous version's faces."""
    from idmrag_plugin.weights import MODEL_CONFIG, sha256_of

    digest = hashlib.sha256()
    for name, value in sorted(getattr(generator, "__dict__", {}).items()):
        if not isinstance(value, Path):
            continue
        if (value / MODEL_CONFIG).is_file():
            recorded = json.loads((value / MODEL_CONFIG).read_text()).get("sha256", "")
        elif value.is_file():
            recorded = sha256_of(value)
        else:
            continue
        digest.update(f"{name}={recorded};".encode())
    return digest.hexdigest()


def scope_key(config: Any, thresholds: dict[str, float], generator: Any) -> bytes:
    """The secret key of one engine's cache: settings, thresholds, generator, its weights and
    its secret."""
    settings = json.dumps(
        {"config": {k: str(v) for k, v in asdict(config).items() if k not in ("cache_dir", "result_cache_dir", "batch_size")},
         "thresholds": thresholds,
         "generator": f"{type(generator).__module__}.{type(generator).__qualname__}" if generator else None,
         "weights": weights_fingerprint(generator)},
        sort_keys=True,
    ).encode()
    secret = getattr(generator, "secret", None)
    material = hashlib.sha256(_VERSION + settings).digest()
    if isinstance(secret, (bytes, bytearray)):
        material = hmac.new(bytes(secret), material, hashlib.sha256).digest()
    return material


class ResultCache:
    """Thread-safe LRU of anonymization results, optionally backed by a folder."""

    def __init__(
        self, scope: bytes, max_entries: int = 128, max_bytes: int = 256_000_000, folder: Path | None = None
    ) -> None:
        self._scope = scope
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.folder = Path(folder) if folder is not None else None
        self._entries: OrderedDict[str, AnonymizationResult] = OrderedDict()
        # encoded input bytes -> pixel key: a repeated file or upload skips decoding
        self._aliases: OrderedDict[str, str] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def rescope(self, scope: bytes) -> None:
        """Answer under a new scope from now on (the generator's secret changed): nothing kept
        under the old one is answered again, in memory or on disk (its keys and MACs are the old
        scope's)."""
        with self._lock:
            self._scope = scope
            self._entries.clear()
            self._aliases.clear()
            self._bytes = 0

    def key(self, pixels: np.ndarray) -> str:
        digest = hmac.new(self._scope, repr(pixels.shape).encode(), hashlib.sha256)
        digest.update(np.ascontiguousarray(pixels).data)
        return digest.hexdigest()

    def bytes_key(self, data: bytes) -> str:
        return hmac.new(self._scope, b"encoded:" + data, hashlib.sha256).hexdigest()

    def alias(self, encoded_key: str, key: str) -> None:
        """Remember that the encoded input ``encoded_key`` decodes to the pixels of ``key``."""
        with self._lock:
            self._aliases[encoded_key] = key
            self._aliases.move_to_end(encoded_key)
            while len(self._aliases) > 4 * max(self.max_entries, 1):
                self._aliases.popitem(last=False)

    def has_encoded(self, encoded_key: str) -> bool:
        """Whether :meth:`get_encoded` would answer (in memory; no copy made, no hit counted)."""
        with self._lock:
            key = self._aliases.get(encoded_key)
            return key is not None and key in self._entries

    def get_encoded(self, encoded_key: str) -> AnonymizationResult | None:
        """The result for an encoded input seen before (in memory only), else None."""
        with self._lock:
            key = self._aliases.get(encoded_key)
            entry = self._entries.get(key) if key is not None else None
            if entry is None:
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        return _copy(entry, cached=True)

    def get(self, key: str) -> AnonymizationResult | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is None and self.folder is not None:
            entry = self._read(key)
            if entry is not None:
                self._remember(key, entry)
        with self._lock:
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
        return _copy(entry, cached=True)

    def put(self, key: str, result: AnonymizationResult) -> None:
        entry = _copy(result, cached=False)
        self._remember(key, entry)
        if self.folder is not None:
            self._write(key, entry)

    def _remember(self, key: str, entry: AnonymizationResult) -> None:
        size = entry.pixels.nbytes if entry.pixels is not None else 0
        if size > self.max_bytes:
            return
        # the entry's own encodings, which every copy handed out shares (AnonymizationResult.to_bytes)
        entry._encodings, entry._encoded_pixels = {}, entry.pixels
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None and old.pixels is not None:
                self._bytes -= old.pixels.nbytes
            self._entries[key] = entry
            self._bytes += size
            while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
                _, evicted = self._entries.popitem(last=False)
                if evicted.pixels is not None:
                    self._bytes -= evicted.pixels.nbytes

    # ------------------------------------------------------------------ on disk
    def _mac(self, key: str, data: bytes) -> str:
        return hmac.new(self._scope, key.encode() + data, hashlib.sha256).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.folder is not None
        return self.folder / f"{key}.json", self.folder / f"{key}.png"

    def _write(self, key: str, entry: AnonymizationResult) -> None:
        from idmrag_plugin.image_io import encode

        report_path, image_path = self._paths(key)
        record = _to_record(entry)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            if entry.pixels is not None:
                png = encode(entry.pixels, "PNG")
                record["png_mac"] = self._mac(key, png)
                _atomic_write(image_path, png)
            record["report_mac"] = self._mac(key, json.dumps(record["report"], sort_keys=True).encode())
            _atomic_write(report_path, json.dumps(record).encode())
        except OSError as exc:
            logger.warning("result cache: cannot write %s: %s", report_path, exc)

    def _read(self, key: str) -> AnonymizationResult | None:
        from PIL import Image

        report_path, image_path = self._paths(key)
        try:
            record = json.loads(report_path.read_text())
            report_bytes = json.dumps(record["report"], sort_keys=True).encode()
            if not hmac.compare_digest(record["report_mac"], self._mac(key, report_bytes)):
                raise ValueError("report does not match its MAC")
            pixels = None
            if record["has_pixels"]:
                png = image_path.read_bytes()
                # Only this engine's scope (settings + pseudonym secret) can write a valid
                # entry: a file swapped in (an original photo, say) is never handed out.
                if not hmac.compare_digest(record["png_mac"], self._mac(key, png)):
                    raise ValueError("image does not match its MAC")
                with Image.open(io.BytesIO(png)) as image:
                    pixels = np.asarray(image.convert("RGB")).copy()
        except (OSError, ValueError, KeyError) as exc:
            if report_path.exists():
                logger.warning("result cache: unreadable entry %s: %s", report_path, exc)
            return None
        return _from_record(record, pixels)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _copy(result: AnonymizationResult, *, cached: bool) -> AnonymizationResult:
    out = copy.copy(result)
    out.pixels = result.pixels.copy() if result.pixels is not None else None
    out.faces = [copy.deepcopy(face) for face in result.faces]
    out.timings_ms = dict(result.timings_ms)
    out.cached = cached
    return out


def _to_record(result: AnonymizationResult) -> dict[str, Any]:
    return {"report": result.report(), "has_pixels": result.pixels is not None}


def _from_record(record: dict[str, Any], pixels: np.ndarray | None) -> AnonymizationResult:
    report = record["report"]
    result = AnonymizationResult(
        report["status"], report["width"], report["height"], pixels,
        timings_ms=dict(report.get("timings_ms", {})), privacy_level=report.get("privacy_level", ""),
        error=report.get("error"),
    )
    result.faces = [FaceReport.from_dict(face) for face in report["faces"]]
    return result
