"""Corpus-scale anonymization on Ray Data: ``idmrag anonymize-corpus SRC DST``.

Images are read from a folder (recursively) or from a text file listing paths and http(s)
URLs, one per line. A pool of Ray actors, each holding one :class:`FaceAnonymizer` whose
models load once, anonymizes them; each writes the anonymized image under ``DST/images``
and a one-line JSON record under ``DST/records`` (atomically, image first). At the end the
records are gathered into ``DST/report.parquet`` (source, output, faces, methods, oracle
similarities, status, error).

Fail closed: an image that cannot be decoded or anonymized is never written, only recorded
with its error. Resumable: a rerun skips every source that already has a record, so a
crash loses at most the images in flight.

Ray is optional (``pip install 'idmrag-plugin[ray]'``); the core package never imports it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from idmrag_plugin.config import AnonymizerConfig
from idmrag_plugin.errors import IdmragError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"}
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


@dataclass(frozen=True)
class CorpusItem:
    source: str  # path or URL
    relative: str  # output location below DST/images, without suffix

    @property
    def key(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:32]


def list_sources(src: str | Path) -> list[CorpusItem]:
    """Items of a folder (recursively) or of a list file (one path or URL per line)."""
    path = Path(src)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [CorpusItem(str(p), str(p.relative_to(path).with_suffix(""))) for p in files]
    if path.is_file():
        items = []
        for line in path.read_text().splitlines():
            uri = line.strip()
            if not uri or uri.startswith("#"):
                continue
            if uri.lower().startswith(("http://", "https://")):
                name = Path(urllib.parse.urlparse(uri).path).stem or "image"
                items.append(CorpusItem(uri, f"urls/{hashlib.sha256(uri.encode()).hexdigest()[:12]}_{name}"))
            else:
                items.append(CorpusItem(uri, f"files/{hashlib.sha256(uri.encode()).hexdigest()[:12]}_{Path(uri).stem}"))
        return items
    raise IdmragError(f"{src} is neither a folder of images nor a file listing image paths/URLs")


def done_keys(dst: Path) -> set[str]:
    records = dst / "records"
    return {p.stem for p in records.glob("*.json")} if records.is_dir() else set()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _read_source(source: str, timeout_s: float, max_bytes: int) -> bytes:
    if source.lower().startswith(("http://", "https://")):
        from idmrag_plugin.integrations._common import AnonymizerBridge

        return AnonymizerBridge(engine=None, timeout_s=timeout_s, max_bytes=max_bytes).fetch(source)
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise IdmragError(f"cannot read {source}: {exc}") from exc


class CorpusWorker:
    """Anonymizes batches of items; one instance per Ray actor (models load once)."""

    def __init__(self, config: dict[str, Any], dst: str, timeout_s: float = 10.0, max_bytes: int = 50_000_000) -> None:
        from idmrag_plugin.pipeline import FaceAnonymizer

        self.config = AnonymizerConfig(**config)
        self.engine = FaceAnonymizer(self.config)
        self.engine.warmup()
        self.dst = Path(dst)
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes

    def process(self, item: CorpusItem) -> dict[str, Any]:
        start = time.perf_counter()
        record: dict[str, Any] = {"source": item.source, "output": None, "faces": 0, "methods": "[]",
                                  "oracle_similarities": "[]", "status": "error", "error": None}
        try:
            result = self.engine.anonymize(_read_source(item.source, self.timeout_s, self.max_bytes))
            record["faces"] = len(result.faces)
            record["methods"] = json.dumps([f.method for f in result.faces])
            record["oracle_similarities"] = json.dumps(
                [{v.oracle: round(v.similarity, 4) for v in f.verdicts} for f in result.faces]
            )
            record["status"] = result.status
            if result.pixels is not None:
                output = self.dst / "images" / (item.relative + SUFFIX[self.config.output_format])
                _atomic_write(output, result.to_bytes(self.config.output_format))
                record["output"] = str(output.relative_to(self.dst))
            else:
                record["error"] = result.error
        except IdmragError as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["seconds"] = round(time.perf_counter() - start, 4)
        _atomic_write(self.dst / "records" / f"{item.key}.json", json.dumps(record).encode())
        return record

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = [self.process(CorpusItem(s, r)) for s, r in zip(batch["source"], batch["relative"], strict=True)]
        return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def gather_report(dst: Path) -> Path:
    """Write ``DST/report.parquet`` from every record (all runs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(p.read_text()) for p in sorted((dst / "records").glob("*.json"))]
    columns = ["source", "output", "faces", "methods", "oracle_similarities", "status", "error", "seconds"]
    table = pa.table({c: [r.get(c) for r in rows] for c in columns})
    path = dst / "report.parquet"
    pq.write_table(table, path)
    return path


@dataclass
class CorpusSummary:
    total: int
    skipped: int
    processed: int
    written: int
    errors: int
    seconds: float
    report: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def anonymize_corpus(
    src: str | Path,
    dst: str | Path,
    config: AnonymizerConfig | None = None,
    *,
    address: str | None = None,
    actors: int = 1,
    batch_size: int = 8,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    limit: int | None = None,
) -> CorpusSummary:
    """Anonymize a corpus with Ray Data; see the module docstring.

    Args:
        address: an existing Ray cluster (``"auto"`` or ``"ray://host:10001"``); default: a
            local Ray runtime on this machine.
        actors: size of the actor pool; each loads the models once.
        num_cpus, num_gpus: resources per actor.
        limit: process at most this many of the remaining items (the rest on a rerun).
    """
    try:
        import ray
    except ImportError as exc:
        raise IdmragError("anonymize-corpus needs Ray: pip install 'idmrag-plugin[ray]'") from exc

    start = time.perf_counter()
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    config = config or AnonymizerConfig()
    items = list_sources(src)
    finished = done_keys(dst)
    todo = [item for item in items if item.key not in finished]
    if limit is not None:
        todo = todo[:limit]
    logger.info("%d items, %d already done, %d to process now", len(items), len(items) - len([i for i in items if i.key not in finished]), len(todo))
    written = errors = 0
    if todo:
        if not ray.is_initialized():
            # Locally Ray takes the machine's CPUs: the actors need actors * num_cpus of them and
            # Ray Data's own read and split tasks need at least one more.
            ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        total_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        if actors * num_cpus > total_cpus - 1 and total_cpus > 1:
            # Ray Data's read and split tasks need a CPU the actors do not hold, else the
            # pool waits for them forever; share the rest between the actors.
            num_cpus = (total_cpus - 1) / actors
            logger.info("sharing %.0f CPUs: %.2f logical CPUs per actor", total_cpus, num_cpus)
        config_dict = {k: v for k, v in asdict(config).items() if k != "cache_dir"}
        dataset = ray.data.from_items([{"source": i.source, "relative": i.relative} for i in todo])
        dataset = dataset.repartition(max(1, min(len(todo), actors * 4)))
        results = dataset.map_batches(
            CorpusWorker,
            fn_constructor_kwargs={"config": config_dict, "dst": str(dst)},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )
        for row in results.iter_rows():
            written += row["output"] is not None
            errors += row["status"] == "error"
    report = gather_report(dst)
    return CorpusSummary(len(items), sum(i.key in finished for i in items), len(todo), written, errors,
                         round(time.perf_counter() - start, 2), str(report))
