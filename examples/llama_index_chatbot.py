"""A LlamaIndex multimodal RAG chatbot over a folder of photos, with faces anonymized.

Offline by default: captions ranked by a hashed bag-of-words embedding and a mock
multimodal model that writes the images it received to --out. With --llm openai:MODEL
(needs llama-index-llms-openai and OPENAI_API_KEY) a real model answers.

    python examples/llama_index_chatbot.py "who is wearing a space suit?"
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _offline import caption_for, describe_received, embed_text, sample_folder, save_received
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    ImageBlock,
    LLMMetadata,
    TextBlock,
)
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import ImageDocument, NodeWithScore, QueryBundle

from idmrag_plugin.integrations.llama_index import FaceAnonymizerPostprocessor
from idmrag_plugin.integrations.llama_index_llm import FaceAnonymizingLLM


class CaptionRetriever(BaseRetriever):
    """Ranks photo documents by the similarity of their caption to the query."""

    def __init__(self, documents: list[ImageDocument], top_k: int = 2) -> None:
        self.documents = documents
        self.vectors = np.stack([embed_text(d.text) for d in documents])
        self.top_k = top_k
        super().__init__()

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        scores = self.vectors @ embed_text(query_bundle.query_str)
        best = np.argsort(-scores)[: self.top_k]
        return [NodeWithScore(node=self.documents[i], score=float(scores[i])) for i in best]


class ShowWhatIGotLLM(CustomLLM):
    """Mock multimodal chat model: saves the images it receives and describes them."""

    out_dir: str = "out/llama_index_chatbot"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=True)

    def chat(self, messages: list[ChatMessage], **kwargs: Any) -> ChatResponse:
        images, texts = [], []
        for message in messages:
            for block in message.blocks:
                if isinstance(block, ImageBlock):
                    images.append(block.image.decode() if block.image else str(block.url))
                elif isinstance(block, TextBlock):
                    texts.append(block.text)
        paths = save_received(images, Path(self.out_dir))
        return ChatResponse(message=ChatMessage(role="assistant", content=describe_received(paths, texts)))

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text="[mock model] text-only prompt received")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any):
        yield self.complete(prompt)


def build_llm(spec: str, out_dir: str):
    if spec == "mock":
        return ShowWhatIGotLLM(out_dir=out_dir)
    provider, _, model = spec.partition(":")
    if provider == "openai":
        from llama_index.llms.openai import OpenAI  # pip install llama-index-llms-openai

        return OpenAI(model=model or "gpt-4o-mini")
    if provider == "ollama":
        from llama_index.llms.ollama import Ollama  # pip install llama-index-llms-ollama

        return Ollama(model=model or "llava", request_timeout=120)
    raise SystemExit(f"unknown --llm {spec!r}: use mock, openai:MODEL or ollama:MODEL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="?", default="Who is in the photo with the flag?")
    parser.add_argument("--photos", help="folder of photos (default: scikit-image samples)")
    parser.add_argument("--llm", default="mock", help="mock, openai:MODEL or ollama:MODEL")
    parser.add_argument("--out", default="out/llama_index_chatbot", help="where received images go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    folder = Path(args.photos) if args.photos else sample_folder(Path(tempfile.gettempdir()) / "idmrag_photos")
    documents = [
        ImageDocument(image_path=str(p), text=caption_for(p), metadata={"file_path": str(p)})
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    ]
    postprocessor = FaceAnonymizerPostprocessor()
    engine = RetrieverQueryEngine.from_args(
        retriever=CaptionRetriever(documents),
        # the model boundary: whatever reaches the model is anonymized (shares the engine)
        llm=FaceAnonymizingLLM(llm=build_llm(args.llm, args.out), anonymizer=postprocessor),
        multimodal=True,
        node_postprocessors=[postprocessor],  # the one line
    )
    response = engine.query(args.question)
    print(response)
    for node in response.source_nodes:
        faces = node.node.metadata.get("idmrag_report", {}).get("faces", [])
        print(f"  source {node.node.node_id[:8]} score={node.score:.2f}: {len(faces)} face(s) "
              f"{[f['method'] for f in faces]}")


if __name__ == "__main__":
    main()
