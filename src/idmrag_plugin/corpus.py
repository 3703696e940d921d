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
import signal
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from idmrag_plugin.config import AnonymizerConfig
from idmrag_plugin.errors import IdmragError
from idmrag_plugin.fetch import FetchPolicy
from idmrag_plugin.image_io import read_file_bounded

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"}
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
MAX_LIST_BYTES = 100_000_000


@dataclass(frozen=True)
class CorpusItem:
    source: str  # path or URL
    relative: str  # output location below DST/images, without the output format's suffix

    @property
    def key(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:32]


def list_sources(src: str | Path) -> list[CorpusItem]:
    """Items of a folder (recursively) or of a list file (one path or URL per line)."""
    path = Path(src)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        # The source's own suffix stays in the name: c/photo.jpg and c/photo.png must not
        # both become images/c/photo.png.
        return _unique([CorpusItem(str(p), p.relative_to(path).as_posix()) for p in files])
    if path.is_file():
        if path.stat().st_size > MAX_LIST_BYTES:
            raise IdmragError(f"{src} is over {MAX_LIST_BYTES:,} bytes: not a list of image paths/URLs")
        try:
            text = path.read_text()
        except UnicodeDecodeError as exc:
            raise IdmragError(f"{src} is not a text file listing image paths/URLs: {exc}") from exc
        items = []
        for line in text.splitlines():
            uri = line.strip()
            if not uri or uri.startswith("#"):
                continue
            if uri.lower().startswith(("http://", "https://")):
                name = Path(urllib.parse.urlparse(uri).path).stem or "image"
                items.append(CorpusItem(uri, f"urls/{hashlib.sha256(uri.encode()).hexdigest()[:12]}_{name}"))
            else:
                items.append(CorpusItem(uri, f"files/{hashlib.sha256(uri.encode()).hexdigest()[:12]}_{Path(uri).stem}"))
        return _unique(list({item.source: item for item in items}.values()))
    raise IdmragError(f"{src} is neither a folder of images nor a file listing image paths/URLs")


def _unique(items: list[CorpusItem]) -> list[CorpusItem]:
    """Refuse two sources that would write the same output (names compared case-folded, as
    case-insensitive file systems do)."""
    seen: dict[str, str] = {}
    for item in items:
        key = item.relative.casefold()
        if key in seen:
            raise IdmragError(f"{item.source} and {seen[key]} would both be written to images/{item.relative}")
        seen[key] = item.source
    return items


def done_keys(dst: Path) -> set[str]:
    records = dst / "records"
    return {p.stem for p in records.glob("*.json")} if records.is_dir() else set()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _read_source(source: str, policy: FetchPolicy) -> bytes:
    if source.lower().startswith(("http://", "https://")):
        return policy.fetch(source)
    return read_file_bounded(source, policy.max_bytes)


class CorpusWorker:
    """Anonymizes batches of items; one instance per Ray actor (models load once)."""

    def __init__(self, config: dict[str, Any], dst: str, fetch: dict[str, Any] | None = None) -> None:
        from idmrag_plugin.pipeline import FaceAnonymizer

        self.config = AnonymizerConfig(**config)
        self.engine = FaceAnonymizer(self.config)
        self.engine.warmup()
        self.dst = Path(dst)
        self.fetch = FetchPolicy(**(fetch or {"max_bytes": self.config.max_bytes}))

    def process(self, item: CorpusItem) -> dict[str, Any]:
        start = time.perf_counter()
        record: dict[str, Any] = {"source": item.source, "output": None, "faces": 0, "methods": "[]",
                                  "oracle_similarities": "[]", "status": "error", "error": None}
        try:
            result = self.engine.anonymize(_read_source(item.source, self.fetch))
            record["faces"] = len(result.faces)
            record["methods"] = json.dumps([f.method for f in result.faces])
            record["oracle_similarities"] = json.dumps(
                [{v.oracle: round(v.similarity, 4) for v in f.verdicts} for f in result.faces]
            )
            record["status"] = result.status
            if result.pixels is not None:
                output = self.dst / "images" / (item.relative + SUFFIX[self.config.output_format])
                claimed = self.dst / "claims" / f"{hashlib.sha256(str(output).casefold().encode()).hexdigest()[:32]}"
                if not _claim(claimed, item.key):
                    raise IdmragError(f"another source already wrote {output.relative_to(self.dst)}")
                _atomic_write(output, result.to_bytes(self.config.output_format))
                record["output"] = str(output.relative_to(self.dst))
            else:
                record["error"] = result.error
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the corpus
            record["status"] = "error"
            record["output"] = None
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["seconds"] = round(time.perf_counter() - start, 4)
        _atomic_write(self.dst / "records" / f"{item.key}.json", json.dumps(record).encode())
        return record

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = [self.process(CorpusItem(s, r)) for s, r in zip(batch["source"], batch["relative"], strict=True)]
        return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def _claim(path: Path, owner: str) -> bool:
    """Claim an output name for one source, atomically; True when it is (or was) ours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return path.read_text().strip() == owner
    with os.fdopen(fd, "w") as handle:
        handle.write(owner)
    return True


def gather_report(dst: Path) -> Path:
    """Write ``DST/report.parquet`` from every record (all runs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = dst / "records"
    rows = [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))] if records.is_dir() else []
    columns = ["source", "output", "faces", "methods", "oracle_similarities", "status", "error", "seconds"]
    types = {"faces": pa.int64(), "seconds": pa.float64()}
    table = pa.table({c: pa.array([r.get(c) for r in rows], type=types.get(c, pa.string())) for c in columns})
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
    fetch_timeout_s: float = 10.0,
    fetch_allow: tuple[str, ...] = (),
) -> CorpusSummary:
    """Anonymize a corpus with Ray Data; see the module docstring.

    Args:
        address: an existing Ray cluster (``"auto"`` or ``"ray://host:10001"``); default: a
            local Ray runtime on this machine.
        actors: size of the actor pool; each loads the models once.
        num_cpus, num_gpus: resources per actor.
        limit: process at most this many of the remaining items (the rest on a rerun).
        fetch_timeout_s: deadline of each URL download, redirects included.
        fetch_allow: hosts or networks that URLs may point to although they are not public
            addresses (see :class:`~idmrag_plugin.fetch.FetchPolicy`).
    """
    try:
        import ray
    except ImportError as exc:
        raise IdmragError("anonymize-corpus needs Ray: pip install 'idmrag-plugin[ray]'") from exc

    start = time.perf_counter()
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    config = config or AnonymizerConfig()
    fetch = {"timeout_s": fetch_timeout_s, "max_bytes": config.max_bytes, "allow": tuple(fetch_allow)}
    items = list_sources(src)
    finished = done_keys(dst)
    todo = [item for item in items if item.key not in finished]
    if limit is not None:
        todo = todo[:limit]
    logger.info("%d items, %d already done, %d to process now", len(items), len(items) - len(todo), len(todo))
    written = errors = 0
    started_ray = False
    previous_sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        if previous_sigterm is not None:
            # A terminated driver must still shut down the Ray runtime it started.
            signal.signal(signal.SIGTERM, _raise_interrupt)
        if todo:
            if not ray.is_initialized():
                ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
                started_ray = True
            total_cpus = float(ray.cluster_resources().get("CPU", 1.0))
            if actors * num_cpus > total_cpus - 1 and total_cpus > 1:
                # Ray Data's read and split tasks need a CPU the actors do not hold, else the
                # pool waits for them forever; share the rest between the actors.
                num_cpus = (total_cpus - 1) / actors
                logger.info("sharing %.0f CPUs: %.2f logical CPUs per actor", total_cpus, num_cpus)
            config_dict = {k: v for k, v in asdict(config).items() if k != "cache_dir"}
            if config_dict.get("result_cache_dir") is None:
                config_dict["cache_size"] = 0  # every source is processed once: nothing to reuse
            if config_dict.get("threads") is None:
                # One torch thread per logical CPU the actor holds: torch's default, one per
                # core for every actor, collapses under contention.
                config_dict["threads"] = max(1, int(num_cpus))
            dataset = ray.data.from_items([{"source": i.source, "relative": i.relative} for i in todo])
            dataset = dataset.repartition(max(1, min(len(todo), actors * 4)))
            results = dataset.map_batches(
                CorpusWorker,
                fn_constructor_kwargs={"config": config_dict, "dst": str(dst), "fetch": fetch},
                batch_size=batch_size,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=num_cpus,
                num_gpus=num_gpus,
            )
            for row in results.iter_rows():
                written += row["output"] is not None
                errors += row["status"] == "error"
    finally:
        if started_ray:
            ray.shutdown()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        # Whatever happened, the records written so far are gathered.
        report = gather_report(dst)
    return CorpusSummary(len(items), sum(i.key in finished for i in items), len(todo), written, errors,
                         round(time.perf_counter() - start, 2), str(report))


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signum}")
