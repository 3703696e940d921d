"""Whether a pseudonym looks like the person's perceived group (UTKFace's labels), judged by a
reader the engine does not use.

The judge is a multinomial logistic regression of UTKFace's ``race`` labels on FaceNet's
embedding of each labelled face (the engine reads the group with dlib's descriptor; FaceNet is
another network, fitted here on other rows). It reads the first photos of ``--pool`` LFW
identities; up to ``--per-group`` of each group it finds are anonymized by the default engine
(a fixed pseudonym secret), and the judge reads the output at the original's landmarks. A
pseudonym agrees when the judge's most probable group is the same for photo and output.

    python benchmarks/group_eval.py --lfw ../shared/data/lfw --utkface ../shared/data/utkface \
        --pool 1500 --per-group 30 --threads 2 --sheet /tmp/groups.png
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.special import softmax

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import MTCNNDetector, central_face
from idmrag_plugin.engine.oracles import build_oracle
from idmrag_plugin.generation.attributes import GROUP_LABELS

logger = logging.getLogger("group_eval")


def fit_judge(utkface: Path, faces: int, seed: int, detector: MTCNNDetector, oracle) -> tuple[np.ndarray, np.ndarray, dict]:
    """Weights (K, D) and biases (K,) of the FaceNet judge, fitted on up to ``faces`` UTKFace
    photos (every label's share kept), and its held-out accuracy and per-label recall."""
    from sklearn.linear_model import LogisticRegression

    rows = []
    with open(utkface / "labels.csv", newline="") as handle:
        rows = [(name, int(race)) for name, _, _, race in list(csv.reader(handle))[1:] if race != ""]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(rows), min(faces, len(rows)), replace=False)
    x, y = [], []
    for index in chosen:
        name, race = rows[index]
        image = np.asarray(Image.open(utkface / "images" / name).convert("RGB"))
        face = central_face(detector.detect(image), image.shape)
        if face is None:
            continue
        x.append(oracle.embed_faces(image, [face.landmarks])[0])
        y.append(race)
    x, y = np.asarray(x, np.float64), np.asarray(y)
    cut = len(x) * 4 // 5
    # balanced: LFW's Black, Asian and Indian faces are few, and a judge that calls them White
    # would count their pseudonyms' group as kept whenever it is drawn White
    predicted = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced").fit(x[:cut], y[:cut]).predict(x[cut:])
    quality = {"faces": len(x), "held_out_accuracy": round(float(np.mean(predicted == y[cut:])), 3),
               "held_out_recall": {name: round(float(np.mean(predicted[y[cut:] == k] == k)), 3)
                                   for k, name in enumerate(GROUP_LABELS) if np.any(y[cut:] == k)}}
    logger.info("FaceNet judge: %s", quality)
    model = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced").fit(x, y)
    return np.ascontiguousarray(model.coef_), model.intercept_, quality


def read(weights: np.ndarray, biases: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """The judge's probabilities (N, K) of each group for embeddings (N, D)."""
    return softmax(np.atleast_2d(embeddings) @ weights.T + biases, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--utkface", default="../shared/data/utkface")
    parser.add_argument("--judge-faces", type=int, default=6000, help="UTKFace photos the judge is fitted on")
    parser.add_argument("--judge-cache", default=None,
                        help="an .npz holding the fitted judge: read when it exists, else written (engines compared alike)")
    parser.add_argument("--pool", type=int, default=1500, help="LFW identities whose first photos are read")
    parser.add_argument("--per-group", type=int, default=30, help="photos anonymized per group the judge finds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--secret", default="group-eval", help="the pseudonym secret")
    parser.add_argument("--sheet", default=None, help="write photo and output faces of each group here")
    parser.add_argument("--sheet-rows", type=int, default=6, help="faces per group on the sheet")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/group_eval.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    lfw, utkface = Path(args.lfw), Path(args.utkface)
    if not (lfw / "images").is_dir() or not (utkface / "labels.csv").is_file():
        raise SystemExit("pass --lfw (LFW's images/) and --utkface (UTKFace's images/ and labels.csv)")
    detector = MTCNNDetector()
    facenet = build_oracle("facenet", threads=args.threads)
    cache = Path(args.judge_cache) if args.judge_cache else None
    if cache is not None and cache.is_file():
        with np.load(cache) as saved:
            weights, biases, quality = saved["weights"], saved["biases"], json.loads(str(saved["quality"]))
    else:
        weights, biases, quality = fit_judge(utkface, args.judge_faces, args.seed, detector, facenet)
        if cache is not None:
            np.savez(cache, weights=weights, biases=biases, quality=json.dumps(quality))
    if args.pool == 0:
        return

    found: dict[int, list[tuple[Path, np.ndarray, np.ndarray]]] = {k: [] for k in range(len(GROUP_LABELS))}
    for folder in sorted(p for p in (lfw / "images").iterdir() if p.is_dir())[: args.pool]:
        path = min(folder.glob("*.jpg"))
        image = np.asarray(Image.open(path).convert("RGB"))
        face = central_face(detector.detect(image), image.shape)
        if face is None:
            continue
        probabilities = read(weights, biases, facenet.embed_faces(image, [face.landmarks]))[0]
        group = int(probabilities.argmax())
        if len(found[group]) < args.per_group:
            found[group].append((path, face.landmarks, probabilities))
    logger.info("photos per group found: %s", {GROUP_LABELS[k]: len(v) for k, v in found.items()})

    from idmrag_plugin.bench.judges import Judges

    judges = Judges(oracle_names=(), age_gender=True)
    engine = FaceAnonymizer(AnonymizerConfig(threads=args.threads))
    engine.generator.secret = args.secret.encode()  # the same pseudonyms for every engine compared
    results, sheet = {}, []
    for group, photos in found.items():
        if not photos:
            continue
        agree, kept, faces, gender_kept, age_errors = [], [], [], [], []
        for number, (path, landmarks, before) in enumerate(photos):
            image = np.asarray(Image.open(path).convert("RGB"))
            result = engine.anonymize(image)
            after = read(weights, biases, facenet.embed_faces(result.pixels, [landmarks]))[0]
            agree.append(int(after.argmax()) == group)
            subject = judges.subject(image)
            if subject is not None and judges.has_age_gender:
                photo, drawn = judges.measure(image, subject), judges.measure(result.pixels, subject)
                if photo.gender is not None and drawn.gender is not None:
                    gender_kept.append(photo.gender == drawn.gender)
                    age_errors.append(abs(photo.age - drawn.age))
            kept.append(float(after[group]))
            faces.append({"photo": f"{path.parent.name}/{path.name}", "drawn_as": GROUP_LABELS[int(after.argmax())],
                          "probability_kept": round(float(after[group]), 3),
                          "methods": [f.method for f in result.faces],
                          "attempts": [f.attempts for f in result.faces]})
            if number < args.sheet_rows:
                x, y = np.asarray(landmarks).reshape(-1, 2).mean(axis=0)
                side = int(2.2 * np.ptp(np.asarray(landmarks).reshape(-1, 2)[:, 0]) + 40)
                box = (int(x) - side, int(y) - side, int(x) + side, int(y) + side)
                tiles = [Image.fromarray(p).crop(box).resize((160, 160)) for p in (image, result.pixels)]
                sheet.append((group, tiles))
        results[GROUP_LABELS[group]] = {
            "count": len(agree), "agreement": round(float(np.mean(agree)), 3),
            "mean_probability_kept": round(float(np.mean(kept)), 3),
            "gender_kept": round(float(np.mean(gender_kept)), 3) if gender_kept else None,
            "age_error_years": round(float(np.mean(age_errors)), 1) if age_errors else None,
            # attempts per face drawn (1: the first drawing verified) and faces failing closed
            "mean_attempts": round(float(np.mean([a for f in faces for a in f["attempts"]] or [0])), 2),
            "obfuscated": sum(m == "obfuscated" for f in faces for m in f["methods"]), "faces": faces}
        logger.info("%s: %d photos, drawn as the same group %.0f%%, probability kept %.2f, gender kept %s, "
                    "age error %s, attempts %.2f", GROUP_LABELS[group], len(agree), 100 * np.mean(agree),
                    np.mean(kept), results[GROUP_LABELS[group]]["gender_kept"],
                    results[GROUP_LABELS[group]]["age_error_years"], results[GROUP_LABELS[group]]["mean_attempts"])
    report = {"pool": args.pool, "per_group": args.per_group, "secret": args.secret, "judge": quality,
              "groups": results}
    output = Path(args.output) if args.output else Path(__file__).parent / "results" / "group_eval.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", output)
    if args.sheet and sheet:
        columns = max(sum(1 for g, _ in sheet if g == k) for k in {g for g, _ in sheet})
        groups = sorted({g for g, _ in sheet})
        canvas = Image.new("RGB", (columns * 330, len(groups) * 160), "white")
        for row, group in enumerate(groups):
            for column, (_, tiles) in enumerate([s for s in sheet if s[0] == group]):
                canvas.paste(tiles[0], (column * 330, row * 160))
                canvas.paste(tiles[1], (column * 330 + 160, row * 160))
        canvas.save(args.sheet)
        logger.info("wrote %s (rows: %s)", args.sheet, ", ".join(GROUP_LABELS[g] for g in groups))


if __name__ == "__main__":
    main()
