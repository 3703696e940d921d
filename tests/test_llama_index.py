from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("llama_index.core", reason="install the llama-index extra")

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ImageBlock
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.llms.mock import MockLLMWithChatMemoryOfLastCall
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import ImageDocument, ImageNode, MetadataMode, NodeWithScore, TextNode

from idmrag_plugin import InvalidImageError
from idmrag_plugin.integrations.llama_index import (
    FaceAnonymizationEvent,
    FaceAnonymizerPostprocessor,
    FaceAnonymizerTransform,
    FaceAnonymizingRetriever,
)


class ListRetriever(BaseRetriever):
    def __init__(self, nodes):
        self.nodes = nodes
        super().__init__()

    def _retrieve(self, query_bundle):
        return list(self.nodes)

    def text_to_image_retrieve(self, query):
        return list(self.nodes)


@pytest.fixture(scope="module")
def post(engine):
    return FaceAnonymizerPostprocessor(engine=engine)


def _decoded(b64: str | bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


def _face_changed(pixels: np.ndarray, original: np.ndarray) -> bool:
    face = (slice(90, 150), slice(195, 255))
    return np.abs(pixels[face] - original[face]).mean() > 20


def test_image_nodes_of_every_kind_are_anonymized_and_keep_id_and_score(post, photo, astronaut, http_image):
    b64 = base64.b64encode(photo.read_bytes()).decode()
    nodes = [
        NodeWithScore(node=ImageNode(image=b64, id_="b64", metadata={"file_path": str(photo)}), score=0.9),
        NodeWithScore(node=ImageNode(image_path=str(photo), id_="path"), score=0.8),
        NodeWithScore(node=ImageNode(image_url=http_image, id_="url"), score=0.7),
        NodeWithScore(node=TextNode(text="a caption", id_="text"), score=0.6),
    ]
    frozen = [n.node.model_copy(deep=True) for n in nodes]
    out = post.postprocess_nodes(nodes)
    assert [(n.node.node_id, n.score) for n in out] == [("b64", 0.9), ("path", 0.8), ("url", 0.7), ("text", 0.6)]
    for item in out[:3]:
        node = item.node
        assert node.image_path is None and node.image_url is None
        assert node.image_mimetype == "image/jpeg"
        assert _face_changed(_decoded(node.image), astronaut)
        assert str(photo) not in node.get_content(MetadataMode.ALL) + str(node.metadata)
        report = node.metadata["idmrag_report"]
        assert report["faces"][0]["method"] == "obfuscated"
        assert "idmrag_report" in node.excluded_llm_metadata_keys
        assert "idmrag_report" not in node.get_content(MetadataMode.LLM)
        assert "idmrag_report" not in node.get_content(MetadataMode.EMBED)
    assert out[3].node is nodes[3].node
    for before, item in zip(frozen, nodes):  # the caller's nodes did not change
        assert item.node == before


def test_image_document_resource_is_replaced_and_llm_gets_only_anonymized_bytes(post, photo, astronaut):
    doc = ImageDocument(image_path=str(photo), id_="doc", metadata={"file_path": str(photo)})
    llm = MockLLMWithChatMemoryOfLastCall(is_chat_model=True)
    engine = RetrieverQueryEngine.from_args(
        retriever=ListRetriever([NodeWithScore(node=doc, score=1.0)]),
        llm=llm,
        multimodal=True,
        node_postprocessors=[post],
    )
    response = engine.query("Who is in the photo?")
    assert response.source_nodes[0].node.node_id == "doc"
    blocks = [b for m in llm.last_chat_messages for b in m.blocks if isinstance(b, ImageBlock)]
    assert blocks, "the model received no image"
    for block in blocks:
        assert block.path is None
        # llama-index turns inline bytes into a data: URL; any other URL would be the original.
        url = str(block.url) if block.url is not None else None
        assert url is None or url.startswith("data:image/")
        payload = block.image if block.image is not None else url.split(",", 1)[1]
        assert _face_changed(_decoded(payload), astronaut)
    sent = str(llm.last_chat_messages)
    assert str(photo) not in sent and "idmrag_report" not in sent
    assert doc.image_resource.path is not None  # the caller's document is untouched


def test_undecodable_image_is_withheld_not_passed_through(post):
    nodes = [NodeWithScore(node=ImageNode(image=base64.b64encode(b"not an image").decode(), id_="bad"), score=1.0)]
    assert post.postprocess_nodes(nodes) == []


def test_url_policy_refuses_urls_when_fetching_is_off(engine, http_image):
    strict = FaceAnonymizerPostprocessor(engine=engine, fetch_urls=False)
    assert strict.postprocess_nodes([NodeWithScore(node=ImageNode(image_url=http_image), score=1.0)]) == []


def test_raise_policy_propagates(make_engine):
    strict = FaceAnonymizerPostprocessor(engine=make_engine(on_failure="raise"))
    with pytest.raises(InvalidImageError):
        strict.postprocess_nodes([NodeWithScore(node=ImageNode(image="AAAA" * 20), score=1.0)])


def test_retriever_wrapper_sync_async_and_text_to_image(engine, photo, astronaut):
    inner = ListRetriever([NodeWithScore(node=ImageNode(image_path=str(photo), id_="p"), score=0.5)])
    wrapped = FaceAnonymizingRetriever(inner, engine=engine)
    for nodes in (
        wrapped.retrieve("q"),
        asyncio.run(wrapped.aretrieve("q")),
        wrapped.text_to_image_retrieve("q"),
    ):
        assert nodes[0].node.image_path is None and _face_changed(_decoded(nodes[0].node.image), astronaut)


def test_ingestion_transform(engine, photo, astronaut):
    docs = [ImageDocument(image_path=str(photo), id_="d1"), ImageDocument(image=base64.b64encode(b"junk").decode(), id_="d2")]
    pipeline = IngestionPipeline(transformations=[FaceAnonymizerTransform(engine=engine)], disable_cache=True)
    nodes = pipeline.run(documents=docs)
    assert [n.node_id for n in nodes] == ["d1"]  # the undecodable one is withheld
    resource = nodes[0].image_resource
    assert resource.path is None and resource.url is None
    assert _face_changed(_decoded(resource.data), astronaut)
    assert FaceAnonymizerTransform.class_name() == "FaceAnonymizerTransform"


def test_events_carry_the_report(post, photo):
    seen = []

    class Collect(BaseEventHandler):
        def handle(self, event, **kwargs):
            if isinstance(event, FaceAnonymizationEvent):
                seen.append(event)

    handler = Collect()
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        post.postprocess_nodes([NodeWithScore(node=ImageNode(image_path=str(photo), id_="ev"), score=1.0)])
    finally:
        root.event_handlers.remove(handler)
    assert seen and seen[0].node_id == "ev" and seen[0].report["faces"]
