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
    return FaceAnonymizerCompressor(engine=engine)


def _decoded(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64.split(",")[-1]))).convert("RGB")).astype(int)


def _face_changed(pixels: np.ndarray, original: np.ndarray) -> bool:
    face = (slice(90, 150), slice(195, 255))
    return np.abs(pixels[face] - original[face]).mean() > 20


def _to_message(docs: list[Document]) -> list[HumanMessage]:
    blocks: list[dict] = [{"type": "text", "text": "Answer from these photos."}]
    for doc in docs:
        data = doc.page_content if "image_base64" not in doc.metadata else doc.metadata["image_base64"]
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
        retriever=ListRetriever(docs=docs), anonymizer=FaceAnonymizerCompressor(engine=engine)
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


def test_async_paths_and_child_callbacks(engine, photo, astronaut):
    starts: list[str] = []

    class Record(BaseCallbackHandler):
        def on_retriever_start(self, serialized, query, **kwargs):
            starts.append(query)

    docs = [Document(page_content="p", metadata={"image_path": str(photo)})]
    retriever = FaceAnonymizingRetriever(retriever=ListRetriever(docs=docs), anonymizer=FaceAnonymizerCompressor(engine=engine))
    out = asyncio.run(retriever.ainvoke("q", config={"callbacks": [Record()]}))
    assert _face_changed(_decoded(out[0].metadata["image_base64"]), astronaut)
    assert starts == ["q", "q"]  # the wrapper and, as its child, the wrapped retriever
    out = asyncio.run(FaceAnonymizerCompressor(engine=engine).atransform_documents(docs))
    assert "image_base64" in out[0].metadata
