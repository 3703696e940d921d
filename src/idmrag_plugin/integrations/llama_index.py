"""LlamaIndex integration: node postprocessor, retriever wrapper, ingestion transform.

The one line to add::

    RetrieverQueryEngine.from_args(retriever=r, llm=llm, node_postprocessors=[FaceAnonymizerPostprocessor()])

Every image node (``ImageNode`` with ``image`` / ``image_path`` / ``image_url``, or any node
with an ``image_resource``, such as ``ImageDocument``) is handed on as a deep copy whose
image is the anonymized bytes, whose path and URL are cleared (LlamaIndex's message
builders send a URL in preference to bytes), and whose metadata carries the per-face
report under ``idmrag_report``, hidden from the LLM and the embedder. Text nodes pass
through untouched. An image that cannot be anonymized is withheld: its node is dropped
(or, with the engine's ``on_failure="raise"``, the error propagates).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.bridge.pydantic import BaseModel, Field, PrivateAttr
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events import BaseEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import (
        BaseNode,
        ImageNode,
        MediaResource,
        Node,
        NodeWithScore,
        QueryBundle,
        QueryType,
        TransformComponent,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the LlamaIndex integration needs llama-index-core: pip install 'idmrag-plugin[llama-index]'"
    ) from exc

from idmrag_plugin.errors import IdmragError
from idmrag_plugin.integrations._common import (
    REPORT_KEY,
    AnonymizedImage,
    AnonymizerBridge,
    decode_base64_image,
)
from idmrag_plugin.pipeline import FaceAnonymizer

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

#: Metadata keys that hold an image's original location; removed from anonymized nodes.
LOCATION_KEYS = ("file_path", "image_path", "image_url", "url", "source", "file_name")


class FaceAnonymizationEvent(BaseEvent):
    """Emitted once per image node: the outcome and the per-face report."""

    node_id: str
    status: str
    report: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def class_name(cls) -> str:
        return "FaceAnonymizationEvent"


def _image_reference(node: BaseNode) -> dict[str, Any] | None:
    """The node's image as data/path/url keyword arguments, or None for a text-only node."""
    if isinstance(node, ImageNode):
        if node.image is None and node.image_path is None and node.image_url is None:
            return None
        return {
            "data": decode_base64_image(node.image) if node.image is not None else None,
            "path": node.image_path,
            "url": node.image_url,
        }
    resource = getattr(node, "image_resource", None)
    if isinstance(node, Node) and resource is not None:
        if resource.data is None and resource.path is None and resource.url is None:
            return None
        return {
            "data": decode_base64_image(resource.data) if resource.data is not None else None,
            "path": resource.path,
            "url": str(resource.url) if resource.url is not None else None,
        }
    return None


def _with_image(node: BaseNode, image: AnonymizedImage, report_key: str, location_keys: Sequence[str]) -> BaseNode:
    """A deep copy of ``node`` carrying only the anonymized image, same id."""
    copy = node.model_copy(deep=True)
    if isinstance(copy, ImageNode):
        copy.image = image.base64
        copy.image_path = None
        copy.image_url = None
        copy.image_mimetype = image.mimetype
    if isinstance(copy, Node) and getattr(copy, "image_resource", None) is not None:
        copy.image_resource = MediaResource(data=image.base64.encode("ascii"), mimetype=image.mimetype)
    for key in location_keys:
        copy.metadata.pop(key, None)
    copy.metadata[report_key] = image.report
    for excluded in (copy.excluded_llm_metadata_keys, copy.excluded_embed_metadata_keys):
        if report_key not in excluded:
            excluded.append(report_key)
    return copy


class _AnonymizingComponent:
    """Mixin: pydantic settings shared by the postprocessor and the transform."""

    def _make_bridge(self, engine: FaceAnonymizer | None) -> AnonymizerBridge:
        return AnonymizerBridge(
            engine,
            fetch_urls=self.fetch_urls,  # type: ignore[attr-defined]
            timeout_s=self.timeout_s,  # type: ignore[attr-defined]
            max_bytes=self.max_bytes,  # type: ignore[attr-defined]
            output_format=self.output_format,  # type: ignore[attr-defined]
        )

    def _anonymize_node(self, node: BaseNode) -> BaseNode | None:
        """The anonymized copy, the node itself when it has no image, None when withheld."""
        bridge: AnonymizerBridge = self._bridge  # type: ignore[attr-defined]
        try:
            reference = _image_reference(node)
            if reference is None:
                return node
            image = bridge.anonymize(**reference)
        except IdmragError as exc:
            dispatcher.event(FaceAnonymizationEvent(node_id=node.node_id, status="withheld", error=str(exc)))
            bridge.withhold(exc, f"node {node.node_id}")
            return None
        dispatcher.event(
            FaceAnonymizationEvent(node_id=node.node_id, status=str(image.report["status"]), report=image.report)
        )
        return _with_image(node, image, self.report_key, self.location_keys)  # type: ignore[attr-defined]


_FIELDS_DOC = dict(
    fetch_urls="Load images given only by URL (with timeout_s and max_bytes); if False they are withheld.",
    timeout_s="Timeout in seconds for fetching an image URL.",
    max_bytes="Largest image download accepted, in bytes.",
    output_format="Encoding of the anonymized image handed to the model: JPEG, PNG or WEBP.",
    report_key="Metadata key of the per-face report (hidden from the LLM and the embedder).",
    location_keys="Metadata keys holding the original location, removed from anonymized nodes.",
)


class _AnonymizerSettings(BaseModel):
    """Pydantic settings shared by the postprocessor and the transform."""

    fetch_urls: bool = Field(default=True, description=_FIELDS_DOC["fetch_urls"])
    timeout_s: float = Field(default=10.0, description=_FIELDS_DOC["timeout_s"])
    max_bytes: int = Field(default=20_000_000, description=_FIELDS_DOC["max_bytes"])
    output_format: str = Field(default="JPEG", description=_FIELDS_DOC["output_format"])
    report_key: str = Field(default=REPORT_KEY, description=_FIELDS_DOC["report_key"])
    location_keys: list[str] = Field(default_factory=lambda: list(LOCATION_KEYS), description=_FIELDS_DOC["location_keys"])
    _bridge: AnonymizerBridge = PrivateAttr()

    def __init__(self, engine: FaceAnonymizer | None = None, **data: Any) -> None:
        super().__init__(**data)
        self._bridge = self._make_bridge(engine)


class FaceAnonymizerPostprocessor(_AnonymizingComponent, _AnonymizerSettings, BaseNodePostprocessor):
    """Replace every face in retrieved image nodes before they reach the LLM."""


    @classmethod
    def class_name(cls) -> str:
        return "FaceAnonymizerPostprocessor"

    @property
    def engine(self) -> FaceAnonymizer:
        return self._bridge.engine

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        out = []
        for item in nodes:
            node = self._anonymize_node(item.node)
            if node is item.node:
                out.append(item)
            elif node is not None:
                out.append(NodeWithScore(node=node, score=item.score))
        return out


class FaceAnonymizerTransform(_AnonymizingComponent, _AnonymizerSettings, TransformComponent):
    """Ingestion-time anonymization for ``IngestionPipeline``.

    Run the pipeline with ``disable_cache=True``: LlamaIndex's ingestion cache keys on text
    and metadata only (two photos with the same metadata collide) and does not store image
    bytes, so cached nodes come back without their image.
    """


    @classmethod
    def class_name(cls) -> str:
        return "FaceAnonymizerTransform"

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        out = []
        for node in nodes:
            anonymized = self._anonymize_node(node)
            if anonymized is not None:
                out.append(anonymized)
        return out

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        return await asyncio.to_thread(self.__call__, nodes, **kwargs)


class FaceAnonymizingRetriever(BaseRetriever):
    """Wrap any retriever, multimodal ones included, so that everything it returns is anonymized.

    ``text_to_image_retrieve`` and ``image_to_image_retrieve`` of multimodal retrievers never
    run node postprocessors; through this wrapper they are anonymized too.
    """

    def __init__(
        self,
        retriever: Any,
        postprocessor: FaceAnonymizerPostprocessor | None = None,
        engine: FaceAnonymizer | None = None,
        **kwargs: Any,
    ) -> None:
        self._retriever = retriever
        self._postprocessor = postprocessor or FaceAnonymizerPostprocessor(engine=engine)
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._postprocessor.postprocess_nodes(self._retriever.retrieve(query_bundle), query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        nodes = await self._retriever.aretrieve(query_bundle)
        return await self._postprocessor.apostprocess_nodes(nodes, query_bundle)

    def _delegate(self, name: str) -> Any:
        method = getattr(self._retriever, name, None)
        if method is None:
            raise AttributeError(f"{type(self._retriever).__name__} has no {name}()")
        return method

    def text_to_image_retrieve(self, str_or_query_bundle: QueryType) -> list[NodeWithScore]:
        nodes = self._delegate("text_to_image_retrieve")(str_or_query_bundle)
        return self._postprocessor.postprocess_nodes(nodes)

    def image_to_image_retrieve(self, str_or_query_bundle: QueryType) -> list[NodeWithScore]:
        nodes = self._delegate("image_to_image_retrieve")(str_or_query_bundle)
        return self._postprocessor.postprocess_nodes(nodes)

    async def atext_to_image_retrieve(self, str_or_query_bundle: QueryType) -> list[NodeWithScore]:
        nodes = await self._delegate("atext_to_image_retrieve")(str_or_query_bundle)
        return await self._postprocessor.apostprocess_nodes(nodes)

    async def aimage_to_image_retrieve(self, str_or_query_bundle: QueryType) -> list[NodeWithScore]:
        nodes = await self._delegate("aimage_to_image_retrieve")(str_or_query_bundle)
        return await self._postprocessor.apostprocess_nodes(nodes)
