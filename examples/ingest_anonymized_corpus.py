"""Anonymize a photo corpus with Ray Data, then index only the anonymized copies with LlamaIndex.

Offline: a hashed bag-of-words embedding of each photo's caption (file name or a .txt
beside it). Swap in CLIP (llama-index-embeddings-clip) for a real multimodal index.

    python examples/ingest_anonymized_corpus.py --photos PHOTOS --out out/corpus "astronaut"
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

from _offline import caption_for, embed_text, sample_folder
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.schema import ImageDocument

from idmrag_plugin.corpus import anonymize_corpus


class HashEmbedding(BaseEmbedding):
    def _get_text_embedding(self, text: str) -> list[float]:
        return embed_text(text).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return embed_text(query).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query", nargs="?", default="portrait of an astronaut")
    parser.add_argument("--photos", help="folder of photos (default: scikit-image samples)")
    parser.add_argument("--out", default="out/corpus")
    parser.add_argument("--actors", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    photos = Path(args.photos) if args.photos else sample_folder(Path(tempfile.gettempdir()) / "idmrag_photos")
    summary = anonymize_corpus(photos, args.out, actors=args.actors)
    print(f"anonymized: {summary.to_dict()}")
    documents: list[Any] = []
    for image in sorted((Path(args.out) / "images").rglob("*.png")):
        # images/astronaut.jpg.png is the output of photos/astronaut.jpg (names keep the source suffix)
        original = photos / image.relative_to(Path(args.out) / "images").with_suffix("")
        # Only the anonymized file and a caption are indexed; the original's path is not.
        documents.append(ImageDocument(image_path=str(image), text=caption_for(original)))
    index = VectorStoreIndex.from_documents(documents, embed_model=HashEmbedding())
    for hit in index.as_retriever(similarity_top_k=2).retrieve(args.query):
        print(f"{hit.score:.2f} {hit.node.image_path} — {hit.node.text}")


if __name__ == "__main__":
    main()
