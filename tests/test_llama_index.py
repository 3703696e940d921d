from __future__ import annotations

import asyncio
import base64
import contextlib
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
from llama_index.core.schema import (
    ImageDocument,
    ImageNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    RelatedNodeInfo,
    TextNode,
)

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
    # the test server runs on loopback, which URL fetching refuses unless allowed
    return FaceAnonymizerPostprocessor(engine=engine, fetch_allow=["127.0.0.1"])


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


@contextlib.contextmanager
def _anonymization_events():
    """The FaceAnonymizationEvents dispatched inside the block, as a list."""
    seen: list[FaceAnonymizationEvent] = []

    class Collect(BaseEventHandler):
        def handle(self, event, **kwargs):
            if isinstance(event, FaceAnonymizationEvent):
                seen.append(event)

    handler = Collect()
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        yield seen
    finally:
        root.event_handlers.remove(handler)


def test_events_carry_the_report(post, photo):
    with _anonymization_events() as seen:
        post.postprocess_nodes([NodeWithScore(node=ImageNode(image_path=str(photo), id_="ev"), score=1.0)])
    assert seen and seen[0].node_id == "ev" and seen[0].report["faces"]


def test_image_only_in_metadata_file_path_is_anonymized(post, photo, astronaut):
    """What several readers produce: LlamaIndex falls back to metadata["file_path"]."""
    from llama_index.core.base.llms.generic_utils import image_node_to_image_block
    from llama_index.core.multi_modal_llms.generic_utils import image_documents_to_base64

    node = ImageNode(id_="fp", metadata={"file_path": str(photo), "file_name": photo.name})
    (out,) = post.postprocess_nodes([NodeWithScore(node=node, score=1.0)])
    assert out.node is not node and "file_path" not in out.node.metadata and "file_name" not in out.node.metadata
    block = image_node_to_image_block(out.node)
    assert block.path is None and block.url is None
    raw = block.resolve_image().read()
    assert _face_changed(_decoded(base64.b64encode(raw)), astronaut)
    (encoded,) = image_documents_to_base64([out.node])
    assert _face_changed(_decoded(encoded), astronaut)


def test_loopback_urls_are_refused_unless_allowed(engine, http_image):
    default = FaceAnonymizerPostprocessor(engine=engine)
    assert default.postprocess_nodes([NodeWithScore(node=ImageNode(image_url=http_image), score=1.0)]) == []


def test_settings_changed_after_construction_take_effect(engine, http_image, photo):
    post = FaceAnonymizerPostprocessor(engine=engine, fetch_allow=["127.0.0.1"])
    node = NodeWithScore(node=ImageNode(image_url=http_image, id_="u"), score=1.0)
    assert len(post.postprocess_nodes([node])) == 1
    post.fetch_urls = False
    assert post.postprocess_nodes([node]) == []
    png = post.model_copy(update={"output_format": "PNG"})
    (out,) = png.postprocess_nodes([NodeWithScore(node=ImageNode(image_path=str(photo)), score=1.0)])
    assert out.node.image_mimetype == "image/png" and base64.b64decode(out.node.image)[:4] == b"\x89PNG"


def test_to_dict_from_dict_keeps_the_engine_settings(make_engine):
    from idmrag_plugin import AnonymizerConfig

    original = FaceAnonymizerPostprocessor(engine=make_engine(on_failure="raise", privacy_level="far1e-3"))
    rebuilt = FaceAnonymizerPostprocessor.from_dict(original.to_dict())
    assert rebuilt.engine.config == original.engine.config
    assert rebuilt.engine.config.on_failure == "raise" and rebuilt.engine.config.privacy_level == "far1e-3"
    assert isinstance(rebuilt.engine.config, AnonymizerConfig)


def test_mime_metadata_follows_the_output(post, photo):
    node = ImageNode(image_path=str(photo), metadata={"image_mimetype": "image/png", "mime_type": "image/png"})
    (out,) = post.postprocess_nodes([NodeWithScore(node=node, score=1.0)])
    assert out.node.metadata["image_mimetype"] == out.node.metadata["mime_type"] == "image/jpeg"


def test_video_and_audio_are_withheld(post, photo):
    from llama_index.core.schema import MediaResource, Node

    node = Node(id_="v", text_resource=MediaResource(text="a clip"),
                video_resource=MediaResource(path=str(photo), mimetype="video/mp4"),
                audio_resource=MediaResource(data=b"RIFF0000WAVE", mimetype="audio/wav"))
    (out,) = post.postprocess_nodes([NodeWithScore(node=node, score=1.0)])
    assert out.node.video_resource is None and out.node.audio_resource is None
    assert out.node.text_resource.text == "a clip"
    assert out.node.metadata["idmrag_report"]["withheld_media"] == ["video", "audio"]
    assert node.video_resource is not None  # the caller's node is untouched
    kinds = {type(b).__name__ for b in out.node.get_content_blocks()}
    assert "VideoBlock" not in kinds and "AudioBlock" not in kinds


def test_tracing_handlers_never_see_the_originals(engine, photo):
    from llama_index.core.instrumentation.span.simple import SimpleSpan
    from llama_index.core.instrumentation.span_handlers import BaseSpanHandler

    original_b64 = base64.b64encode(photo.read_bytes()).decode()
    seen: list[str] = []

    class Events(BaseEventHandler):
        def handle(self, event, **kwargs):
            seen.append(str(event.model_dump()))

    class Spans(BaseSpanHandler[SimpleSpan]):
        def new_span(self, id_, bound_args, instance=None, parent_span_id=None, tags=None, **kwargs):
            seen.append(str(bound_args.arguments))
            return SimpleSpan(id_=id_, parent_id=parent_span_id)

        def prepare_to_exit_span(self, id_, bound_args, instance=None, result=None, **kwargs):
            seen.append(str(result))

        def prepare_to_drop_span(self, id_, bound_args, instance=None, err=None, **kwargs):
            return None

    inner = ListRetriever([
        NodeWithScore(node=ImageNode(image=original_b64, id_="b"), score=0.5),
        NodeWithScore(node=ImageNode(image_path=str(photo), id_="p"), score=0.4),
    ])
    from llama_index.core.base.base_multi_modal_retriever import MultiModalRetriever

    class MultiModalList(ListRetriever, MultiModalRetriever):
        """LlamaIndex wraps these implementations of abstract methods in spans."""

        def _text_to_image_retrieve(self, query_bundle):
            return list(self.nodes)

        def _image_to_image_retrieve(self, query_bundle):
            return list(self.nodes)

        async def _atext_to_image_retrieve(self, query_bundle):
            return list(self.nodes)

        async def _aimage_to_image_retrieve(self, query_bundle):
            return list(self.nodes)

        def text_retrieve(self, query):
            return list(self.nodes)

        def text_to_image_retrieve(self, query):
            return self._text_to_image_retrieve(query)

        def image_to_image_retrieve(self, query):
            return self._image_to_image_retrieve(query)

        async def atext_retrieve(self, query):
            return list(self.nodes)

        async def atext_to_image_retrieve(self, query):
            return await self._atext_to_image_retrieve(query)

        async def aimage_to_image_retrieve(self, query):
            return await self._aimage_to_image_retrieve(query)

    inner = MultiModalList(inner.nodes)
    wrapped = FaceAnonymizingRetriever(inner, engine=engine)
    root = get_dispatcher()
    events, spans = Events(), Spans()
    root.add_event_handler(events)
    root.add_span_handler(spans)
    try:
        nodes = wrapped.retrieve("who is this?")
        asyncio.run(wrapped.aretrieve("who is this?"))
        wrapped.text_to_image_retrieve("who is this?")
        wrapped.image_to_image_retrieve(str(photo))
        asyncio.run(wrapped.atext_to_image_retrieve("who is this?"))
    finally:
        root.event_handlers.remove(events)
        root.span_handlers.remove(spans)
    assert len(nodes) == 2 and seen
    trace = "\n".join(seen)
    assert original_b64[4000:4200] not in trace and str(photo) not in trace


def test_ingestion_with_a_docstore_never_stores_an_original(engine, photo, tmp_path, astronaut):
    from llama_index.core import SimpleDirectoryReader
    from llama_index.core.storage.docstore import SimpleDocumentStore

    from idmrag_plugin.integrations.llama_index import FaceAnonymizingReader

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "astronaut.jpg").write_bytes(photo.read_bytes())
    docstore = SimpleDocumentStore()
    reader = FaceAnonymizingReader(engine=engine, reader=SimpleDirectoryReader(str(folder)))
    pipeline = IngestionPipeline(transformations=[], docstore=docstore, disable_cache=True)
    nodes = pipeline.run(documents=reader.load_data())
    assert nodes and docstore.docs
    stored = str({k: v.to_dict() for k, v in docstore.docs.items()})
    assert str(folder) not in stored and "astronaut.jpg" not in stored
    original_b64 = base64.b64encode(photo.read_bytes()).decode()
    assert original_b64[4000:4200] not in stored
    # LlamaIndex's docstore keeps no image bytes at all; what the pipeline hands on is anonymized
    for node in nodes:
        assert _face_changed(_decoded(node.image_resource.data), astronaut)


def test_llm_guard_anonymizes_every_image_block_and_withholds_media(engine, photo, astronaut, http_image):
    from llama_index.core.base.llms.types import (
        AudioBlock,
        ChatMessage,
        DocumentBlock,
        TextBlock,
        VideoBlock,
    )

    from idmrag_plugin.integrations.llama_index_llm import FaceAnonymizingLLM

    inner = MockLLMWithChatMemoryOfLastCall(is_chat_model=True)
    llm = FaceAnonymizingLLM(llm=inner, anonymizer=FaceAnonymizerPostprocessor(engine=engine, fetch_allow=["127.0.0.1"]))
    raw = photo.read_bytes()
    b64 = base64.b64encode(raw).decode()
    message = ChatMessage(role="user", blocks=[
        TextBlock(text="who is this?"),
        ImageBlock(path=str(photo)),
        ImageBlock(image=raw),
        ImageBlock(url=http_image),
        ImageBlock(url=f"data:image/jpeg;base64,{b64}"),
        DocumentBlock(data=raw, document_mimetype="image/jpeg"),
        VideoBlock(url="https://example.org/clip.mp4"),
        AudioBlock(audio=b"RIFF0000WAVEfmt ", format="wav"),
    ])
    for call in (lambda: llm.chat([message]), lambda: asyncio.run(llm.achat([message]))):
        call()
        (sent,) = inner.last_chat_messages
        kinds = [type(b).__name__ for b in sent.blocks]
        assert kinds == ["TextBlock"] + ["ImageBlock"] * 5 + ["TextBlock", "TextBlock"]
        for block in sent.blocks[1:6]:
            assert block.path is None and block.url is None
            assert _face_changed(_decoded(base64.b64encode(block.resolve_image().read())), astronaut)
        assert "withheld" in sent.blocks[6].text and "withheld" in sent.blocks[7].text
        assert str(photo) not in str(sent) and http_image not in str(sent)
    assert message.blocks[1].path is not None  # the caller's message is untouched


def test_llm_guard_judges_document_blocks_by_their_bytes(engine, photo, astronaut):
    """A photo sent as a document block declared as something else is still a photo; a PDF
    (which carries photos the engine cannot reach) is withheld unless the app says otherwise;
    plain text passes, the images embedded in it anonymized."""
    from llama_index.core.base.llms.types import ChatMessage, DocumentBlock, TextBlock

    from idmrag_plugin.integrations.llama_index_llm import FaceAnonymizingLLM

    raw = photo.read_bytes()
    b64 = base64.b64encode(raw).decode()
    pdf = b"%PDF-1.4\n1 0 obj << /Type /XObject /Subtype /Image /Width 512 /Height 512 >> stream\n" + raw + b"\nendstream"
    notes = b"Meeting notes: the crew photo is in the archive."
    markdown = f"The crew: ![crew](data:image/jpeg;base64,{b64}) end".encode()
    message = ChatMessage(role="user", blocks=[
        TextBlock(text="summarise"),
        DocumentBlock(data=raw, document_mimetype="application/octet-stream"),
        DocumentBlock(data=pdf, document_mimetype="application/pdf"),
        DocumentBlock(data=notes, document_mimetype="text/plain"),
        DocumentBlock(data=markdown, document_mimetype="text/markdown"),
        DocumentBlock(url="https://example.org/report.pdf", document_mimetype="application/pdf"),
    ])
    inner = MockLLMWithChatMemoryOfLastCall(is_chat_model=True)
    FaceAnonymizingLLM(llm=inner, engine=engine).chat([message])
    (sent,) = inner.last_chat_messages
    assert [type(b).__name__ for b in sent.blocks] == ["TextBlock", "ImageBlock", "TextBlock", "DocumentBlock",
                                                      "DocumentBlock", "TextBlock"]
    assert _face_changed(_decoded(base64.b64encode(sent.blocks[1].resolve_image().read())), astronaut)
    assert "document withheld" in sent.blocks[2].text and "document withheld" in sent.blocks[5].text
    assert sent.blocks[3].resolve_document().read() == notes
    text = sent.blocks[4].resolve_document().read().decode()
    assert b64[:500] not in text and text.startswith("The crew: ![crew](data:image/jpeg;base64,") and text.endswith(" end")
    assert _face_changed(_decoded(text.split("base64,")[1].split(")")[0]), astronaut)
    assert b64[:500] not in str(sent)

    inner = MockLLMWithChatMemoryOfLastCall(is_chat_model=True)
    FaceAnonymizingLLM(llm=inner, engine=engine, withhold_documents=False).chat([message])
    (sent,) = inner.last_chat_messages
    assert sent.blocks[2].resolve_document().read() == pdf  # the app's choice, said out loud


def test_llm_guard_anonymizes_images_in_a_messages_additional_kwargs(engine, photo, astronaut):
    """LlamaIndex's OpenAI adapter keeps an assistant turn's tool calls in additional_kwargs and
    sends them back with the conversation."""
    import json

    from llama_index.core.base.llms.types import ChatMessage, TextBlock

    from idmrag_plugin.integrations.llama_index_llm import FaceAnonymizingLLM

    b64 = base64.b64encode(photo.read_bytes()).decode()
    calls = [{"id": "1", "type": "function",
              "function": {"name": "show", "arguments": json.dumps({"photo": f"data:image/jpeg;base64,{b64}"})}}]
    turn = ChatMessage(role="assistant", blocks=[TextBlock(text="showing")], additional_kwargs={"tool_calls": calls})
    inner = MockLLMWithChatMemoryOfLastCall(is_chat_model=True)
    FaceAnonymizingLLM(llm=inner, engine=engine).chat([ChatMessage(role="user", content="show me"), turn])
    sent = inner.last_chat_messages[1]
    assert b64[4000:4200] not in str(sent.additional_kwargs)
    arguments = json.loads(sent.additional_kwargs["tool_calls"][0]["function"]["arguments"])
    assert arguments["photo"].startswith("data:image/")
    assert _face_changed(_decoded(arguments["photo"].split("base64,")[1]), astronaut)


def test_llm_guard_anonymizes_bare_base64_images_in_text(engine, photo, astronaut):
    """Prompts paste photos as bare base64 (whole, inside a sentence, wrapped at 76 columns)
    or as data URIs of another declared type: judged by their bytes. Base64 of anything else
    is left as it is."""
    import textwrap

    from llama_index.core.base.llms.types import ChatMessage, TextBlock

    from idmrag_plugin.integrations.llama_index_llm import FaceAnonymizingLLM

    b64 = base64.b64encode(photo.read_bytes()).decode()
    key = base64.b64encode(bytes(range(200))).decode()
    texts = [b64, f"Image (base64): {b64} end", "Photo:\n" + "\n".join(textwrap.wrap(b64, 76)) + "\nThanks",
             f"see data:application/octet-stream;base64,{b64} end", f"key {key} end"]
    inner = MockLLMWithChatMemoryOfLastCall(is_chat_model=True)
    FaceAnonymizingLLM(llm=inner, engine=engine).chat([ChatMessage(role="user", blocks=[TextBlock(text=t) for t in texts])])
    sent = [block.text for block in inner.last_chat_messages[0].blocks]
    assert all(b64[4000:4200] not in "".join(text.split()) for text in sent)
    assert _face_changed(_decoded(sent[0]), astronaut)
    assert sent[1].startswith("Image (base64): ") and sent[1].endswith(" end")
    assert _face_changed(_decoded(sent[1][len("Image (base64): "):-len(" end")]), astronaut)
    assert sent[2].startswith("Photo:\n") and sent[2].endswith("\nThanks")
    assert _face_changed(_decoded(sent[2][len("Photo:\n"):-len("\nThanks")]), astronaut)
    assert sent[3].startswith("see data:image/") and _face_changed(_decoded(sent[3].split("base64,")[1][:-4]), astronaut)
    assert sent[4] == texts[4]


def test_llm_guard_anonymizes_images_in_a_completion_prompt_and_its_keyword_arguments(engine, photo, astronaut):
    """``complete(prompt)`` sent the prompt as it was: a template filled with a data URI or
    pasted base64 reached the model; so did images in keyword arguments an adapter forwards."""
    from idmrag_plugin.integrations.llama_index_llm import FaceAnonymizingLLM

    b64 = base64.b64encode(photo.read_bytes()).decode()
    seen: list[tuple[str, dict]] = []

    class Recording(MockLLMWithChatMemoryOfLastCall):
        def complete(self, prompt, formatted=False, **kwargs):
            seen.append((prompt, kwargs))
            return super().complete(prompt, formatted=formatted)

    llm = FaceAnonymizingLLM(llm=Recording(is_chat_model=False), engine=engine)
    llm.complete(f"Describe data:image/jpeg;base64,{b64} please", images=[b64])
    asyncio.run(llm.acomplete(f"Describe {b64}"))
    (first, kwargs), (second, _) = seen
    assert b64[4000:4200] not in first + second + str(kwargs)
    assert _face_changed(_decoded(first.split("base64,")[1].split(" ")[0]), astronaut)
    assert _face_changed(_decoded(kwargs["images"][0]), astronaut)
    assert _face_changed(_decoded(second[len("Describe "):]), astronaut)


def test_llm_guard_covers_image_query_and_legacy_image_documents(engine, photo, astronaut):
    from llama_index.core.query_engine import SimpleMultiModalQueryEngine

    from idmrag_plugin.integrations.llama_index_llm import FaceAnonymizingLLM

    class ImageRetriever(ListRetriever):
        def image_to_image_retrieve(self, query):
            return list(self.nodes)

    inner = MockLLMWithChatMemoryOfLastCall(is_chat_model=True)
    llm = FaceAnonymizingLLM(llm=inner, engine=engine)
    # nothing anonymizes the retriever's output here: the guard is the last line of defence
    retriever = ImageRetriever([NodeWithScore(node=ImageNode(image_path=str(photo)), score=1.0)])
    query_engine = SimpleMultiModalQueryEngine(retriever=retriever, multi_modal_llm=llm)
    query_engine.image_query(str(photo), "Who is this?")
    blocks = [b for m in inner.last_chat_messages for b in m.blocks if isinstance(b, ImageBlock)]
    assert blocks and all(b.path is None for b in blocks)
    for block in blocks:
        assert _face_changed(_decoded(base64.b64encode(block.resolve_image().read())), astronaut)
    kwargs = llm._safe_kwargs({"image_documents": [ImageNode(image_path=str(photo))]})
    (doc,) = kwargs["image_documents"]
    assert doc.image_path is None and _face_changed(_decoded(doc.image), astronaut)


def test_data_url_images_are_anonymized_not_fetched_or_dropped(post, photo, astronaut):
    b64 = base64.b64encode(photo.read_bytes()).decode()
    node = ImageNode(image_url=f"data:image/jpeg;base64,{b64}", id_="d")
    (out,) = post.postprocess_nodes([NodeWithScore(node=node, score=1.0)])
    assert out.node.image_url is None and _face_changed(_decoded(out.node.image), astronaut)


def test_retrieved_images_go_through_the_engine_as_one_batch(make_engine, astronaut, monkeypatch):
    """Five retrieved photos: one anonymize_many batch (each detected once), then the nodes
    are rebuilt from the engine's cache; a second retrieval runs no model."""
    engine = make_engine(rotations=(0,), cache_size=16)
    photos = []
    for shift in range(5):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(astronaut[shift * 8:, shift * 4:])).save(buffer, "PNG")
        photos.append(base64.b64encode(buffer.getvalue()).decode())
    nodes = [NodeWithScore(node=ImageNode(image=b64), score=1.0 - i / 10) for i, b64 in enumerate(photos)]
    batches, detections = [], []
    many, detect = engine.anonymize_many, engine.detector.detect
    monkeypatch.setattr(engine, "anonymize_many", lambda images, **kw: batches.append(len(images)) or many(images, **kw))
    monkeypatch.setattr(engine.detector, "detect", lambda pixels: detections.append(1) or detect(pixels))
    post = FaceAnonymizerPostprocessor(engine=engine)
    out = post.postprocess_nodes(nodes)
    assert batches == [5] and len(detections) == 5
    assert [n.score for n in out] == [n.score for n in nodes]
    for node, b64 in zip(out, photos, strict=True):
        original = _decoded(b64)
        assert node.node.metadata["idmrag_report"]["status"] == "anonymized"
        assert np.abs(_decoded(node.node.image)[90:150, 195:255] - original[90:150, 195:255]).mean() > 20
    post.postprocess_nodes(nodes)
    assert len(detections) == 5  # all from the cache


def test_without_a_cache_images_are_anonymized_node_by_node_once(make_engine, astronaut, photo, monkeypatch):
    engine = make_engine(rotations=(0,), cache_size=0)
    detections = []
    detect = engine.detector.detect
    monkeypatch.setattr(engine.detector, "detect", lambda pixels: detections.append(1) or detect(pixels))
    b64 = base64.b64encode(photo.read_bytes()).decode()
    out = FaceAnonymizerPostprocessor(engine=engine).postprocess_nodes(
        [NodeWithScore(node=ImageNode(image=b64), score=1.0), NodeWithScore(node=ImageNode(image=b64), score=0.5)])
    assert len(out) == 2 and len(detections) == 2  # no prefetch that the cache could not keep


def test_photo_metadata_a_loader_copied_out_never_reaches_the_model(post, photo):
    """EXIF and GPS fields (flat, nested, any spelling) leave with the original; the rest stays."""
    metadata = {
        "caption": "crew portrait", "GPSInfo": {"GPSLatitude": 48.85837}, "exif": {"Make": "Canon"},
        "gps_longitude": 2.294481, "lat": 48.85837, "camera": {"model": "EOS", "GPSAltitude": 35.0},
        "taken": [{"geo_location": "Paris"}, {"note": "kept"}],
    }
    node = ImageNode(image_path=str(photo), id_="gps", metadata=metadata)
    (out,) = post.postprocess_nodes([NodeWithScore(node=node, score=1.0)])
    kept = {k: v for k, v in out.node.metadata.items() if k != "idmrag_report"}
    assert kept == {"caption": "crew portrait", "camera": {"model": "EOS"}, "taken": [{}, {"note": "kept"}]}
    assert sorted(out.node.metadata["idmrag_report"]["removed_metadata"]) == sorted(
        ["GPSInfo", "exif", "gps_longitude", "lat", "camera.GPSAltitude", "taken.geo_location"])
    shown = out.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "48.85" not in shown and "2.29" not in shown and "Paris" not in shown and "Canon" not in shown
    assert node.metadata == metadata  # the retrieved node itself is not modified


def test_what_travels_with_the_node_is_scrubbed_relationships_and_embedding(post, photo):
    """Node parsers copy the source document's whole metadata (its path, URL, EXIF, GPS) into
    the node's SOURCE relationship, which travels with the node into responses and stores."""
    source = ImageDocument(image_path=str(photo), id_="doc", metadata={
        "file_path": str(photo), "image_url": "https://cdn.example.org/alice.jpg",
        "GPSInfo": {"GPSLatitude": 48.85837}, "album": "crew", "more": {"thumbnail": "/photos/alice_small.jpg"},
    })
    node = ImageNode(image_path=str(photo), id_="node", relationships={
        NodeRelationship.SOURCE: source.as_related_node_info(),
        NodeRelationship.CHILD: [RelatedNodeInfo(node_id="c", metadata={"url": "https://cdn.example.org/a.png"})],
    })
    node.embedding = [0.1, 0.2, 0.3]  # the original photo's image embedding, as an index stores it
    (out,) = post.postprocess_nodes([NodeWithScore(node=node, score=1.0)])
    assert out.node.embedding is None  # it describes the original face, not the image handed on
    relations = out.node.relationships
    assert relations[NodeRelationship.SOURCE].node_id == "doc"  # the link itself stays
    assert relations[NodeRelationship.SOURCE].metadata == {"album": "crew", "more": {}}
    assert relations[NodeRelationship.CHILD][0].metadata == {}
    dumped = out.node.model_dump_json()
    assert str(photo) not in dumped and "alice" not in dumped and "48.85" not in dumped and "cdn.example" not in dumped
    assert "relationships.source.GPSInfo" in out.node.metadata["idmrag_report"]["removed_metadata"]
    assert source.metadata["file_path"] == str(photo)  # the caller's objects are not modified


def _b64_jpeg(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_images_in_metadata_and_text_are_anonymized_in_any_node(post, astronaut):
    """A loader's thumbnail in metadata, or a Markdown chunk embedding the photo as a data URI,
    would hand the original to the model and into responses, from text nodes too."""
    b64 = _b64_jpeg(astronaut)
    image_node = ImageNode(image=b64, id_="img", metadata={"thumbnail": f"data:image/jpeg;base64,{b64}"})
    text_node = TextNode(id_="txt", text=f"Crew.\n![portrait](data:image/jpeg;base64,{b64})\nLaunch day.",
                         metadata={"raw": b64, "preview": "/photos/alice.jpg", "page": 3})
    plain = TextNode(id_="plain", text="no pictures here", metadata={"page": 4})
    out = post.postprocess_nodes([NodeWithScore(node=n, score=1.0) for n in (image_node, text_node, plain)])
    assert [item.node.node_id for item in out] == ["img", "txt", "plain"]
    assert out[2].node is plain  # nothing to anonymize: passed on as it is
    for item in out[:2]:
        assert b64[:500] not in item.node.model_dump_json()
    thumbnail = out[0].node.metadata["thumbnail"]
    assert thumbnail.startswith("data:image/jpeg;base64,") and _face_changed(_decoded(thumbnail.split(",")[1]), astronaut)
    node = out[1].node
    assert node.text.startswith("Crew.\n![portrait](data:image/jpeg;base64,") and node.text.endswith(")\nLaunch day.")
    assert _face_changed(_decoded(node.metadata["raw"]), astronaut)
    report = node.metadata["idmrag_report"]
    assert report["status"] == "no_image" and [r["status"] for r in report["embedded_images"]] == ["anonymized"] * 2
    assert report["removed_locations"] == ["preview"] and node.metadata["page"] == 3
    assert "/photos/alice.jpg" not in node.get_content(metadata_mode=MetadataMode.LLM)


def test_a_text_node_whose_embedded_image_cannot_be_read_is_withheld(post):
    node = TextNode(id_="broken", text="see ![x](data:image/png;base64,AAAAAAAA) here")
    assert post.postprocess_nodes([NodeWithScore(node=node, score=1.0)]) == []


def test_thumbnails_in_relationships_are_dropped(post, photo, astronaut):
    b64 = _b64_jpeg(astronaut)
    node = ImageNode(image_path=str(photo), id_="n", relationships={
        NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc", metadata={"thumb": b64, "album": "crew"}),
    })
    (out,) = post.postprocess_nodes([NodeWithScore(node=node, score=1.0)])
    assert out.node.relationships[NodeRelationship.SOURCE].metadata == {"album": "crew"}
    assert "relationships.source.thumb" in out.node.metadata["idmrag_report"]["removed_metadata"]


def test_llm_guard_anonymizes_images_embedded_in_text_blocks(engine, photo, astronaut):
    from llama_index.core.base.llms.types import ChatMessage, TextBlock

    from idmrag_plugin.integrations.llama_index_llm import FaceAnonymizingLLM

    inner = MockLLMWithChatMemoryOfLastCall(is_chat_model=True)
    llm = FaceAnonymizingLLM(llm=inner, anonymizer=FaceAnonymizerPostprocessor(engine=engine))
    b64 = base64.b64encode(photo.read_bytes()).decode()
    text = f'Context: <img src="data:image/jpeg;base64,{b64}"> and ![x](data:image/png;base64,AAAAAAAA) end'
    llm.chat([ChatMessage(role="user", blocks=[TextBlock(text=text)])])
    (sent,) = inner.last_chat_messages
    out = sent.blocks[0].text
    assert b64[:500] not in out and out.startswith('Context: <img src="data:image/jpeg;base64,')
    assert _face_changed(_decoded(out.split("base64,")[1].split('"')[0]), astronaut)
    assert "withheld" in out and "png;base64,AAAAAAAA" not in out and out.endswith(" end")


def test_in_memory_images_in_metadata_are_anonymized(post, astronaut):
    node = TextNode(id_="t", text="caption", metadata={"crop": Image.fromarray(astronaut), "pixels": astronaut})
    (out,) = post.postprocess_nodes([NodeWithScore(node=node, score=1.0)])
    crop, pixels = out.node.metadata["crop"], out.node.metadata["pixels"]
    assert isinstance(crop, Image.Image) and pixels.shape == astronaut.shape
    assert _face_changed(np.asarray(crop).astype(int), astronaut) and _face_changed(pixels.astype(int), astronaut)
    assert node.metadata["pixels"] is astronaut  # the retrieved node itself is not modified


def test_float_and_alpha_arrays_in_metadata_are_anonymized_in_kind(post, astronaut):
    """A float array (a vision model's input) is a photo too; an RGBA array's alpha channel,
    the original's data, comes back opaque."""
    floats = astronaut.astype(np.float32) / 255.0
    rgba = np.dstack([astronaut, astronaut[..., 0]])
    node = TextNode(id_="f", text="caption", metadata={"floats": floats, "rgba": rgba, "listed": astronaut.tolist()})
    (out,) = post.postprocess_nodes([NodeWithScore(node=node, score=1.0)])
    got, alpha = out.node.metadata["floats"], out.node.metadata["rgba"]
    assert _face_changed(np.asarray(out.node.metadata["listed"]), astronaut)
    assert got.dtype == np.float32 and got.shape == floats.shape and 0.0 <= got.min() and got.max() <= 1.0
    assert _face_changed((got * 255.0).astype(int), astronaut)
    assert alpha.shape == rgba.shape and (alpha[..., 3] == 255).all()


def test_a_text_node_whose_text_is_a_base64_image_is_anonymized(post, astronaut):
    b64 = _b64_jpeg(astronaut)
    (out,) = post.postprocess_nodes([NodeWithScore(node=TextNode(id_="b", text=b64 + "\n"), score=1.0)])
    assert b64[:500] not in out.node.text and _face_changed(_decoded(out.node.text), astronaut)
    assert [r["status"] for r in out.node.metadata["idmrag_report"]["embedded_images"]] == ["anonymized"]


def test_llm_guard_anonymizes_images_nested_in_citable_citation_and_tool_blocks(engine, photo, astronaut):
    """A multimodal citation query engine hands the model retrieved images inside CitableBlocks
    (with the node's source); a guard that looked only at top-level blocks let them through."""
    types = pytest.importorskip("llama_index.core.base.llms.types")
    if not hasattr(types, "CitableBlock"):
        pytest.skip("this llama-index-core has no citation blocks")
    from llama_index.core.base.llms.types import (
        ChatMessage,
        CitableBlock,
        CitationBlock,
        TextBlock,
        ToolCallBlock,
    )

    from idmrag_plugin.integrations.llama_index_llm import FaceAnonymizingLLM

    inner = MockLLMWithChatMemoryOfLastCall(is_chat_model=True)
    llm = FaceAnonymizingLLM(llm=inner, anonymizer=FaceAnonymizerPostprocessor(engine=engine))
    raw = photo.read_bytes()
    b64 = base64.b64encode(raw).decode()
    message = ChatMessage(role="user", blocks=[
        CitableBlock(title="crew photo", source=str(photo), content=[TextBlock(text="the crew"), ImageBlock(path=str(photo))]),
        CitationBlock(cited_content=ImageBlock(image=raw), source="https://cdn.example.org/alice.jpg", title="t",
                      additional_location_info={}),
        ToolCallBlock(tool_call_id="1", tool_name="show", tool_kwargs={"image": b64, "caption": "kept"}),
    ])
    llm.chat([message])
    (sent,) = inner.last_chat_messages
    citable, citation, tool = sent.blocks
    assert citable.source == "" and citable.title == "crew photo" and citable.content[0].text == "the crew"
    for block in (citable.content[1], citation.cited_content):
        assert block.path is None and _face_changed(_decoded(base64.b64encode(block.resolve_image().read())), astronaut)
    assert citation.source == "" and tool.tool_kwargs["caption"] == "kept"
    assert _face_changed(_decoded(tool.tool_kwargs["image"]), astronaut)
    assert str(photo) not in str(sent) and b64[:500] not in str(sent) and "cdn.example.org" not in str(sent)


def test_a_text_node_whose_text_is_an_image_path_or_url_hands_on_the_anonymized_image(post, photo, astronaut):
    out = post.postprocess_nodes([
        NodeWithScore(node=TextNode(id_="p", text=f" {photo}\n"), score=1.0),
        NodeWithScore(node=TextNode(id_="f", text="file:///photos/alice.jpg"), score=1.0),
    ])
    assert [item.node.node_id for item in out] == ["p"]  # a file:// URL cannot be fetched safely: withheld
    text = out[0].node.text
    assert text.startswith("data:image/jpeg;base64,") and str(photo) not in out[0].node.model_dump_json()
    assert _face_changed(_decoded(text.split(",", 1)[1]), astronaut)



def test_ids_that_spell_the_original_file_never_travel_on(post, engine, photo, tmp_path):
    """SimpleDirectoryReader(filename_as_id=True) makes the file's path the document's id and
    its nodes' ref_doc_id: the path (here, the person's name) must not travel with the copies,
    nor reach instrumentation; the stand-ins are stable, so relationships still hold."""
    from llama_index.core import SimpleDirectoryReader

    folder = tmp_path / "Jane_Doe"
    folder.mkdir()
    (folder / "Jane_Doe_0001.png").write_bytes(photo.read_bytes())
    documents = SimpleDirectoryReader(str(tmp_path), recursive=True, filename_as_id=True).load_data()
    assert "Jane_Doe" in documents[0].id_
    chunk = ImageNode(image_path=documents[0].metadata["file_path"], id_=documents[0].id_ + "_part_0")
    chunk.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=documents[0].id_)
    url_node = ImageNode(image_url="https://example.com/people/Jane_Doe_0002.jpg", id_="https://example.com/people/Jane_Doe_0002.jpg")
    strict = FaceAnonymizerPostprocessor(engine=engine, fetch_urls=False)
    with _anonymization_events() as seen:
        first = post.postprocess_nodes([NodeWithScore(node=n, score=1.0) for n in (*documents, chunk)])
        again = post.postprocess_nodes([NodeWithScore(node=chunk, score=1.0)])
        assert strict.postprocess_nodes([NodeWithScore(node=url_node, score=1.0)]) == []
    assert len(first) == 2
    for out in first:
        assert "Jane_Doe" not in out.node.model_dump_json()
        assert "id_" in out.node.metadata["idmrag_report"]["removed_locations"]
    assert first[1].node.ref_doc_id == first[0].node.node_id
    assert again[0].node.node_id == first[1].node.node_id
    assert len(seen) == 4 and seen[-1].status == "withheld"
    assert not any("Jane_Doe" in event.model_dump_json() for event in seen)


def test_image_links_in_node_text_are_removed(post):
    node = TextNode(text='Jane at the gala: ![Jane](https://example.com/Jane_Doe.jpg) <img src="/srv/Jane_Doe.png">', id_="t1")
    out = post.postprocess_nodes([NodeWithScore(node=node, score=1.0)])[0].node
    text = out.get_content(metadata_mode=MetadataMode.LLM)
    assert "Jane_Doe" not in text and text.startswith("Jane at the gala: [image link removed by idmrag-plugin: Jane]")
    assert out.node_id == "t1"
    assert [r["status"] for r in out.metadata["idmrag_report"]["embedded_images"]] == ["withheld", "withheld"]
