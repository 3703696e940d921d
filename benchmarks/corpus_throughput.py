"""Images per second of anonymize-corpus (1 and 2 Ray actors) against a plain loop.

    python benchmarks/corpus_throughput.py --src ../shared/data/lfw/images --count 500
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path

from idmrag_plugin import FaceAnonymizer
from idmrag_plugin.corpus import anonymize_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", default="../shared/data/lfw/images")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--out", default="benchmarks/results/corpus_throughput.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp())
    src = work / "src"
    src.mkdir()
    for i, path in enumerate(sorted(Path(args.src).rglob("*.jpg"))[: args.count]):
        shutil.copy(path, src / f"{i:05d}.jpg")
    engine = FaceAnonymizer()
    engine.warmup()
    start = time.perf_counter()
    for path in sorted(src.iterdir()):
        engine.anonymize(path).to_bytes("PNG")
    loop = time.perf_counter() - start
    results = {"images": args.count, "plain loop (1 process) img/s": round(args.count / loop, 1)}
    for actors in (1, 2):
        summary = anonymize_corpus(src, work / f"out{actors}", actors=actors, batch_size=16)
        results[f"ray {actors} actor(s) img/s (incl. Ray start)"] = round(args.count / summary.seconds, 1)
    results["peak RSS of the driver MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(results, indent=2))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
