"""Why two photos of one person do or do not get one pseudonym, with the default engine.

For LFW people with two or more photos, two random photos are anonymized by one engine (one
session, a fixed pseudonym secret). Each pair is sorted by what the generator did: the registry
found the person again or not, and the two faces were drawn from the same pseudonym code or not
(and if not, whether both were verified at the first attempt, so that the speckle screen chose
another code, or one needed a retry); the oracles (the bench's judges) then say whether the two anonymized faces look like one person.
Only photos where the engine found one face, and the judges a central one, count.

    python benchmarks/pseudonym_consistency.py --lfw ../shared/data/lfw --people 100
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

import numpy as np

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.bench.judges import Judges
from idmrag_plugin.calibration import thresholds_for
from idmrag_plugin.image_io import load_rgb

logger = logging.getLogger("pseudonym_consistency")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--people", type=int, default=100, help="people drawn (those with one face in both photos count)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/pseudonym_consistency.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(args.threads)
    root = Path(args.lfw) / "images"
    people = sorted(p for p in root.iterdir() if len(list(p.glob("*.jpg"))) >= 2)
    rng = random.Random(args.seed)
    people = rng.sample(people, args.people)
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0, threads=args.threads))
    generator = engine.generator
    generator.secret = b"pseudonym-consistency".ljust(32, b"\0")
    asked: list[bytes] = []  # the registered people the generator was asked for
    seed_code = generator._seed_code

    def recording_seed(code, embeddings=None):
        out = seed_code(code, embeddings)
        asked.append(out.tobytes())
        return out

    generator._seed_code = recording_seed
    # every code drawn into a photo, with whether the screens chose it (the last one chosen is
    # the pseudonym pasted: the screens draw and set aside others on the way)
    generator.drawing_log = []
    judges = Judges()
    judges.load()
    thresholds = thresholds_for("far1e-2", ["dlib", "facenet"])
    rows = []
    for person in people:
        a, b = rng.sample(sorted(person.glob("*.jpg")), 2)
        photos = [load_rgb(p, 10**8) for p in (a, b)]
        faces = [judges.subject(photo) for photo in photos]
        if any(f is None for f in faces):
            continue
        runs = []
        codes = []
        for photo in photos:
            asked.clear()
            generator.drawing_log.clear()
            runs.append((engine.anonymize(photo), set(asked)))
            codes.append([code for code, _, _, chosen in generator.drawing_log if chosen])
        if any(len(result.faces) != 1 for result, _ in runs):
            continue
        persons = [people_asked for _, people_asked in runs]
        row = {
            "person": person.name,
            "same_registered_person": bool(persons[0] & persons[1]),
            "same_code": bool(codes[0] and codes[1] and np.allclose(codes[0][-1], codes[1][-1])),
            "attempts": [result.faces[0].attempts for result, _ in runs],
            "methods": [result.faces[0].method for result, _ in runs],
        }
        embeddings = [judges.embed(result.pixels, face) for (result, _), face in zip(runs, faces, strict=True)]
        for name, threshold in thresholds.items():
            row[name] = float(_unit(embeddings[0][name]) @ _unit(embeddings[1][name]))
            row[f"{name}_same"] = row[name] >= threshold
        rows.append(row)
    summary: dict = {"pairs": len(rows)}
    groups = {
        "all": [True] * len(rows),
        "same code": [r["same_code"] for r in rows],
        "same person registered, other code": [r["same_registered_person"] and not r["same_code"] for r in rows],
        # of those: both photos verified at their first attempt (the speckle screen chose
        # another code), or one needed a retry (another attempt's code; or failed closed)
        "  other code, first attempt in both": [r["same_registered_person"] and not r["same_code"]
                                               and r["attempts"] == [1, 1] for r in rows],
        "  other code, after a retry": [r["same_registered_person"] and not r["same_code"]
                                        and r["attempts"] != [1, 1] for r in rows],
        "person not found again": [not r["same_registered_person"] for r in rows],
    }
    for group, members in groups.items():
        chosen = [r for r, m in zip(rows, members, strict=True) if m]
        summary[group] = {"pairs": len(chosen), **{
            f"judged one person ({name})": (float(np.mean([r[f"{name}_same"] for r in chosen])) if chosen else None)
            for name in thresholds}}
        logger.info("%-38s %3d pairs; judged one person: %s", group, len(chosen), ", ".join(
            f"{name} {100 * v:.0f}%" for name in thresholds
            if (v := summary[group][f"judged one person ({name})"]) is not None))
    with open(args.out, "w") as handle:
        json.dump({"command": "python benchmarks/pseudonym_consistency.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "out"), "summary": summary, "pairs": rows},
            handle, indent=2)


if __name__ == "__main__":
    main()
