"""What the framework integrations add over a bare engine call (median of repeated runs).

    python benchmarks/integration_overhead.py --repeats 15
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import time

import skimage.data
from PIL import Image


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/integration_overhead.json")
    args = parser.parse_args()
    from langchain_core.documents import Document
    from llama_index.core.schema import ImageNode, NodeWithScore

    from idmrag_plugin import FaceAnonymizer
    from idmrag_plugin.integrations.langchain import FaceAnonymizerCompressor
    from idmrag_plugin.integrations.llama_index import FaceAnonymizerPostprocessor

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buffer, "JPEG", quality=92)
    raw = buffer.getvalue()
    b64 = base64.b64encode(raw).decode()
    from idmrag_plugin import AnonymizerConfig

    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0))
    post = FaceAnonymizerPostprocessor(engine=engine)
    compressor = FaceAnonymizerCompressor(engine=engine)
    node = NodeWithScore(node=ImageNode(image=b64), score=1.0)
    doc = Document(page_content=b64)
    results = {
        "image": f"scikit-image astronaut, 512x512 JPEG, one face, default engine ({AnonymizerConfig().generator}), result cache off",
        "bare engine.anonymize(bytes) + to_bytes(JPEG) ms": median_ms(lambda: engine.anonymize(raw).to_bytes("JPEG"), args.repeats),
        "llama-index postprocessor, one ImageNode ms": median_ms(lambda: post.postprocess_nodes([node]), args.repeats),
        "langchain compressor, one Document ms": median_ms(lambda: compressor.compress_documents([doc], "q"), args.repeats),
    }
    results.update(retrieval_of_five(args.repeats))
    print(json.dumps(results, indent=2))
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)


def retrieval_of_five(repeats: int) -> dict[str, float]:
    """A LlamaIndex retrieval of 5 one-face 250x250 photos through the postprocessor, then the
    same 5 again (answered by the engine's result cache)."""
    import time

    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.schema import ImageNode, NodeWithScore

    from idmrag_plugin import FaceAnonymizer
    from idmrag_plugin.integrations.llama_index import (
        FaceAnonymizerPostprocessor,
        FaceAnonymizingRetriever,
    )

    astronaut = skimage.data.astronaut()
    photos = []
    for shift in range(5):  # five different photos of one face
        crop = Image.fromarray(astronaut[shift * 20 : shift * 20 + 400, shift * 15 : shift * 15 + 400]).resize((250, 250))
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=92)
        photos.append(base64.b64encode(buffer.getvalue()).decode())

    class Photos(BaseRetriever):
        def _retrieve(self, query_bundle):
            return [NodeWithScore(node=ImageNode(image=b64), score=1.0) for b64 in photos]

    from idmrag_plugin import AnonymizerConfig

    results: dict[str, float] = {}
    for batch_size in (8, 1):  # the five in one batch, then one image at a time
        engine = FaceAnonymizer(AnonymizerConfig(batch_size=batch_size))  # default engine, result cache on
        retriever = FaceAnonymizingRetriever(Photos(), postprocessor=FaceAnonymizerPostprocessor(engine=engine))
        engine.warmup()
        fresh = []
        for _ in range(repeats):
            engine.cache._entries.clear()  # type: ignore[union-attr]
            start = time.perf_counter()
            retriever.retrieve("who is this?")
            fresh.append((time.perf_counter() - start) * 1000)
        name = "llama-index retrieval of 5 one-face 250x250 images, default engine"
        results[f"{name}, batch_size={batch_size} ms"] = round(statistics.median(fresh), 1)
        if batch_size == 8:
            results["the same 5 images again (cache hits) ms"] = median_ms(lambda r=retriever: r.retrieve("who is this?"), repeats)
    return results


if __name__ == "__main__":
    main()
