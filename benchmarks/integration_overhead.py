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
    engine = FaceAnonymizer()
    post = FaceAnonymizerPostprocessor(engine=engine)
    compressor = FaceAnonymizerCompressor(engine=engine)
    node = NodeWithScore(node=ImageNode(image=b64), score=1.0)
    doc = Document(page_content=b64)
    results = {
        "image": "scikit-image astronaut, 512x512 JPEG, one face, default engine (obfuscate)",
        "bare engine.anonymize(bytes) + to_bytes(JPEG) ms": median_ms(lambda: engine.anonymize(raw).to_bytes("JPEG"), args.repeats),
        "llama-index postprocessor, one ImageNode ms": median_ms(lambda: post.postprocess_nodes([node]), args.repeats),
        "langchain compressor, one Document ms": median_ms(lambda: compressor.compress_documents([doc], "q"), args.repeats),
    }
    print(json.dumps(results, indent=2))
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
