from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("langchain_core", reason="install the langchain extra")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import ParrotFakeChatModel
from langchain_core.messages import HumanMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda

from idmrag_plugin import InvalidImageError
from idmrag_plugin.integrations.langchain import FaceAnonymizerCompressor, FaceAnonymizingRetriever


class ListRetriever(BaseRetriever):
    docs: list[Document]

    def _get_relevant_documents(self, query, *, run_manager):
        return [d.model_copy(deep=True) for d in self.docs]


@pytest.fixture(scope="module")
def compressor(engine):
    return FaceAnonymizerCompressor(engine=engine, fetch_allow=["127.0.0.1"])


def _decoded(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64.split(",")[-1]))).convert("RGB")).astype(int)


def _face_changed(pixels: np.ndarray, original: np.ndarray) -> bool:
    face = (slice(90, 150), slice(195, 255))
    return np.abs(pixels[face] - original[face]).mean() > 20


def _to_message(docs: list[Document]) -> list[HumanMessage]:
    blocks: list[dict] = [{"type": "text", "text": "Answer from these photos."}]
    for doc in docs:
        data = doc.metadata.get("image_base64", doc.page_content)
        blocks.append({"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}})
        blocks.append({"type": "text", "text": str({k: v for k, v in doc.metadata.items() if k != "idmrag_report"})})
    return [HumanMessage(content=blocks)]


def test_chatbot_chain_sends_only_anonymized_images(engine, photo, astronaut, http_image):
    b64 = base64.b64encode(photo.read_bytes()).decode()
    docs = [
        Document(page_content=b64, metadata={"source": str(photo)}, id="chroma"),
        Document(page_content="a photo", metadata={"image_path": str(photo), "source": str(photo)}, id="path"),
        Document(page_content="a photo", metadata={"image_url": http_image}, id="url"),
    ]
    retriever = FaceAnonymizingRetriever(
        retriever=ListRetriever(docs=docs), anonymizer=FaceAnonymizerCompressor(engine=engine, fetch_allow=["127.0.0.1"])
    )
    chain = retriever | RunnableLambda(_to_message) | ParrotFakeChatModel()
    reply = chain.invoke("who is this?")
    images = [b["image_url"]["url"] for b in reply.content if isinstance(b, dict) and b.get("type") == "image_url"]
    assert len(images) == 3
    for url in images:
        assert _face_changed(_decoded(url), astronaut)
        assert b64[:200] not in url
    text = str(reply.content)
    assert str(photo) not in text and http_image not in text


def test_documents_keep_ids_and_callers_documents_are_untouched(compressor, photo):
    doc = Document(page_content="caption", metadata={"image_path": str(photo), "source": str(photo), "page": 3}, id="x")
    before = doc.model_copy(deep=True)
    (out,) = compressor.compress_documents([doc], "q")
    assert doc == before
    assert out.id == "x" and out.page_content == "caption" and out.metadata["page"] == 3
    assert "image_path" not in out.metadata and "source" not in out.metadata
    assert out.metadata["image_mimetype"] == "image/jpeg"
    assert out.metadata["idmrag_report"]["faces"][0]["method"] == "obfuscated"


def test_text_documents_pass_through(compressor):
    doc = Document(page_content="just text about faces", metadata={"source": "notes.txt"})
    assert compressor.compress_documents([doc], "q") == [doc]


def test_undecodable_images_are_withheld(compressor):
    bad = Document(page_content="x", metadata={"image_base64": base64.b64encode(b"\xff\xd8\xff junk").decode()})
    missing = Document(page_content="x", metadata={"image_path": "/nonexistent/a.jpg"})
    assert compressor.compress_documents([bad, missing], "q") == []


def test_raise_policy_propagates(make_engine):
    strict = FaceAnonymizerCompressor(engine=make_engine(on_failure="raise"))
    with pytest.raises(InvalidImageError):
        strict.compress_documents([Document(page_content="x", metadata={"image_path": "/nonexistent.jpg"})], "q")


def test_async_paths_and_callbacks_see_only_anonymized_documents(engine, photo, astronaut):
    starts: list[str] = []
    ends: list[str] = []
    original_b64 = base64.b64encode(photo.read_bytes()).decode()

    class Record(BaseCallbackHandler):
        def on_retriever_start(self, serialized, query, **kwargs):
            starts.append(query)

        def on_retriever_end(self, documents, **kwargs):
            ends.append(str(documents))

    docs = [Document(page_content="p", metadata={"image_path": str(photo)}),
            Document(page_content=original_b64, metadata={"source": str(photo)})]
    retriever = FaceAnonymizingRetriever(retriever=ListRetriever(docs=docs), anonymizer=FaceAnonymizerCompressor(engine=engine))
    out = asyncio.run(retriever.ainvoke("q", config={"callbacks": [Record()]}))
    assert _face_changed(_decoded(out[0].metadata["image_base64"]), astronaut)
    out = retriever.invoke("q", config={"callbacks": [Record()]})
    assert _face_changed(_decoded(out[1].page_content), astronaut)
    # only the wrapper's run is reported: the wrapped retriever's originals reach no handler
    assert starts == ["q", "q"] and len(ends) == 2
    assert all(str(photo) not in e and original_b64[4000:4200] not in e for e in ends)
    out = asyncio.run(FaceAnonymizerCompressor(engine=engine).atransform_documents(docs))
    assert "image_base64" in out[0].metadata


def _jpeg_b64(pixels: np.ndarray, fmt: str = "JPEG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_image_data_under_any_metadata_key_is_anonymized_in_kind(compressor, astronaut):
    b64 = _jpeg_b64(astronaut)
    doc = Document(page_content="caption", metadata={
        "image_b64": b64, "thumbnail": f"data:image/jpeg;base64,{b64}",
        "nested": {"crops": [b64, "plain text"]}, "raw": base64.b64decode(b64), "page": 2,
    })
    (out,) = compressor.compress_documents([doc], "q")
    meta = out.metadata
    assert _face_changed(_decoded(meta["image_b64"]), astronaut)
    assert meta["thumbnail"].startswith("data:image/jpeg;base64,") and _face_changed(_decoded(meta["thumbnail"]), astronaut)
    assert _face_changed(_decoded(meta["nested"]["crops"][0]), astronaut) and meta["nested"]["crops"][1] == "plain text"
    assert isinstance(meta["raw"], bytes) and _face_changed(_decoded(base64.b64encode(meta["raw"]).decode()), astronaut)
    assert meta["page"] == 2 and len(meta["idmrag_report"]) == 4
    assert b64[4000:4200] not in str(out)


def test_avif_data_uri_content_is_anonymized_or_withheld_never_passed(compressor, astronaut):
    avif = _jpeg_b64(astronaut, "AVIF")
    doc = Document(page_content=f"data:image/avif;base64,{avif}", metadata={})
    (out,) = compressor.compress_documents([doc], "q")
    assert out.page_content.startswith("data:image/jpeg;base64,")
    assert _face_changed(_decoded(out.page_content), astronaut)
    odd = Document(page_content="data:image/x-unknown;base64," + base64.b64encode(b"\x00" * 64).decode())
    assert compressor.compress_documents([odd], "q") == []


def test_raw_strings_and_bytes_from_a_byte_store(engine, astronaut):
    """The multi-vector cookbook: the docstore hands back raw base64 strings, not Documents."""
    b64 = _jpeg_b64(astronaut)

    class RawRetriever(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            return [b64, "a table summary", base64.b64decode(b64)]

    wrapped = FaceAnonymizingRetriever(retriever=RawRetriever(), anonymizer=FaceAnonymizerCompressor(engine=engine))
    image, text, raw = wrapped.invoke("q")
    assert isinstance(image, str) and _face_changed(_decoded(image), astronaut)
    assert text == "a table summary"
    assert isinstance(raw, bytes) and _face_changed(_decoded(base64.b64encode(raw).decode()), astronaut)


def test_settings_are_read_at_call_time(engine, http_image, photo):
    compressor = FaceAnonymizerCompressor(engine=engine, fetch_allow=["127.0.0.1"])
    doc = Document(page_content="x", metadata={"image_url": http_image})
    assert len(compressor.compress_documents([doc], "q")) == 1
    compressor.fetch_urls = False
    assert compressor.compress_documents([doc], "q") == []
    png = compressor.model_copy(update={"output_format": "PNG"})
    (out,) = png.compress_documents([Document(page_content="x", metadata={"image_path": str(photo)})], "q")
    assert base64.b64decode(out.metadata["image_base64"])[:4] == b"\x89PNG"
    assert out.metadata["image_mimetype"] == "image/png"


def test_loopback_url_is_refused_by_default(engine, http_image):
    default = FaceAnonymizerCompressor(engine=engine)
    assert default.compress_documents([Document(page_content="x", metadata={"image_url": http_image})], "q") == []


def test_unstructured_style_mime_follows_the_output(compressor, astronaut):
    doc = Document(page_content="figure", metadata={
        "image_base64": _jpeg_b64(astronaut, "PNG"), "image_mime_type": "image/png",
        "file_name": "report.pdf", "filename": "report.pdf",
    })
    (out,) = compressor.compress_documents([doc], "q")
    assert out.metadata["image_mime_type"] == "image/jpeg"
    assert base64.b64decode(out.metadata["image_base64"])[:3] == b"\xff\xd8\xff"
    assert "file_name" not in out.metadata and "filename" not in out.metadata


def test_image_paths_under_other_keys_are_not_handed_on(compressor, photo):
    doc = Document(page_content="caption", metadata={"thumbnail_url": "https://cdn.example.org/p/face.jpg"})
    (out,) = compressor.compress_documents([doc], "q")
    assert "thumbnail_url" not in out.metadata
    assert out.metadata["idmrag_report"]["removed_locations"] == ["thumbnail_url"]


def test_original_locations_nested_anywhere_are_not_handed_on(compressor, photo):
    """A loader's nested provenance (a dict's ``source``, a list of image paths) points at the
    original as surely as a top-level ``source`` does."""
    doc = Document(page_content="caption", metadata={
        "image_path": str(photo), "origin": {"source": "/photos/alice.pdf", "album": "2019"},
        "gallery": ["https://cdn.example.org/p/alice.jpg", "see also"], "note": "kept",
    })
    (out,) = compressor.compress_documents([doc], "q")
    assert out.metadata["origin"] == {"album": "2019"} and out.metadata["gallery"] == ["see also"]
    assert out.metadata["note"] == "kept" and out.metadata["idmrag_report"]["status"] == "anonymized"
    assert "alice" not in repr(out.metadata) and str(photo) not in repr(out.metadata)


def test_kwargs_and_k_reach_the_wrapped_retriever(engine):
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore.from_texts([f"text {i}" for i in range(6)], DeterministicFakeEmbedding(size=16))
    compressor = FaceAnonymizerCompressor(engine=engine)
    wrapped = FaceAnonymizingRetriever(retriever=store.as_retriever(), anonymizer=compressor)
    assert len(wrapped.invoke("text", k=1)) == 1 and len(wrapped.invoke("text", k=3)) == 3
    assert len(FaceAnonymizingRetriever(retriever=store.as_retriever(), anonymizer=compressor, k=2).invoke("t")) == 2


def test_model_boundary_guard_anonymizes_every_image_block_format(engine, photo, astronaut, http_image):
    from langchain_core.prompts import ChatPromptTemplate

    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    b64 = base64.b64encode(photo.read_bytes()).decode()
    guard = FaceAnonymizingGuard(anonymizer=FaceAnonymizerCompressor(engine=engine, fetch_allow=["127.0.0.1"]))
    message = HumanMessage(content=[
        {"type": "text", "text": "who is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64}"}},
        {"type": "image_url", "image_url": http_image},
        {"type": "image", "source_type": "base64", "data": b64, "mime_type": "image/jpeg"},
        {"type": "image", "base64": b64, "mime_type": "image/jpeg"},
        {"type": "image", "url": http_image},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": b64}},
        {"type": "file", "mime_type": "image/jpeg", "base64": b64},
        {"type": "image", "file_id": "file-abc"},
        {"type": "video", "url": "https://example.org/v.mp4"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ])
    model = ParrotFakeChatModel()
    chain = ChatPromptTemplate.from_messages([message]) | guard | model
    reply = chain.invoke({})
    sent = str(reply.content)
    assert b64[4000:4200] not in sent and http_image not in sent and "file-abc" not in sent
    blocks = reply.content
    payloads = [  # (the chat model normalises v0 "source_type" blocks to v1 "base64" ones)
        blocks[1]["image_url"]["url"], blocks[2]["image_url"], blocks[3].get("data") or blocks[3]["base64"],
        blocks[4]["base64"], blocks[5]["base64"], blocks[6]["source"]["data"], blocks[7]["base64"],
    ]
    for payload in payloads:
        assert _face_changed(_decoded(payload), astronaut)
    assert "url" not in blocks[5]
    guarded = guard.invoke([message])[0].content
    assert guarded[3]["source_type"] == "base64" and guarded[3]["data"] == blocks[3].get("data", blocks[3].get("base64"))
    assert [b["type"] for b in blocks[8:]] == ["text", "text", "text"]  # file id, video, audio withheld
    assert "withheld" in blocks[9]["text"]
    assert message.content[1]["image_url"]["url"].endswith(b64)  # the caller's message is untouched
    assert len(guard.invoke([message])[0].response_metadata["idmrag_report"]) == 10


def test_model_boundary_guard_covers_openai_responses_input_image_blocks(engine, photo, astronaut, http_image):
    """OpenAI's Responses API sends ``input_image`` blocks: an ``image_url`` string (data URI
    or URL) or a provider ``file_id``, which the guard cannot see and passed on."""
    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    b64 = base64.b64encode(photo.read_bytes()).decode()
    guard = FaceAnonymizingGuard(anonymizer=FaceAnonymizerCompressor(engine=engine, fetch_allow=["127.0.0.1"]))
    sent = guard.invoke([HumanMessage(content=[
        {"type": "input_image", "image_url": f"data:image/jpeg;base64,{b64}", "detail": "high"},
        {"type": "input_image", "image_url": http_image},
        {"type": "input_image", "file_id": "file-abc123"},
    ])])[0].content
    for block in sent[:2]:
        assert block["type"] == "input_image" and _face_changed(_decoded(block["image_url"]), astronaut)
    assert sent[0]["detail"] == "high"
    assert sent[2]["type"] == "text" and "withheld" in sent[2]["text"] and "file-abc123" not in str(sent)


def test_model_boundary_guard_anonymizes_raw_bytes_in_provider_native_blocks(engine, photo, astronaut):
    """Bedrock's Converse blocks carry raw bytes ({"image": {"source": {"bytes": ...}}}); the
    guard looked only at strings and dicts inside blocks and passed them on."""
    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    raw = photo.read_bytes()
    sent = FaceAnonymizingGuard(engine=engine).invoke([HumanMessage(content=[
        {"image": {"format": "jpeg", "source": {"bytes": raw}}},
        {"image": {"format": "png", "source": {"bytes": Image.fromarray(astronaut)}}},
        {"document": {"name": "notes", "source": {"bytes": b"plain notes"}}},
    ])])[0].content
    anonymized = sent[0]["image"]["source"]["bytes"]
    assert isinstance(anonymized, bytes) and anonymized != raw
    assert _face_changed(_decoded(base64.b64encode(anonymized).decode()), astronaut)
    assert _face_changed(np.asarray(sent[1]["image"]["source"]["bytes"]).astype(int), astronaut)
    assert sent[2]["document"]["source"]["bytes"] == b"plain notes"


def test_model_boundary_guard_judges_provider_native_references_documents_and_video(engine, photo):
    """Untyped provider blocks follow the typed blocks' rules: what the guard cannot read (a
    Gemini file URI, an S3 location) and what can hold photos it cannot reach (a PDF's bytes,
    a video) are withheld."""
    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    pdf = b"%PDF-1.4\n1 0 obj << /Subtype /Image >> stream\n" + photo.read_bytes() + b"\nendstream"
    blocks = [
        {"file_data": {"mime_type": "image/jpeg", "file_uri": "gs://bucket/alice.jpg"}},
        {"image": {"format": "jpeg", "source": {"s3Location": {"uri": "s3://bucket/alice.jpg"}}}},
        {"document": {"format": "pdf", "name": "report", "source": {"bytes": pdf}}},
        {"video": {"format": "mp4", "source": {"bytes": b"\x00\x00\x00\x18ftypmp42"}}},
        {"document": {"format": "txt", "name": "notes", "source": {"bytes": b"plain notes"}}},
    ]
    sent = FaceAnonymizingGuard(engine=engine).invoke([HumanMessage(content=blocks)])[0].content
    for index in range(4):
        assert sent[index]["type"] == "text" and "withheld" in sent[index]["text"], index
    assert "bucket" not in str(sent) and repr(pdf[-300:-20])[2:-1] not in str(sent)
    assert sent[4] == blocks[4]


def test_guard_passes_text_untouched_and_wraps_a_model(engine):
    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    guard = FaceAnonymizingGuard(engine=engine)
    message = HumanMessage(content="just words")
    assert guard.invoke([message]) == [message]
    assert guard.wrap(ParrotFakeChatModel()).invoke([message]).content == "just words"


def test_nested_retrievers_are_not_traced_by_environment_tracing(engine, photo, monkeypatch):
    """LangSmith tracing (on by LANGSMITH_TRACING, or tracing_context) would trace a retriever
    nested in the wrapped one as a run of its own, with its original documents."""
    import langchain_core.tracers.langchain as tracers
    from langchain_core.tracers.base import BaseTracer
    from langsmith.run_helpers import tracing_context

    original_b64 = base64.b64encode(photo.read_bytes()).decode()
    runs: list[str] = []

    class Collect(BaseTracer):
        def _persist_run(self, run):
            runs.append(str(run.outputs))

    # the tracer LangChain adds by itself when tracing is on (it would post the runs)
    monkeypatch.setattr(tracers, "LangChainTracer", lambda *a, **k: Collect())

    class Nested(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            inner = ListRetriever(docs=[Document(page_content=original_b64, metadata={"source": str(photo)})])
            return inner.invoke(query, config={"callbacks": run_manager.get_child()})

    wrapped = FaceAnonymizingRetriever(retriever=Nested(), anonymizer=FaceAnonymizerCompressor(engine=engine))
    with tracing_context(enabled=True):
        (out,) = wrapped.invoke("q")
    assert original_b64[4000:4200] not in out.page_content
    assert runs  # the wrapper's own run was traced, with anonymized documents only
    assert all(original_b64[4000:4200] not in r and str(photo) not in r for r in runs)


def test_retrieved_image_documents_go_through_the_engine_as_one_batch(make_engine, astronaut, monkeypatch):
    engine = make_engine(rotations=(0,), cache_size=16)
    docs = []
    for shift in range(4):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(astronaut[shift * 8:, shift * 4:])).save(buffer, "PNG")
        docs.append(Document(page_content=base64.b64encode(buffer.getvalue()).decode(), metadata={"i": shift}))
    batches, detections = [], []
    many, detect = engine.anonymize_many, engine.detector.detect
    monkeypatch.setattr(engine, "anonymize_many", lambda images, **kw: batches.append(len(images)) or many(images, **kw))
    monkeypatch.setattr(engine.detector, "detect", lambda pixels: detections.append(1) or detect(pixels))
    out = FaceAnonymizerCompressor(engine=engine).compress_documents(docs, "who is this?")
    assert batches == [4] and len(detections) == 4
    assert [d.metadata["i"] for d in out] == [0, 1, 2, 3]
    for got, doc in zip(out, docs, strict=True):
        assert _face_changed(_decoded(got.page_content), _decoded(doc.page_content))


def test_photo_metadata_a_loader_copied_out_is_not_handed_on(compressor, astronaut):
    doc = Document(page_content="figure", metadata={
        "image_base64": _jpeg_b64(astronaut, "JPEG"), "exif": {"GPSInfo": {"GPSLatitude": 48.85837}},
        "GPSLongitude": 2.294481, "title": "crew", "pages": [{"n": 1, "location": "Paris"}],
    })
    (out,) = compressor.compress_documents([doc], "q")
    assert set(out.metadata) == {"image_base64", "title", "pages", "idmrag_report"}
    assert out.metadata["pages"] == [{"n": 1}]
    assert sorted(out.metadata["idmrag_report"]["removed_metadata"]) == ["GPSLongitude", "exif", "pages.location"]
    assert "48.85" not in repr(out.metadata) and "2.29" not in repr(out.metadata)


def test_images_embedded_in_text_are_anonymized_in_place(compressor, astronaut):
    """A Markdown or HTML chunk can carry the photo itself as a data URI, in its text or in a
    metadata string: the model would receive the original."""
    b64 = _jpeg_b64(astronaut)
    text = f"The crew.\n![portrait](data:image/jpeg;base64,{b64})\nTaken at launch."
    html = f'<p>crew</p><img src="DATA:image/JPEG;name=crew.jpg;base64,{b64}">'  # parameters, any case
    doc = Document(page_content=text, metadata={"html": html})
    (out,) = compressor.compress_documents([doc], "q")
    assert b64[:500] not in out.page_content and b64[:500] not in repr(out.metadata)
    assert out.page_content.startswith("The crew.\n![portrait](data:image/jpeg;base64,")
    assert out.page_content.endswith(")\nTaken at launch.")
    anonymized = out.page_content.split("base64,")[1].split(")")[0]
    assert _face_changed(_decoded(anonymized), astronaut)
    assert out.metadata["html"].startswith('<p>crew</p><img src="data:image/jpeg;base64,')
    assert [r["status"] for r in out.metadata["idmrag_report"]] == ["anonymized", "anonymized"]
    broken = Document(page_content="see ![x](data:image/png;base64,AAAAAAAA) here")
    assert compressor.compress_documents([broken], "q") == []  # not an image: withheld, never passed on


def test_model_boundary_guard_anonymizes_images_embedded_in_text(engine, photo, astronaut):
    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    b64 = base64.b64encode(photo.read_bytes()).decode()
    guard = FaceAnonymizingGuard(anonymizer=FaceAnonymizerCompressor(engine=engine))
    text = f"Context:\n![crew](data:image/jpeg;base64,{b64})\nand ![bad](data:image/png;base64,AAAAAAAA) end"
    for message in (HumanMessage(content=text), HumanMessage(content=[{"type": "text", "text": text}])):
        reply = (guard | ParrotFakeChatModel()).invoke([message])
        sent = reply.content if isinstance(reply.content, str) else reply.content[0]["text"]
        assert b64[:500] not in sent and sent.startswith("Context:\n![crew](data:image/jpeg;base64,")
        assert _face_changed(_decoded(sent.split("base64,")[1].split(")")[0]), astronaut)
        assert "withheld" in sent and "png;base64,AAAAAAAA" not in sent and sent.endswith(" end")  # the unreadable one


def test_in_memory_images_in_metadata_are_anonymized_in_kind(compressor, astronaut):
    """Custom loaders keep PIL images or pixel arrays in metadata; they are photos too."""
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 200, np.uint8)])
    embedding = np.linspace(0, 1, 128).astype(np.float32)
    doc = Document(page_content="caption", metadata={
        "image": astronaut, "pil": Image.fromarray(astronaut), "grey": astronaut[..., 0].copy(), "rgba": rgba,
        "embedding": embedding, "tiny_mask": np.ones((4, 4), np.uint8),
    })
    (out,) = compressor.compress_documents([doc], "q")
    meta = out.metadata
    assert isinstance(meta["pil"], Image.Image) and meta["image"].shape == astronaut.shape
    assert meta["grey"].shape == astronaut.shape[:2] and meta["rgba"].shape == rgba.shape
    for key in ("image", "pil", "rgba"):
        assert _face_changed(np.asarray(meta[key])[..., :3].astype(int), astronaut)
    grey = astronaut[..., 0].astype(int)
    face = (slice(90, 150), slice(195, 255))
    assert np.abs(meta["grey"].astype(int)[face] - grey[face]).mean() > 20
    # what the engine judged (composited onto white), opaque: the original's alpha is not passed on
    assert (meta["rgba"][..., 3] == 255).all()
    assert meta["embedding"] is embedding and meta["tiny_mask"].shape == (4, 4)  # not images
    assert len(meta["idmrag_report"]) == 4


@pytest.mark.parametrize("kind", ["float01", "float255", "uint16", "normalised", "grey_alpha"])
def test_array_images_of_any_type_are_anonymized_in_kind(compressor, astronaut, kind):
    """Pipelines keep photos as float arrays (in [0, 1], in [0, 255], or normalised as a vision
    model's input), 16-bit arrays, grey with alpha: each is a photo, and comes back anonymized
    in its own shape, type and value range."""
    pixels = astronaut.astype(np.float32)
    made = {
        "float01": pixels / 255.0,
        "float255": pixels,
        "uint16": astronaut.astype(np.uint16) * 257,
        "normalised": (pixels / 255.0 - 0.45) / 0.27,
        "grey_alpha": np.dstack([astronaut.mean(axis=2).astype(np.uint8), np.full(astronaut.shape[:2], 255, np.uint8)]),
    }[kind]
    doc = Document(page_content="caption", metadata={"photo": made})
    (out,) = compressor.compress_documents([doc], "q")
    returned = out.metadata["photo"]
    assert isinstance(returned, np.ndarray) and returned.shape == made.shape and returned.dtype == made.dtype
    low, high = float(made.min()), float(made.max())
    assert returned.min() >= low - 1e-6 and returned.max() <= high + 1e-6
    seen = (returned.astype(np.float64) - low) / (high - low) * 255.0  # back on the 8-bit scale
    original = (made.astype(np.float64) - low) / (high - low) * 255.0
    if kind == "grey_alpha":
        assert (returned[..., 1] == 255).all()
        seen, original = seen[..., :1].repeat(3, axis=2), original[..., :1].repeat(3, axis=2)
    assert _face_changed(seen, original)
    assert out.metadata["idmrag_report"]["status"] == "anonymized"


def test_pixels_kept_as_nested_lists_are_anonymized_in_kind(compressor, astronaut):
    """``array.tolist()`` makes a photo JSON-friendly; it is the photo still."""
    doc = Document(page_content="caption", metadata={"pixels": astronaut.tolist(), "scores": [[0.1, 0.2]] * 20})
    (out,) = compressor.compress_documents([doc], "q")
    pixels = out.metadata["pixels"]
    assert isinstance(pixels, list) and isinstance(pixels[0][0][0], int)
    assert np.asarray(pixels).shape == astronaut.shape
    assert _face_changed(np.asarray(pixels), astronaut)
    assert out.metadata["scores"] == [[0.1, 0.2]] * 20


def test_torch_tensor_photos_are_anonymized_in_kind(compressor, astronaut):
    """A vision model's input kept beside a document: channels first, normalised, or a batch
    of one; a tensor that is no image (an embedding) passes as it is."""
    import torch

    chw = (torch.from_numpy(astronaut).permute(2, 0, 1).float() / 255.0 - 0.45) / 0.27
    embedding = torch.linspace(0, 1, 512)
    doc = Document(page_content="caption", metadata={"chw": chw, "batch": chw[None].half(),
                                                     "hwc": torch.from_numpy(astronaut), "embedding": embedding})
    (out,) = compressor.compress_documents([doc], "q")
    meta = out.metadata
    assert meta["embedding"] is embedding
    for key, layout in (("chw", "chw"), ("batch", "nchw"), ("hwc", "hwc")):
        got, made = meta[key], doc.metadata[key]
        assert isinstance(got, torch.Tensor) and got.shape == made.shape and got.dtype == made.dtype, key
        pixels = got.float().numpy()
        pixels = pixels[0] if layout == "nchw" else pixels
        pixels = pixels.transpose(1, 2, 0) if layout != "hwc" else pixels
        low, high = float(made.float().min()), float(made.float().max())
        assert _face_changed((pixels - low) / (high - low) * 255.0, astronaut.astype(float)), key


def test_batches_of_photos_in_one_array_or_tensor_are_anonymized_frame_by_frame(compressor, astronaut):
    import torch

    frames = np.stack([astronaut, astronaut[:, ::-1].copy(), astronaut])
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    doc = Document(page_content="clip", metadata={"frames": frames, "tensor": tensor})
    (out,) = compressor.compress_documents([doc], "q")
    got, got_tensor = out.metadata["frames"], out.metadata["tensor"]
    assert got.shape == frames.shape and got.dtype == frames.dtype
    assert got_tensor.shape == tensor.shape and got_tensor.dtype == tensor.dtype
    for index in (0, 2):
        assert _face_changed(got[index].astype(int), astronaut)
        assert _face_changed((got_tensor[index].permute(1, 2, 0).numpy() * 255.0).astype(int), astronaut)
    assert _face_changed(got[1][:, ::-1].astype(int), astronaut)


def test_arrays_that_are_not_images_pass_and_unreadable_array_images_are_withheld(compressor, astronaut):
    embeddings = np.random.default_rng(0).normal(size=(40, 768)).astype(np.float32)
    tokens = np.arange(4 * 512, dtype=np.int64).reshape(4, 512)
    doc = Document(page_content="caption", metadata={"embeddings": embeddings, "tokens": tokens})
    (out,) = compressor.compress_documents([doc], "q")
    assert out.metadata["embeddings"] is embeddings and out.metadata["tokens"] is tokens
    broken = astronaut.astype(np.float32) / 255.0
    broken[0, 0, 0] = np.nan  # a photo still, which cannot be read: withheld, never passed on
    assert compressor.compress_documents([Document(page_content="x", metadata={"photo": broken})], "q") == []


def test_a_face_hidden_in_an_arrays_alpha_channel_is_not_passed_on(compressor, astronaut):
    """An RGBA array whose colour is black and whose alpha channel is a face: the face is the
    alpha channel's data; the anonymized array must not carry it back."""
    grey = astronaut.mean(axis=2).astype(np.uint8)
    hidden = np.dstack([np.zeros_like(astronaut), grey])
    doc = Document(page_content="caption", metadata={"image": hidden})
    (out,) = compressor.compress_documents([doc], "q")
    returned = out.metadata["image"]
    assert returned.shape == hidden.shape
    assert (returned[..., 3] == 255).all()
    face = (slice(90, 150), slice(195, 255))
    for channel in range(4):
        values = returned[..., channel][face].ravel().astype(float)
        assert values.std() == 0 or abs(np.corrcoef(values, grey[face].ravel().astype(float))[0, 1]) < 0.9


def test_model_boundary_guard_judges_file_and_document_blocks_by_what_they_hold(engine, photo, astronaut):
    """A photo in a file block declared as a PDF is still a photo; a PDF, a provider's file id
    or a file URL can hold photos the engine cannot reach and is withheld unless the app says
    otherwise; plain-text documents pass in every provider's format."""
    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    raw = photo.read_bytes()
    b64 = base64.b64encode(raw).decode()
    pdf = base64.b64encode(b"%PDF-1.4\n1 0 obj << /Subtype /Image >> stream\n" + raw + b"\nendstream").decode()
    notes = base64.b64encode(b"Meeting notes, no pictures.").decode()
    blocks = [
        {"type": "file", "base64": b64, "mime_type": "application/pdf"},  # a photo, mislabelled
        {"type": "file", "base64": pdf, "mime_type": "application/pdf"},
        {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{pdf}", "filename": "a.pdf"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}},
        {"type": "input_file", "file_id": "file-abc"},
        {"type": "file", "url": "https://example.org/report.pdf"},
        {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{b64}", "filename": "x.pdf"}},
        {"type": "file", "base64": notes, "mime_type": "text/plain"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes"}},
    ]
    message = HumanMessage(content=blocks)
    sent = FaceAnonymizingGuard(engine=engine).invoke([message])[0].content
    assert _face_changed(_decoded(sent[0]["base64"]), astronaut)
    assert _face_changed(_decoded(sent[6]["file"]["file_data"].split("base64,")[1]), astronaut)
    for index in range(1, 6):
        assert sent[index]["type"] == "text" and "document withheld" in sent[index]["text"], index
    assert sent[7] == blocks[7] and sent[8] == blocks[8]
    assert b64[4000:4200] not in str(sent) and pdf[400:600] not in str(sent)
    opened = FaceAnonymizingGuard(engine=engine, withhold_documents=False).invoke([message])[0].content
    assert opened[1] == blocks[1]  # the app's choice, said out loud


def test_model_boundary_guard_anonymizes_images_in_tool_call_arguments(engine, photo, astronaut):
    """An assistant turn's tool calls go back to the model with the conversation (OpenAI's
    ``tool_calls``, Anthropic's ``tool_use`` input), and so do the provider kwargs they came in."""
    import json

    from langchain_core.messages import AIMessage, ToolMessage

    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    b64 = base64.b64encode(photo.read_bytes()).decode()
    uri = f"data:image/jpeg;base64,{b64}"
    turn = AIMessage(
        content="",
        tool_calls=[{"name": "show", "args": {"photo": uri, "caption": "crew"}, "id": "call-1"}],
        invalid_tool_calls=[{"name": "show", "args": json.dumps({"photo": uri}) + "}", "id": "call-2", "error": "bad json"}],
        additional_kwargs={"tool_calls": [{"id": "call-1", "type": "function",
                                           "function": {"name": "show", "arguments": json.dumps({"photo": uri})}}]},
    )
    sent = FaceAnonymizingGuard(engine=engine).invoke([HumanMessage(content="show me"), turn,
                                                       ToolMessage(content="shown", tool_call_id="call-1")])[1]
    assert b64[4000:4200] not in str(sent.tool_calls) + str(sent.invalid_tool_calls) + str(sent.additional_kwargs)
    assert sent.tool_calls[0]["args"]["caption"] == "crew" and sent.tool_calls[0]["id"] == "call-1"
    assert _face_changed(_decoded(sent.tool_calls[0]["args"]["photo"]), astronaut)
    arguments = json.loads(sent.additional_kwargs["tool_calls"][0]["function"]["arguments"])
    assert _face_changed(_decoded(arguments["photo"]), astronaut)
    assert turn.tool_calls[0]["args"]["photo"] == uri  # the caller's message is untouched


def test_bare_base64_photos_in_text_are_anonymized_at_the_guard_and_the_compressor(engine, compressor, photo, astronaut):
    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    b64 = base64.b64encode(photo.read_bytes()).decode()
    text = f"The crew photo, base64: {b64} (end)"
    for sent in (FaceAnonymizingGuard(engine=engine).invoke([HumanMessage(content=text)])[0].content,
                 compressor.compress_documents([Document(page_content=text)], "q")[0].page_content):
        assert b64[4000:4200] not in sent and sent.startswith("The crew photo, base64: ") and sent.endswith(" (end)")
        assert _face_changed(_decoded(sent[len("The crew photo, base64: "):-len(" (end)")]), astronaut)


def test_photos_in_any_reversible_text_encoding_are_anonymized(engine, photo, astronaut):
    """URL-safe base64, percent-encoded base64 and percent-encoded raw bytes are the photo as
    surely as standard base64 (browsers render the percent-encoded data URIs): in text and in
    image blocks alike."""
    import ast
    import json
    import urllib.parse

    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    raw = photo.read_bytes()
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    encodings = {
        "urlsafe": f"data:image/jpeg;base64,{urlsafe}",
        "percent": "data:image/jpeg;base64," + urllib.parse.quote(base64.b64encode(raw).decode(), safe=""),
        "raw": "data:image/jpeg," + urllib.parse.quote_from_bytes(raw, safe=""),
    }
    guard = FaceAnonymizingGuard(engine=engine)
    for name, uri in encodings.items():
        text = guard.invoke([HumanMessage(content=f'<img src="{uri}"> and bare {urlsafe} end')])[0].content
        block = guard.invoke([HumanMessage(content=[{"type": "image_url", "image_url": {"url": uri}}])])[0].content[0]
        assert urlsafe[4000:4200] not in text and uri[4000:4200] not in text, name
        html, bare = text[len('<img src="'):].split('"> and bare ')
        for payload in (html.split("base64,")[1], bare[: -len(" end")], block["image_url"]["url"].split("base64,")[1]):
            assert _face_changed(_decoded(payload), astronaut), name
    dump = guard.invoke([HumanMessage(content=f"bytes: {raw.hex()} (done)")])[0].content  # a tool's hex dump
    assert raw.hex()[4000:4200] not in dump and dump.endswith(" (done)")
    anonymized = bytes.fromhex(dump[len("bytes: "):-len(" (done)")])
    assert _face_changed(_decoded(base64.b64encode(anonymized).decode()), astronaut)
    printed = guard.invoke([HumanMessage(content=f"tool returned {raw!r} (done)")])[0].content  # str() of bytes
    assert repr(raw)[4000:4200] not in printed and printed.startswith("tool returned b") and printed.endswith(" (done)")
    anonymized = ast.literal_eval(printed[len("tool returned "):-len(" (done)")])
    assert _face_changed(_decoded(base64.b64encode(anonymized).decode()), astronaut)
    escaped = '{"photo": "data:image\\/jpeg;base64,' + base64.b64encode(raw).decode().replace("/", "\\/") + '"}'
    sent = guard.invoke([HumanMessage(content=escaped)])[0].content  # JSON whose encoder escapes slashes
    assert sent.startswith('{"photo": "data:image/') and sent.endswith('"}')
    assert _face_changed(_decoded(json.loads(sent)["photo"].split("base64,")[1]), astronaut)


def test_model_boundary_guard_anonymizes_openai_style_dict_messages(engine, photo, astronaut):
    """Chat models take ``{"role": ..., "content": ...}`` dicts as readily as message objects;
    the guard passed them on untouched."""
    import json

    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    b64 = base64.b64encode(photo.read_bytes()).decode()
    uri = f"data:image/jpeg;base64,{b64}"
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "who?"}, {"type": "image_url", "image_url": {"url": uri}}]},
        {"role": "user", "content": uri},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "show", "arguments": json.dumps({"photo": uri})}}]},
    ]
    sent = FaceAnonymizingGuard(engine=engine).invoke(messages)
    assert b64[4000:4200] not in str(sent)
    assert sent[0]["role"] == "user" and sent[0]["content"][0] == {"type": "text", "text": "who?"}
    assert _face_changed(_decoded(sent[0]["content"][1]["image_url"]["url"]), astronaut)
    assert _face_changed(_decoded(sent[1]["content"]), astronaut)
    arguments = json.loads(sent[2]["tool_calls"][0]["function"]["arguments"])
    assert _face_changed(_decoded(arguments["photo"]), astronaut)
    reply = (FaceAnonymizingGuard(engine=engine) | ParrotFakeChatModel()).invoke(messages[:1])
    assert b64[4000:4200] not in str(reply.content)


def test_model_boundary_guard_anonymizes_images_nested_in_other_blocks(engine, photo, astronaut):
    """Anthropic-style tool results carry image blocks inside their content."""
    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    b64 = base64.b64encode(photo.read_bytes()).decode()
    guard = FaceAnonymizingGuard(anonymizer=FaceAnonymizerCompressor(engine=engine))
    block = {"type": "tool_result", "tool_use_id": "t1", "content": [
        {"type": "text", "text": "the photo"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": b64}},
    ], "meta": {"preview": f"data:image/jpeg;base64,{b64}", "origin": str(photo)}}
    (guarded,) = guard.invoke([HumanMessage(content=[block])])
    (out,) = guarded.content
    assert out["tool_use_id"] == "t1" and out["content"][0] == {"type": "text", "text": "the photo"}
    assert _face_changed(_decoded(out["content"][1]["source"]["data"]), astronaut)
    assert _face_changed(_decoded(out["meta"]["preview"]), astronaut) and out["meta"]["origin"] == ""
    assert b64[:500] not in str(guarded.content) and str(photo) not in str(guarded.content)
    assert block["content"][1]["source"]["data"] == b64  # the caller's message is untouched


def test_a_document_whose_content_is_an_image_path_or_url_hands_on_the_anonymized_image(compressor, photo, astronaut):
    (out,) = compressor.compress_documents([Document(page_content=str(photo))], "q")
    assert out.page_content.startswith("data:image/jpeg;base64,") and str(photo) not in repr(out)
    assert _face_changed(_decoded(out.page_content), astronaut)
    assert compressor.compress_documents([Document(page_content="ftp://host/alice.jpg")], "q") == []


def test_ids_and_links_that_spell_the_original_never_travel_on(compressor, photo):
    """A document id that is the image's path or URL is replaced by a stable stand-in, and
    links to images inside text (which the engine never saw) are removed."""
    location = str(photo.parent / "Jane_Doe_0001.png")
    doc = Document(page_content="caption", metadata={"image_path": str(photo), "file_name": "Jane_Doe_0001.png"},
                   id=location)
    linked = Document(page_content="Read this: ![Jane](https://example.com/Jane_Doe.jpg)", id="doc-2")
    named = Document(page_content="no image here", id="https://example.com/people/Jane_Doe_0003.jpg")
    out = compressor.compress_documents([doc, linked, named], "q")
    again = compressor.compress_documents([doc], "q")
    assert [o.id for o in again] == [out[0].id]
    assert out[1].id == "doc-2"
    for item in out:
        assert "Jane_Doe" not in item.model_dump_json()
    assert "id" in out[0].metadata["idmrag_report"]["removed_locations"]
    assert out[1].page_content == "Read this: [image link removed by idmrag-plugin: Jane]"
    assert out[2].page_content == "no image here" and out[2].id.startswith("idmrag-")


def test_guard_notes_to_the_model_name_no_url(engine):
    from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard

    guard = FaceAnonymizingGuard(anonymizer=FaceAnonymizerCompressor(engine=engine, fetch_urls=False))
    message = HumanMessage(content=[
        {"type": "image_url", "image_url": {"url": "https://example.com/people/Jane_Doe_0001.jpg"}},
        {"type": "text", "text": "and ![her](https://example.com/people/Jane_Doe_0002.jpg)"},
    ])
    (out,) = guard.invoke([message])
    assert "Jane_Doe" not in str(out.content) and "Jane_Doe" not in str(out.response_metadata)
    assert "withheld by idmrag-plugin" in out.content[0]["text"]
    assert out.content[1]["text"] == "and [image link removed by idmrag-plugin: her]"
