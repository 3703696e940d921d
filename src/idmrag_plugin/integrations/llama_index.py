"""LlamaIndex integration: node postprocessor, retriever wrapper, ingestion transform and reader.

The one line to add::

    RetrieverQueryEngine.from_args(retriever=r, llm=llm, node_postprocessors=[FaceAnonymizerPostprocessor()])

Images are resolved exactly where and in the order LlamaIndex's own message builders read
them: ``ImageNode.image`` (base64), ``image_path``, ``metadata["file_path"]`` (the fallback
of ``image_node_to_image_block`` and of the multimodal LLMs' encoders), ``image_url``; and
``Node.image_resource`` (data, path, URL) for ``Document``/``ImageDocument``. Every such node
is handed on as a deep copy whose image is the anonymized bytes, whose path, URL and
location metadata are cleared, and whose metadata carries the per-face report under
``idmrag_report`` (hidden from the LLM and the embedder). Video and audio resources cannot
be anonymized and are withheld (removed from the copy; the report says so). Text nodes
pass through untouched. An image that cannot be anonymized is withheld: its node is
dropped (or, with the engine's ``on_failure="raise"``, the error propagates).

Settings are read at each call, so changing a field after construction takes effect, and
``to_dict``/``from_dict`` round-trip the engine's settings (``engine_config``); a custom
generator object passed in an engine cannot be serialized and must be passed again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.bridge.pydantic import BaseModel, Field, PrivateAttr, field_validator
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events import BaseEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.readers.base import BaseReader
    from llama_index.core.schema import (
        BaseNode,
        Document,
        ImageNode,
        MediaResource,
        MetadataMode,
        Node,
        NodeWithScore,
        QueryBundle,
        QueryType,
        RelatedNodeInfo,
        TransformComponent,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the LlamaIndex integration needs llama-index-core: pip install 'idmrag-plugin[llama-index]'"
    ) from exc

from idmrag_plugin.errors import IdmragError, InvalidImageError
from idmrag_plugin.integrations._common import (
    LOCATION_KEYS,
    MIME_KEYS,
    REPORT_KEY,
    AnonymizedImage,
    EngineHolder,
    EngineSettingsMixin,
    anonymize_inline_images,
    anonymize_text_images,
    carries_images,
    decode_base64_image,
    drop_entries,
    drop_locations,
    drop_photo_metadata,
    embeds_images,
    image_reference,
    is_image_location,
    is_inline_image,
    known_output_format,
    looks_like_base64_image,
)
from idmrag_plugin.integrations._locations import known_locations, names_image_location
from idmrag_plugin.pipeline import FaceAnonymizer

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

#: Node media that cannot be anonymized: withheld from every copy handed on.
WITHHELD_MEDIA = ("video_resource", "audio_resource")


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
    """The node's image as data/path/url, in LlamaIndex's order, or None for no image."""
    if isinstance(node, ImageNode):
        if node.image is not None:
            return {"data": decode_base64_image(node.image)}
        if node.image_path:
            return {"path": node.image_path}
        if node.metadata.get("file_path"):  # image_node_to_image_block's fallback
            return {"path": node.metadata["file_path"]}
        if node.image_url:
            return {"url": node.image_url}
        return None
    resource = getattr(node, "image_resource", None)
    if isinstance(node, Node) and resource is not None:
        if resource.data is not None:
            return {"data": decode_base64_image(resource.data)}
        if resource.path is not None:
            return {"path": resource.path}
        if resource.url is not None:
            return {"url": str(resource.url)}
    return None


def _image_file_of_text_node(node: BaseNode) -> str | None:
    """The image file behind a node read as *text*: ``SimpleDirectoryReader`` without an
    image reader decodes a JPEG's bytes into ``text`` and keeps its path in ``file_path``."""
    if isinstance(node, ImageNode) or getattr(node, "image_resource", None) is not None:
        return None
    path = node.metadata.get("file_path")
    return path if is_image_location(path) else None


def _looks_binary(text: str | None) -> bool:
    return bool(text) and ("\x00" in text or "\ufffd" in text or sum(c < " " and c not in "\t\n\r" for c in text[:2000]) > 20)


def _withheld_media(node: BaseNode) -> list[str]:
    return [name.removesuffix("_resource") for name in WITHHELD_MEDIA if getattr(node, name, None) is not None]


def _relations(node: BaseNode) -> list[tuple[str, RelatedNodeInfo]]:
    """The node's related nodes, each with its relationship's name (``source``, ``parent``, ...)."""
    pairs: list[tuple[str, RelatedNodeInfo]] = []
    for relation, related in node.relationships.items():
        name = getattr(relation, "name", str(relation)).lower()
        pairs.extend((name, info) for info in (related if isinstance(related, list) else [related]))
    return pairs


def _ids_name_image_locations(node: BaseNode) -> bool:
    """True when the node's id or a related node's id spells an image's path or URL
    (``SimpleDirectoryReader(filename_as_id=True)`` makes the file's path the document's id,
    and its nodes' ``ref_doc_id``)."""
    return any(names_image_location(i) for i in [node.node_id, *(info.node_id for _, info in _relations(node))])


def _known_locations(node: BaseNode, location_keys: Sequence[str]) -> list[str]:
    """The places the node's image came from, as strings: its path, URL, file name."""
    values = [getattr(node, "image_path", None), getattr(node, "image_url", None)]
    for name in ("image_resource", "text_resource"):
        resource = getattr(node, name, None)
        if resource is not None:
            values += [resource.path, resource.url]
    values += [node.metadata.get(key) for key in location_keys]
    return known_locations(values)


def _rename_ids(node: BaseNode, rename: Callable[[str], str | None], removed: list[str]) -> None:
    """Replace the node's id and its relationships' ids by ``rename``'s stand-ins where it
    gives one; the name of each field changed is appended to ``removed``."""
    new = rename(node.node_id)
    if new and new != node.node_id:
        node.node_id = new
        removed.append("id_")
    for name, info in _relations(node):
        new = rename(info.node_id)
        if new and new != info.node_id:
            info.node_id = new
            removed.append(f"relationships.{name}.node_id")


def _safe_copy(
    node: BaseNode,
    image: AnonymizedImage | None,
    withheld: list[str],
    report_key: str,
    location_keys: Sequence[str],
    metadata: dict[str, Any],
    inline: list[dict[str, Any]],
    text: str | None = None,
    rename: Callable[[str], str | None] | None = None,
) -> BaseNode:
    """A deep copy of ``node`` carrying only the anonymized image, no original media.
    ``metadata``: the node's metadata with its inline images anonymized; ``text``: its text
    with the images embedded in it anonymized, when it has any (their reports: ``inline``);
    ``rename``: the id it may be handed on under, for its own id and its relationships'
    (the same id unless that spells where the image came from)."""
    copy = node.model_copy(deep=True)
    copy.metadata = deepcopy(metadata)  # nothing shared with the caller's node
    copy.embedding = None  # computed from the original (an image embedding describes its face)
    if text is not None:
        copy.set_content(text)
    if image is not None:
        if isinstance(copy, ImageNode):
            copy.image = image.base64
            copy.image_path = None
            copy.image_url = None
            copy.image_mimetype = image.mimetype
        if isinstance(copy, Node) and (getattr(copy, "image_resource", None) is not None or "text" in withheld):
            copy.image_resource = MediaResource(data=image.base64.encode("ascii"), mimetype=image.mimetype)
        for key in MIME_KEYS:
            if key in copy.metadata:
                copy.metadata[key] = image.mimetype
    for name in withheld:
        if name == "file":
            continue
        if name == "text":  # an image file's bytes read as text
            copy.set_content("")
        else:
            setattr(copy, f"{name}_resource", None)
    removed: list[str] = []  # the original file's EXIF, GPS and the like, copied out by a loader
    located: list[str] = []  # where the original came from (its path, URL, a preview's path)
    kept = drop_photo_metadata(drop_locations(copy.metadata, location_keys, located), removed)
    copy.metadata.clear()
    copy.metadata.update(kept)
    _scrub_relationships(copy, location_keys, removed)
    if rename is not None:
        _rename_ids(copy, rename, located)
    report: dict[str, Any] = dict(image.report) if image is not None else {"status": "no_image"}
    if inline:
        report["embedded_images"] = inline
    if located:
        report["removed_locations"] = located
    if withheld:
        report["withheld_media"] = withheld
    if removed:
        report["removed_metadata"] = removed
    copy.metadata[report_key] = report
    for excluded in (copy.excluded_llm_metadata_keys, copy.excluded_embed_metadata_keys):
        if report_key not in excluded:
            excluded.append(report_key)
    return copy


def _scrub_relationships(node: BaseNode, location_keys: Sequence[str], removed: list[str]) -> None:
    """Scrub the metadata the node's relationships carry: node parsers copy the source
    document's whole metadata (its file path, URL, EXIF, GPS, thumbnails) into the SOURCE
    relationship, and it travels with the node into responses and stores."""
    for name, info in _relations(node):
        where = f"relationships.{name}"
        kept = drop_photo_metadata(drop_locations(info.metadata, location_keys, []), removed, where)
        info.metadata = drop_entries(kept, lambda _, value: is_inline_image(value), removed, where)


_FIELDS_DOC = {
    "fetch_urls": "Load images given only by URL (with timeout_s and max_bytes); if False they are withheld.",
    "fetch_allow": "Hosts or networks (e.g. '10.0.0.0/8') image URLs may point to although not public addresses.",
    "timeout_s": "Deadline in seconds for fetching an image URL, redirects included.",
    "max_bytes": "Largest image download accepted, in bytes.",
    "output_format": "Encoding of the anonymized image handed to the model: JPEG, PNG or WEBP.",
    "report_key": "Metadata key of the per-face report (hidden from the LLM and the embedder).",
    "location_keys": "Metadata keys holding the original location, removed from anonymized nodes.",
    "engine_config": "Engine settings (AnonymizerConfig fields) of the engine built on first use; "
    "taken from the engine when one is passed.",
}


class _AnonymizerSettings(EngineSettingsMixin, BaseModel):
    """Pydantic settings shared by the postprocessor, the transform and the reader."""

    fetch_urls: bool = Field(default=True, description=_FIELDS_DOC["fetch_urls"])
    fetch_allow: list[str] = Field(default_factory=list, description=_FIELDS_DOC["fetch_allow"])
    timeout_s: float = Field(default=10.0, description=_FIELDS_DOC["timeout_s"])
    max_bytes: int = Field(default=20_000_000, description=_FIELDS_DOC["max_bytes"])
    output_format: str = Field(default="JPEG", description=_FIELDS_DOC["output_format"])
    report_key: str = Field(default=REPORT_KEY, description=_FIELDS_DOC["report_key"])
    location_keys: list[str] = Field(default_factory=lambda: list(LOCATION_KEYS), description=_FIELDS_DOC["location_keys"])
    engine_config: dict[str, Any] | None = Field(default=None, description=_FIELDS_DOC["engine_config"])
    _holder: EngineHolder = PrivateAttr()
    _injected: bool = PrivateAttr(default=False)

    def __init__(self, engine: FaceAnonymizer | None = None, **data: Any) -> None:
        super().__init__(**self._engine_data(engine, data))
        self._init_engine(engine)

    @field_validator("output_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        return known_output_format(value)

    def _anonymize_node(self, node: BaseNode, reference: dict[str, Any] | None = None) -> BaseNode | None:
        """The safe copy, the node itself when it has no media, None when withheld.
        ``reference``: the node's image reference when the caller already read it."""
        bridge = self._bridge
        try:
            reference = reference if reference is not None else _image_reference(node)
            withheld = _withheld_media(node)
            image_file = _image_file_of_text_node(node)
            if image_file is not None:
                if _looks_binary(node.get_content()):
                    withheld.append("text")
                if isinstance(node, Node):  # it can carry the anonymized image instead
                    reference = {"path": image_file}
                else:
                    withheld.append("file")
            content = "" if "text" in withheld else node.get_content(metadata_mode=MetadataMode.NONE)
            stripped = content.strip()
            # Markdown or HTML images (inline or linked), or a whole text that is an image in base64
            embeds = embeds_images(content) or looks_like_base64_image(stripped)
            pointer = is_image_location(stripped)  # the text is an image's path or URL
            media = reference is not None or withheld or embeds or pointer or carries_images(node.metadata)
            if not media and not _ids_name_image_locations(node):
                return node
            image = bridge.anonymize(**reference) if reference is not None else None
            inline: list[dict[str, Any]] = []  # thumbnails and the like a loader put in metadata
            metadata = anonymize_inline_images(node.metadata, bridge.anonymize, inline)
            text = anonymize_text_images(content, bridge.anonymize, inline) if embeds else None
            if pointer:
                pointed = bridge.anonymize(**image_reference(stripped))
                inline.append(pointed.report)
                text = pointed.data_uri
        except IdmragError as exc:
            self._withheld_event(node, exc)
            bridge.withhold(exc, f"node {node.node_id}")
            return None
        except (ValueError, TypeError) as exc:  # malformed node fields: never pass them on
            self._withheld_event(node, exc)
            bridge.withhold(InvalidImageError(f"unreadable image fields: {exc}"), f"node {node.node_id}")
            return None
        if withheld:
            logger.info("node %s: %s withheld (cannot be anonymized)", node.node_id, ", ".join(withheld))
        report = image.report if image is not None else None
        status = str(report["status"]) if report is not None else "media_withheld" if withheld else "no_image"
        known = _known_locations(node, self.location_keys)
        dispatcher.event(FaceAnonymizationEvent(node_id=self._shareable_id(node, known), status=status, report=report))
        return _safe_copy(
            node, image, withheld, self.report_key, self.location_keys, metadata, inline, text,
            rename=lambda identifier: bridge.shareable_id(identifier, known),
        )

    def _shareable_id(self, node: BaseNode, known: Sequence[str]) -> str:
        return self._bridge.shareable_id(node.node_id, known) or ""

    def _withheld_event(self, node: BaseNode, exc: Exception) -> None:
        """Tell instrumentation a node was withheld, in words that name no path or URL (its
        handlers may export events to a tracing service)."""
        known = _known_locations(node, self.location_keys)
        error = self._bridge.reason(exc, known)
        dispatcher.event(FaceAnonymizationEvent(node_id=self._shareable_id(node, known), status="withheld", error=error))

    def _anonymize_nodes(self, nodes: Sequence[BaseNode]) -> list[BaseNode]:
        references = self._prefetch(nodes)
        return [out for out in (self._anonymize_node(n, references.get(id(n))) for n in nodes) if out is not None]

    def _prefetch(self, nodes: Sequence[BaseNode]) -> dict[int, dict[str, Any]]:
        """Anonymize the nodes' inline and file images as one batch (see AnonymizerBridge.prefetch);
        images behind URLs are fetched node by node, under the fetch policy. Returns the image
        references read, by ``id(node)``, so that the node-by-node pass does not decode them again."""
        sources: list[bytes | Path] = []
        references: dict[int, dict[str, Any]] = {}
        for node in nodes:
            try:
                reference = _image_reference(node)
            except (IdmragError, ValueError, TypeError):
                continue  # withheld by the node-by-node pass
            if reference is None:
                continue
            references[id(node)] = reference
            if "data" in reference:
                sources.append(reference["data"])
            elif "path" in reference:
                sources.append(Path(reference["path"]))
        self._bridge.prefetch(sources)
        return references


class FaceAnonymizerPostprocessor(_AnonymizerSettings, BaseNodePostprocessor):
    """Replace every face in retrieved image nodes before they reach the LLM.

    Events and callbacks of the retriever that ran *before* the postprocessor saw the
    original nodes; to keep originals out of traces, wrap the retriever with
    :class:`FaceAnonymizingRetriever` (or anonymize at ingestion).
    """

    @classmethod
    def class_name(cls) -> str:
        return "FaceAnonymizerPostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        references = self._prefetch([item.node for item in nodes])
        out = []
        for item in nodes:
            node = self._anonymize_node(item.node, references.get(id(item.node)))
            if node is item.node:
                out.append(item)
            elif node is not None:
                out.append(NodeWithScore(node=node, score=item.score))
        return out


class FaceAnonymizerTransform(_AnonymizerSettings, TransformComponent):
    """Anonymize nodes inside an ``IngestionPipeline``.

    An ``IngestionPipeline(docstore=...)`` stores its *input* documents before any
    transformation runs, so this transform alone keeps originals in the docstore: read
    documents through :class:`FaceAnonymizingReader` (or pass them through
    :func:`anonymize_documents`) before ``pipeline.run``. Run the pipeline with
    ``disable_cache=True``: LlamaIndex's ingestion cache keys on text and metadata only.
    """

    @classmethod
    def class_name(cls) -> str:
        return "FaceAnonymizerTransform"

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        return self._anonymize_nodes(nodes)

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        return await asyncio.to_thread(self._anonymize_nodes, nodes)


class FaceAnonymizingReader(_AnonymizerSettings, BaseReader):
    """Wrap any reader (``SimpleDirectoryReader``, ...): documents come out anonymized, so no
    docstore, vector store or cache downstream ever holds an original image or its path."""

    reader: Any = Field(description="The reader whose documents are anonymized.")

    def load_data(self, *args: Any, **kwargs: Any) -> list[Document]:
        return self._anonymize_nodes(self.reader.load_data(*args, **kwargs))  # type: ignore[return-value]

    def lazy_load_data(self, *args: Any, **kwargs: Any):
        for document in self.reader.lazy_load_data(*args, **kwargs):
            safe = self._anonymize_node(document)
            if safe is not None:
                yield safe

    async def aload_data(self, *args: Any, **kwargs: Any) -> list[Document]:
        documents = await self.reader.aload_data(*args, **kwargs)
        return await asyncio.to_thread(self._anonymize_nodes, documents)  # type: ignore[return-value]


def anonymize_documents(documents: Sequence[BaseNode], engine: FaceAnonymizer | None = None, **settings: Any) -> list[BaseNode]:
    """Anonymized copies of ``documents`` (withheld ones left out), e.g. before
    ``IngestionPipeline.run(documents=...)`` so that its docstore never stores an original."""
    return FaceAnonymizerTransform(engine=engine, **settings)(documents)


def _retrieve_untraced(retriever: Any, query_bundle: QueryBundle) -> list[NodeWithScore]:
    """Run a LlamaIndex retriever without its instrumentation.

    ``retrieve`` and most ``_retrieve`` implementations report their result (the original
    nodes) to event handlers, span handlers and legacy callbacks; calling the undecorated
    ``_retrieve`` keeps the originals out of every trace. Only the wrapper's own
    (anonymized) result is reported.
    """
    if not isinstance(retriever, BaseRetriever):
        return retriever.retrieve(query_bundle)
    raw = inspect.unwrap(type(retriever)._retrieve)
    nodes = raw(retriever, query_bundle)
    return retriever._handle_recursive_retrieval(query_bundle, nodes)


async def _aretrieve_untraced(retriever: Any, query_bundle: QueryBundle) -> list[NodeWithScore]:
    if not isinstance(retriever, BaseRetriever):
        return await retriever.aretrieve(query_bundle)
    raw = inspect.unwrap(type(retriever)._aretrieve)
    if raw is inspect.unwrap(BaseRetriever._aretrieve):
        # the default _aretrieve calls the instrumented self._retrieve: run the raw one instead
        return await asyncio.to_thread(_retrieve_untraced, retriever, query_bundle)
    nodes = await raw(retriever, query_bundle)
    return await retriever._ahandle_recursive_retrieval(query_bundle, nodes)


class FaceAnonymizingRetriever(BaseRetriever):
    """Wrap any retriever, multimodal ones included, so that everything it returns is anonymized.

    ``text_to_image_retrieve`` and ``image_to_image_retrieve`` of multimodal retrievers never
    run node postprocessors; through this wrapper they are anonymized too. The inner
    retriever runs uninstrumented, so tracing handlers (events, spans, callbacks) see only
    the anonymized nodes; the trade-off is that the inner retrieval has no span of its own.
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
        nodes = _retrieve_untraced(self._retriever, query_bundle)
        return self._postprocessor._postprocess_nodes(nodes, query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        nodes = await _aretrieve_untraced(self._retriever, query_bundle)
        return await asyncio.to_thread(self._postprocessor._postprocess_nodes, nodes, query_bundle)

    def _delegate(self, name: str) -> Any:
        """The inner retriever's method, run without the spans LlamaIndex wraps around it and
        around its ``_name`` implementation (their result is the original nodes)."""
        cls = type(self._retriever)
        private = getattr(cls, f"_{name}", None)
        if private is not None and not getattr(private, "__isabstractmethod__", False):
            raw = inspect.unwrap(private)
            by_image = "image_to_image" in name

            def call(query: QueryType) -> Any:
                if isinstance(query, str):
                    query = QueryBundle(query_str="", image_path=query) if by_image else QueryBundle(query_str=query)
                return raw(self._retriever, query)

            return call
        method = getattr(cls, name, None)
        if method is None:
            raise AttributeError(f"{cls.__name__} has no {name}()")
        public = inspect.unwrap(method)
        return lambda query: public(self._retriever, query)

    def text_to_image_retrieve(self, str_or_query_bundle: QueryType) -> list[NodeWithScore]:
        nodes = self._delegate("text_to_image_retrieve")(str_or_query_bundle)
        return self._postprocessor._postprocess_nodes(nodes)

    def image_to_image_retrieve(self, str_or_query_bundle: QueryType) -> list[NodeWithScore]:
        nodes = self._delegate("image_to_image_retrieve")(str_or_query_bundle)
        return self._postprocessor._postprocess_nodes(nodes)

    async def atext_to_image_retrieve(self, str_or_query_bundle: QueryType) -> list[NodeWithScore]:
        nodes = await self._delegate("atext_to_image_retrieve")(str_or_query_bundle)
        return await asyncio.to_thread(self._postprocessor._postprocess_nodes, nodes)

    async def aimage_to_image_retrieve(self, str_or_query_bundle: QueryType) -> list[NodeWithScore]:
        nodes = await self._delegate("aimage_to_image_retrieve")(str_or_query_bundle)
        return await asyncio.to_thread(self._postprocessor._postprocess_nodes, nodes)


# LlamaIndex wraps _postprocess_nodes in a span whose handlers receive its arguments: the
# original nodes. The wrapper calls it directly; without the span, no handler sees them there.
FaceAnonymizerPostprocessor._postprocess_nodes = inspect.unwrap(  # type: ignore[method-assign]
    FaceAnonymizerPostprocessor.__dict__["_postprocess_nodes"]
)
