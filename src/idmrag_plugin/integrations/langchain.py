"""LangChain integration: a retriever wrapper and a document compressor / transformer.

The one line to add::

    retriever = FaceAnonymizingRetriever(retriever=vectorstore.as_retriever())

Images are found wherever a document can carry one: ``page_content`` (base64 or an
``image/*`` data URI, any format), every metadata value holding image data (bytes,
base64, data URI; nested in dicts and lists too), and the metadata keys named by
``image_keys`` (paths and http(s) URLs as well). Each document carrying an image is handed
on as a copy whose images are the anonymized bytes, in the encoding they came in (a data
URI stays a data URI, base64 stays base64), whose MIME metadata matches the output, whose
original paths and URLs are removed, and whose ``metadata["idmrag_report"]`` holds the
per-face report. Raw strings and bytes (what the multi-vector retriever's byte store
returns) are anonymized in kind. Anything image-like that cannot be anonymized is
withheld: its document is dropped (or, with the engine's ``on_failure="raise"``, the error
propagates). Settings are read at each call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForRetrieverRun,
        CallbackManagerForRetrieverRun,
        Callbacks,
    )
    from langchain_core.documents import BaseDocumentTransformer, Document
    from langchain_core.documents.compressor import BaseDocumentCompressor
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict, Field, PrivateAttr, field_validator
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the LangChain integration needs langchain-core: pip install 'idmrag-plugin[langchain]'"
    ) from exc

from idmrag_plugin.errors import IdmragError, InvalidImageError
from idmrag_plugin.integrations._common import (
    LOCATION_KEYS,
    MIME_KEYS,
    MIMETYPES,
    REPORT_KEY,
    AnonymizerBridge,
    EngineHolder,
    EngineSettingsMixin,
    anonymize_embedded_images,
    anonymize_inline_images,
    drop_entries,
    drop_locations,
    drop_photo_metadata,
    embeds_images,
    image_bytes_of,
    image_reference,
    in_kind,
    is_image_location,
    is_image_object,
    known_output_format,
    looks_like_base64_image,
)
from idmrag_plugin.integrations._locations import known_locations, names_image_location
from idmrag_plugin.pipeline import FaceAnonymizer

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("image", "image_base64", "image_path", "image_url")

#: Items a LangChain retriever can return: documents, or raw values from a byte store.
RetrievedItem = Document | str | bytes


class FaceAnonymizerCompressor(EngineSettingsMixin, BaseDocumentCompressor, BaseDocumentTransformer):
    """Anonymize the images of documents; a compressor for ``ContextualCompressionRetriever``
    and a document transformer for ingestion."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    content_mode: str = Field(
        default="auto",
        description="'auto': page_content is an image when it is image data (base64 or data URI); "
        "'image': it always is; 'text': it never is.",
    )
    image_keys: list[str] = Field(
        default_factory=lambda: list(IMAGE_KEYS),
        description="Metadata keys whose paths and URLs are images too (image data is found under any key).",
    )
    output_key: str = Field(
        default="image_base64",
        description="Metadata key receiving the anonymized image of a path or URL.",
    )
    location_keys: list[str] = Field(
        default_factory=lambda: list(LOCATION_KEYS),
        description="Metadata keys naming the original's location, removed from documents whose image was anonymized.",
    )
    report_key: str = Field(default=REPORT_KEY, description="Metadata key of the per-face report.")
    fetch_urls: bool = Field(default=True, description="Load images given only by URL; if False they are withheld.")
    fetch_allow: list[str] = Field(
        default_factory=list,
        description="Hosts or networks (e.g. '10.0.0.0/8') image URLs may point to although not public addresses.",
    )
    timeout_s: float = Field(default=10.0, description="Deadline in seconds for fetching an image URL.")
    max_bytes: int = Field(default=20_000_000, description="Largest image download accepted, in bytes.")
    output_format: str = Field(default="JPEG", description="Encoding of anonymized images: JPEG, PNG or WEBP.")
    engine_config: dict[str, Any] | None = Field(
        default=None, description="Engine settings (AnonymizerConfig fields); taken from the engine when one is passed."
    )
    _holder: EngineHolder = PrivateAttr()
    _injected: bool = PrivateAttr(default=False)

    def __init__(self, engine: FaceAnonymizer | None = None, **data: Any) -> None:
        super().__init__(**self._engine_data(engine, data))
        self._init_engine(engine)

    @field_validator("content_mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in ("auto", "image", "text"):
            raise ValueError("content_mode must be 'auto', 'image' or 'text'")
        return value

    @field_validator("output_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        return known_output_format(value)

    # ------------------------------------------------------------------ documents
    def anonymize_item(self, item: RetrievedItem) -> RetrievedItem | None:
        """A safe copy of a document (or raw string / bytes); the item itself when it has no
        image; None when it must be withheld."""
        bridge = self._bridge
        try:
            if isinstance(item, Document):
                return self._anonymize_document(item, bridge)
            return self._anonymize_raw(item, bridge)
        except IdmragError as exc:
            bridge.withhold(exc, f"document {getattr(item, 'id', None) or ''}".strip())
        except (ValueError, TypeError, UnicodeError) as exc:  # malformed fields fail closed too
            bridge.withhold(InvalidImageError(f"unreadable image field: {exc}"), "document")
        return None

    def anonymize_document(self, doc: Document) -> Document | None:
        """A copy of ``doc`` with its images anonymized; ``doc`` itself when it has none;
        None when it must be withheld."""
        out = self.anonymize_item(doc)
        return out if out is None or isinstance(out, Document) else None

    def _anonymize_raw(self, item: Any, bridge: AnonymizerBridge) -> Any:
        if isinstance(item, (str, bytes, bytearray, memoryview)):
            data = image_bytes_of(item)
            if data is None:
                return item
            return in_kind(item, bridge.anonymize(data=data))
        raise InvalidImageError(f"retrieved item of type {type(item).__name__} is neither a Document, str nor bytes")

    def _content_is_image(self, doc: Document) -> bool:
        if self.content_mode == "text":
            return False
        return self.content_mode == "image" or looks_like_base64_image(doc.page_content)

    def _anonymize_document(self, doc: Document, bridge: AnonymizerBridge) -> Document:
        reports: list[dict[str, Any]] = []
        content = doc.page_content
        if self._content_is_image(doc):
            image = bridge.anonymize(data=image_bytes_of(content) or b"")
            content = in_kind(content, image)
            reports.append(image.report)
        elif isinstance(content, str) and self.content_mode == "auto" and is_image_location(content.strip()):
            image = bridge.anonymize(**image_reference(content.strip()))  # the content is an image's path or URL
            content = image.data_uri
            reports.append(image.report)
        elif isinstance(content, str) and embeds_images(content):  # Markdown or HTML images, inline or linked
            content = anonymize_embedded_images(content, bridge.anonymize, reports)
        metadata: dict[str, Any] = {}
        pending: list[tuple[str, dict[str, Any]]] = []
        for key, value in doc.metadata.items():
            reference_like = not is_image_object(value) and not isinstance(value, (dict, list, tuple))
            if key in self.image_keys and reference_like and value not in (None, "") and image_bytes_of(value) is None:
                pending.append((key, image_reference(value)))  # a path or URL: its image goes to output_key
                continue
            metadata[key] = anonymize_inline_images(value, bridge.anonymize, reports)
        for key, reference in pending:
            if self.output_key in metadata and self.output_key not in doc.metadata:
                continue  # several locations of one image: anonymized once, all removed
            image = bridge.anonymize(**reference)
            metadata[self.output_key] = image.base64
            metadata["image_mimetype"] = image.mimetype
            reports.append(image.report)
        pointers: list[str] = []  # paths or URLs of image files the document refers to
        drop_entries(metadata, lambda _, value: is_image_location(value), pointers)
        if not reports and not pointers and not (doc.id and names_image_location(doc.id)):
            return doc
        removed: list[str] = []  # where the original came from, at any depth
        known = self._known_locations(doc)
        new_id = bridge.shareable_id(doc.id, known)
        if new_id != doc.id:
            removed.append("id")
        metadata = drop_locations(metadata, self.location_keys, removed)
        dropped: list[str] = []  # the original file's EXIF, GPS and the like, copied out by a loader
        metadata = drop_photo_metadata(metadata, dropped)
        if reports:
            for key in MIME_KEYS:
                if key in metadata and isinstance(metadata[key], str):
                    metadata[key] = MIMETYPES[self.output_format]
        report: Any = reports[0] if len(reports) == 1 else reports
        if removed and not reports:
            report = {"status": "no_image", "removed_locations": removed}
        elif removed:
            report = ({**report, "removed_locations": removed} if isinstance(report, dict)
                      else [*report, {"removed_locations": removed}])
        if dropped:
            report = ({**report, "removed_metadata": dropped} if isinstance(report, dict)
                      else [*report, {"removed_metadata": dropped}])
        metadata[self.report_key] = report
        return Document(page_content=content, metadata=metadata, id=new_id)

    def _known_locations(self, doc: Document) -> list[str]:
        """Where the document's images came from, as strings: paths, URLs, file names."""
        values = [doc.metadata.get(key) for key in (*self.location_keys, *self.image_keys)]
        if isinstance(doc.page_content, str) and is_image_location(doc.page_content.strip()):
            values.append(doc.page_content.strip())
        return known_locations(values)

    def _anonymize_all(self, items: Sequence[RetrievedItem]) -> list[Any]:
        self._prefetch(items)
        return [out for out in (self.anonymize_item(item) for item in items) if out is not None]

    def _prefetch(self, items: Sequence[RetrievedItem]) -> None:
        """Anonymize the items' image contents as one batch (see AnonymizerBridge.prefetch);
        images in metadata go item by item."""
        sources: list[bytes | Path] = []
        for item in items:
            try:
                if isinstance(item, Document):
                    data = image_bytes_of(item.page_content) if self._content_is_image(item) else None
                else:
                    data = image_bytes_of(item) if isinstance(item, (str, bytes, bytearray, memoryview)) else None
            except (IdmragError, ValueError, TypeError, UnicodeError):
                continue  # withheld by the item-by-item pass
            if data:
                sources.append(bytes(data))
        self._bridge.prefetch(sources)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        return self._anonymize_all(documents)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        return await asyncio.to_thread(self._anonymize_all, documents)

    def transform_documents(self, documents: Sequence[Document], **kwargs: Any) -> Sequence[Document]:
        return self._anonymize_all(documents)

    async def atransform_documents(self, documents: Sequence[Document], **kwargs: Any) -> Sequence[Document]:
        return await asyncio.to_thread(self._anonymize_all, documents)


def _tracing_off() -> contextlib.AbstractContextManager:
    """LangSmith tracing switched off for this context (it may be on by environment
    variable, and would record what retrievers nested in the wrapped one return)."""
    try:
        from langsmith.run_helpers import tracing_context
    except ImportError:  # pragma: no cover - langsmith ships with langchain-core
        return contextlib.nullcontext()
    return tracing_context(enabled=False)


def _retrieve_untraced(retriever: BaseRetriever, query: str, **kwargs: Any) -> list[Any]:
    """The inner retriever's documents without reporting them to any callback or tracer.

    ``invoke`` would open a child run whose ``on_retriever_end`` carries the originals to
    every handler (LangSmith, Langfuse, ...); tracing enabled by environment variables
    would record them even without callbacks. This calls the retriever's own
    ``_get_relevant_documents`` as ``invoke`` does, with a no-op run manager and LangSmith
    tracing off.
    """
    accepts_kwargs = getattr(retriever, "_expects_other_args", True)
    extra = kwargs if accepts_kwargs else {}
    with _tracing_off():
        if getattr(retriever, "_new_arg_supported", True):
            noop = CallbackManagerForRetrieverRun.get_noop_manager()
            return retriever._get_relevant_documents(query, run_manager=noop, **extra)
        return retriever._get_relevant_documents(query, **extra)


async def _aretrieve_untraced(retriever: BaseRetriever, query: str, **kwargs: Any) -> list[Any]:
    accepts_kwargs = getattr(retriever, "_expects_other_args", True)
    extra = kwargs if accepts_kwargs else {}
    with _tracing_off():
        if getattr(retriever, "_new_arg_supported", True):
            noop = AsyncCallbackManagerForRetrieverRun.get_noop_manager()
            return await retriever._aget_relevant_documents(query, run_manager=noop, **extra)
        return await retriever._aget_relevant_documents(query, **extra)


class FaceAnonymizingRetriever(BaseRetriever):
    """Wrap any retriever: every document it returns has its faces anonymized.

    Keyword arguments of ``invoke`` (``k``, filters) go to the wrapped retriever. The
    wrapped retriever runs without callbacks, so tracers record only this wrapper's run
    and its anonymized documents; the trade-off is that the inner retrieval has no run of
    its own in traces.
    """

    retriever: BaseRetriever = Field(description="The retriever whose documents are anonymized.")
    anonymizer: FaceAnonymizerCompressor = Field(
        default_factory=FaceAnonymizerCompressor, description="Document anonymizer (holds the engine)."
    )
    k: int | None = Field(
        default=None, description="Number of documents asked of the wrapped retriever (per-call k wins)."
    )

    def _search_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.k is not None and "k" not in kwargs:
            return {"k": self.k, **kwargs}
        return kwargs

    def _limit(self, items: list[Any], kwargs: dict[str, Any]) -> list[Any]:
        k = kwargs.get("k", self.k)
        return items[:k] if isinstance(k, int) and k >= 0 else items

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        kwargs = self._search_kwargs(kwargs)
        items = _retrieve_untraced(self.retriever, query, **kwargs)
        return self._limit(self.anonymizer._anonymize_all(items), kwargs)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        kwargs = self._search_kwargs(kwargs)
        items = await _aretrieve_untraced(self.retriever, query, **kwargs)
        return self._limit(await asyncio.to_thread(self.anonymizer._anonymize_all, items), kwargs)
