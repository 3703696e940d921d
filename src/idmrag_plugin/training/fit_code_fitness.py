"""``idmrag fit-code-fitness``: fit the probe that reads from a pseudonym code how likely the
renderer draws it fit (see :mod:`idmrag_plugin.generation.fitness`).

Data: LFW people with a single photo (never a probe or gallery photo of ``idmrag bench``,
which needs two), each anonymized by the default engine with its generator's
``drawing_log`` on: every code the generator draws into a photo's context, with the
unfitness its screens gave the drawing (speckle, washed out, forehead, chin, beard, eyes,
glasses, mouth, gender, age and group as drawn, recognisable to the verifier). A code is fit
at 1 or under. Only the attempts whose candidates the code LCM writes and ranks are fitted on
(the first ``SUITED_ATTEMPTS``).

Prints the area under the ROC curve on people held out (5 folds), then fits on everything and
writes the probe.

    idmrag fit-code-fitness --lfw ../shared/data/lfw --people 500 --output src/idmrag_plugin/data/code_fitness.safetensors
"""

from __future__ import annotations

import argparse
import logging
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from idmrag_plugin.errors import InvalidImageError
from idmrag_plugin.generation.fitness import CodeFitness
from idmrag_plugin.generation.vae_generator import SUITED_ATTEMPTS

logger = logging.getLogger(__name__)


def single_photo_people(lfw: Path, seed: int) -> list[Path]:
    """The photos of the LFW people with one photo, shuffled by ``seed``."""
    photos = sorted((lfw / "images").glob("*/*.jpg"))
    if not photos:
        raise InvalidImageError(f"no LFW photos under {lfw / 'images'}")
    counts = Counter(p.parent.name for p in photos)
    singles = [p for p in photos if counts[p.parent.name] == 1]
    random.Random(seed).shuffle(singles)
    return singles


def logged_drawings(paths: list[Path], people: int, threads: int | None, secret: bytes) -> dict[str, np.ndarray]:
    """The codes the default engine's generator drew into ``people`` photos, with their
    unfitness, pseudonym attempt and photo index."""
    import torch

    from idmrag_plugin import AnonymizerConfig, FaceAnonymizer

    if threads:
        torch.set_num_threads(threads)
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0, threads=threads))
    generator = engine.generator
    generator.secret = secret
    generator.code_fitness_path = None  # the generator's own order, not a probe's
    generator.drawing_log = []
    person: list[int] = []
    for index, path in enumerate(paths[:people]):
        engine.anonymize(path)
        person.extend([index] * (len(generator.drawing_log) - len(person)))
        if (index + 1) % 50 == 0:
            logger.info("%d of %d people anonymized (%d drawings)", index + 1, people, len(person))
    log = generator.drawing_log
    return {"codes": np.asarray([entry[0] for entry in log]), "unfitness": np.asarray([entry[1] for entry in log]),
            "attempt": np.asarray([entry[2] for entry in log]), "person": np.asarray(person)}


def fit_probe(codes: np.ndarray, fit: np.ndarray, C: float) -> CodeFitness:
    from sklearn.linear_model import LogisticRegression

    mean, scale = codes.mean(axis=0), codes.std(axis=0) + 1e-6
    model = LogisticRegression(C=C, max_iter=5000).fit((codes - mean) / scale, fit)
    probe = CodeFitness(mean, scale, model.coef_[0].astype(np.float64), float(model.intercept_[0]), 0.5)
    return replace(probe, split=float(np.median(probe.probability(codes))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="idmrag fit-code-fitness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw"))
    parser.add_argument("--people", type=int, default=500)
    parser.add_argument("--data", type=Path, default=None,
                        help="an .npz of logged drawings to fit on (written by --save-data) instead of drawing them")
    parser.add_argument("--save-data", type=Path, default=None, help="write the logged drawings here (.npz)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--C", type=float, default=0.03, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--secret", default="engine-fit", help="the engine's pseudonym secret while drawing")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    if args.data is not None:
        with np.load(args.data) as stored:
            data = {key: stored[key] for key in ("codes", "unfitness", "attempt", "person")}
    else:
        paths = single_photo_people(args.lfw, args.seed)
        data = logged_drawings(paths, args.people, args.threads, args.secret.encode())
        if args.save_data is not None:
            np.savez(args.save_data, **data)
    ranked = data["attempt"] < SUITED_ATTEMPTS
    codes, person = data["codes"][ranked], data["person"][ranked]
    fit = (data["unfitness"][ranked] <= 1.0).astype(int)
    if len(np.unique(person)) < 5 or fit.min() == fit.max():
        raise InvalidImageError(f"{len(fit)} drawings of {len(np.unique(person))} people, {fit.sum()} of them fit: "
                                "too few to fit a probe on; anonymize more people (--people)")
    held_out = np.zeros(len(fit))
    for train, test in GroupKFold(5).split(codes, fit, person):
        held_out[test] = fit_probe(codes[train], fit[train], args.C).probability(codes[test])
    logger.info("%d drawings of %d people at attempts under %d, %.1f%% fit; held-out AUC %.3f", len(fit),
                len(np.unique(person)), SUITED_ATTEMPTS, 100 * fit.mean(), roc_auc_score(fit, held_out))
    probe = fit_probe(codes, fit, args.C)
    logger.info("wrote %s", probe.save(args.output))


if __name__ == "__main__":
    main()
