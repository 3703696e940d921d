"""A LangChain multimodal RAG chatbot over a folder of photos, with faces anonymized.

Offline by default: captions ranked by a hashed bag-of-words embedding and a mock chat
model that writes the images it received to --out. With --llm openai:MODEL (needs
langchain-openai and OPENAI_API_KEY) or ollama:MODEL (langchain-ollama) a real model answers.

    python examples/langchain_chatbot.py "who is using a camera?"
"""

from __future__ import annotations

import argparse
import base64
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _offline import caption_for, describe_received, embed_text, sample_folder, save_received
from langchain_core.documents import Document
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda

from idmrag_plugin.integrations.langchain import FaceAnonymizingRetriever
from idmrag_plugin.integrations.langchain_guard import FaceAnonymizingGuard


class CaptionRetriever(BaseRetriever):
    """Documents whose page_content is a base64 photo (the Chroma convention)."""

    docs: list[Document]
    captions: list[str]
    top_k: int = 2

    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        scores = np.stack([embed_text(c) for c in self.captions]) @ embed_text(query)
        return [self.docs[i] for i in np.argsort(-scores)[: self.top_k]]


class ShowWhatIGotChatModel(BaseChatModel):
    out_dir: str = "out/langchain_chatbot"

    @property
    def _llm_type(self) -> str:
        return "show-what-i-got"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        images, texts = [], []
        for message in messages:
            for block in message.content if isinstance(message.content, list) else [message.content]:
                if isinstance(block, dict) and block.get("type") == "image_url":
                    images.append(block["image_url"]["url"])
                else:
                    texts.append(str(block))
        paths = save_received(images, Path(self.out_dir))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=describe_received(paths, texts)))])


def to_messages(inputs: dict) -> list[HumanMessage]:
    blocks: list[dict] = [{"type": "text", "text": f"Question: {inputs['question']}\nAnswer from these photos."}]
    for doc in inputs["docs"]:
        mime = doc.metadata.get("image_mimetype", "image/jpeg")
        blocks.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{doc.page_content}"}})
    return [HumanMessage(content=blocks)]


def build_model(spec: str, out_dir: str) -> BaseChatModel:
    if spec == "mock":
        return ShowWhatIGotChatModel(out_dir=out_dir)
    provider, _, model = spec.partition(":")
    if provider == "openai":
        from langchain_openai import ChatOpenAI  # pip install langchain-openai

        return ChatOpenAI(model=model or "gpt-4o-mini")
    if provider == "ollama":
        from langchain_ollama import ChatOllama  # pip install langchain-ollama

        return ChatOllama(model=model or "llava")
    raise SystemExit(f"unknown --llm {spec!r}: use mock, openai:MODEL or ollama:MODEL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="?", default="Who is using a camera?")
    parser.add_argument("--photos", help="folder of photos (default: scikit-image samples)")
    parser.add_argument("--llm", default="mock", help="mock, openai:MODEL or ollama:MODEL")
    parser.add_argument("--out", default="out/langchain_chatbot", help="where received images go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    folder = Path(args.photos) if args.photos else sample_folder(Path(tempfile.gettempdir()) / "idmrag_photos")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    docs = [Document(page_content=base64.b64encode(p.read_bytes()).decode(), metadata={"source": str(p)}) for p in photos]
    base = CaptionRetriever(docs=docs, captions=[caption_for(p) for p in photos])
    retriever = FaceAnonymizingRetriever(retriever=base)  # the one line
    chain = (
        {"docs": retriever, "question": RunnableLambda(lambda q: q)}
        | RunnableLambda(to_messages)
        # the model boundary: whatever reaches the model is anonymized (shares the engine)
        | FaceAnonymizingGuard(anonymizer=retriever.anonymizer).wrap(build_model(args.llm, args.out))
    )
    print(chain.invoke(args.question).content)


if __name__ == "__main__":
    main()
