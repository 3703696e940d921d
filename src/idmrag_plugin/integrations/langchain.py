"""LangChain integration: a retriever wrapper and a document compressor / transformer.

The one line to add::

    retriever = FaceAnonymizingRetriever(retriever=vectorstore.as_retriever())

Images are found in ``page_content`` (base64, the Chroma multimodal convention) and in
the metadata keys named by ``image_keys`` (base64, a data URI, a path or an http(s) URL).
Each document that carries an image is handed on as a copy whose image is the anonymized
bytes (base64, in ``page_content`` if it came from there, else in ``metadata[output_key]``),
whose original path/URL keys are removed, and whose ``metadata["idmrag_report"]`` holds
the per-face report. An image that cannot be anonymized is withheld: its document is
dropped (or, with the engine's ``on_failure="raise"``, the error propagates).
"""

from __future__ import annotations

import asyncio
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
    from pydantic import ConfigDict, Field, PrivateAttr
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the LangChain integration needs langchain-core: pip install 'idmrag-plugin[langchain]'"
    ) from exc

from idmrag_plugin.errors import IdmragError
from idmrag_plugin.integrations._common import (
    REPORT_KEY,
    AnonymizerBridge,
    decode_base64_image,
    looks_like_base64_image,
)
from idmrag_plugin.pipeline import FaceAnonymizer

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("image", "image_base64", "image_path", "image_url")
LOCATION_KEYS = ("source", "file_path", "image_path", "image_url", "url")


def _reference(value: Any) -> dict[str, Any]:
    """data/path/url keyword arguments for one image value."""
    if isinstance(value, (bytes, bytearray)):
        return {"data": bytes(value)}
    if isinstance(value, Path):
        return {"path": value}
    if not isinstance(value, str):
        raise IdmragError(f"unsupported image value of type {type(value).__name__}")
    if value.startswith("data:image") or looks_like_base64_image(value):
        return {"data": decode_base64_image(value)}
    if value.lower().startswith(("http://", "https://")):
        return {"url": value}
    return {"path": value}


class FaceAnonymizerCompressor(BaseDocumentCompressor, BaseDocumentTransformer):
    """Anonymize the images of documents; a compressor for ``ContextualCompressionRetriever``
    and a document transformer for ingestion."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    content_mode: str = Field(
        default="auto",
        description="'auto': page_content is an image when it is base64 image data; "
        "'image': it always is; 'text': it never is.",
    )
    image_keys: list[str] = Field(
        default_factory=lambda: list(IMAGE_KEYS),
        description="Metadata keys that may hold an image (base64, data URI, path or URL).",
    )
    output_key: str = Field(
        default="image_base64",
        description="Metadata key receiving the anonymized image when it did not come from page_content.",
    )
    location_keys: list[str] = Field(
        default_factory=lambda: list(LOCATION_KEYS),
        description="Metadata keys naming the original's location, removed from documents whose image was anonymized.",
    )
    report_key: str = Field(default=REPORT_KEY, description="Metadata key of the per-face report.")
    fetch_urls: bool = Field(default=True, description="Load images given only by URL; if False they are withheld.")
    timeout_s: float = Field(default=10.0, description="Timeout in seconds for fetching an image URL.")
    max_bytes: int = Field(default=20_000_000, description="Largest image download accepted, in bytes.")
    output_format: str = Field(default="JPEG", description="Encoding of anonymized images: JPEG, PNG or WEBP.")
    _bridge: AnonymizerBridge = PrivateAttr()

    def __init__(self, engine: FaceAnonymizer | None = None, **data: Any) -> None:
        super().__init__(**data)
        if self.content_mode not in ("auto", "image", "text"):
            raise ValueError("content_mode must be 'auto', 'image' or 'text'")
        self._bridge = AnonymizerBridge(
            engine, fetch_urls=self.fetch_urls, timeout_s=self.timeout_s,
            max_bytes=self.max_bytes, output_format=self.output_format,
        )

    @property
    def engine(self) -> FaceAnonymizer:
        return self._bridge.engine

    def _content_is_image(self, doc: Document) -> bool:
        if self.content_mode == "text":
            return False
        return self.content_mode == "image" or looks_like_base64_image(doc.page_content)

    def anonymize_document(self, doc: Document) -> Document | None:
        """A copy of ``doc`` with its images anonymized; ``doc`` itself when it has none;
        None when it must be withheld."""
        image_keys = [k for k in self.image_keys if doc.metadata.get(k) not in (None, "")]
        content_image = self._content_is_image(doc)
        if not content_image and not image_keys:
            return doc
        try:
            return self._anonymize(doc, content_image, image_keys)
        except IdmragError as exc:
            self._bridge.withhold(exc, f"document {doc.id or ''}".strip())
            return None

    def _anonymize(self, doc: Document, content_image: bool, image_keys: list[str]) -> Document:
        metadata = dict(doc.metadata)
        content = doc.page_content
        reports = []
        if content_image:
            image = self._bridge.anonymize(data=decode_base64_image(content))
            content = image.base64
            reports.append(image.report)
        written: set[str] = set()
        for key in image_keys:
            reference = _reference(metadata.pop(key))
            target = key if "data" in reference else self.output_key
            if "data" not in reference and target in written:
                continue  # several locations of one image: anonymized once, all removed
            image = self._bridge.anonymize(**reference)
            metadata[target] = image.base64
            metadata["image_mimetype"] = image.mimetype
            written.add(target)
            reports.append(image.report)
        for key in self.location_keys:  # they point at the original photo
            metadata.pop(key, None)
        metadata[self.report_key] = reports[0] if len(reports) == 1 else reports
        return Document(page_content=content, metadata=metadata, id=doc.id)

    def _anonymize_all(self, documents: Sequence[Document]) -> list[Document]:
        out = []
        for doc in documents:
            anonymized = self.anonymize_document(doc)
            if anonymized is not None:
                out.append(anonymized)
        return out

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


class FaceAnonymizingRetriever(BaseRetriever):
    """Wrap any retriever: every document it returns has its faces anonymized."""

    retriever: BaseRetriever = Field(description="The retriever whose documents are anonymized.")
    anonymizer: FaceAnonymizerCompressor = Field(
        default_factory=FaceAnonymizerCompressor, description="Document anonymizer (holds the engine)."
    )

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        docs = self.retriever.invoke(query, config={"callbacks": run_manager.get_child()})
        return list(self.anonymizer.compress_documents(docs, query, callbacks=run_manager.get_child()))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        docs = await self.retriever.ainvoke(query, config={"callbacks": run_manager.get_child()})
        return list(await self.anonymizer.acompress_documents(docs, query, callbacks=run_manager.get_child()))
