"""Detection recall on hand-marked scene faces and on the central face of LFW photos.

    python benchmarks/detection_recall.py --data ../shared/data --lfw-images 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import xml.etree.ElementTree as ET
from pathlib import Path

from tqdm import tqdm

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import (
    DlibHOGDetector,
    MTCNNDetector,
    UnionDetector,
    box_iou,
    central_face,
)
from idmrag_plugin.image_io import load_rgb


def scene_recall(detector, root: Path) -> dict:
    found = total = 0
    for node in ET.parse(root / "training.xml").getroot().iter("image"):
        image = load_rgb(root / node.get("file"), 50_000_000)
        detections = detector.detect(image)
        for box in node.iter("box"):
            if box.get("ignore") == "1":
                continue
            x, y, w, h = (float(box.get(k)) for k in ("left", "top", "width", "height"))
            total += 1
            found += any(box_iou(d.box, (x, y, x + w, y + h)) > 0.3 for d in detections)
    return {"found": found, "total": total, "recall": round(found / total, 4)}


def lfw_recall(detector, root: Path, count: int, seed: int) -> dict:
    paths = sorted((root / "images").rglob("*.jpg"))
    random.Random(seed).shuffle(paths)
    found = 0
    for path in tqdm(paths[:count], desc="LFW central faces"):
        image = load_rgb(path, 50_000_000)
        face = central_face(detector.detect(image), image.shape)
        # LFW's deep-funneled subject sits in the centre: the face box must contain it.
        if face and face.box[0] < 125 < face.box[2] and face.box[1] < 125 < face.box[3]:
            found += 1
    return {"found": found, "total": min(count, len(paths)), "recall": round(found / min(count, len(paths)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--lfw-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/detection_recall.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = Path(args.data)
    results = {}
    detectors = {
        "mtcnn (min 20 px)": MTCNNDetector(min_face_size=20),
        "mtcnn (min 12 px) + hog": UnionDetector([MTCNNDetector(min_face_size=12), DlibHOGDetector()]),
        "the default engine's whole search": FaceAnonymizer(AnonymizerConfig(generator="none")).detector,
    }
    for label, detector in detectors.items():
        results[label] = {
            "scenes": scene_recall(detector, data / "scenes"),
            "lfw_central": lfw_recall(detector, data / "lfw", args.lfw_images, args.seed),
        }
        print(label, json.dumps(results[label]))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
