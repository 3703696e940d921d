"""``idmrag fit-attribute-probes``: the probes with which the renderer keeps perceived gender
and age (see :mod:`idmrag_plugin.generation.attributes`).

1. ``image``: logistic regression of the labelled faces' gender, and ridge regression of their
   log(1 + age) (UTKFace's labels, in the data), on what ``--reader`` names: dlib's descriptor
   of the face in its photo (``emb_dlib``, cached by ``prepare-data``; default), or the
   identity student's embedding of the crop at the codes model's resolution. A photo's age is
   read by a small network ensemble on the same embedding (``--age-model network``, default;
   :class:`~idmrag_plugin.generation.attributes.AgeNet`): the linear probe stays beside it.
2. ``code``: ``--draws`` codes drawn by the sampler (and ``--face-codes`` training faces' own
   codes, group-balanced) are rendered into the contexts (and with the attribute codes) of random
   training faces; the image probes judge each drawing (pasted
   into its 128 px context, as the engine shows it), and regressions of those verdicts on the
   code give the gender and age the renderer draws.
3. ``image group``: a multinomial logistic regression of the labelled faces' perceived group
   (UTKFace's ``race`` labels, :data:`~idmrag_plugin.generation.attributes.GROUP_LABELS`) on
   dlib's descriptor, read as probabilities; fitted whenever the data has those labels and dlib
   descriptors (even with ``--image-probes``: an earlier fit without it gains one), else kept.
4. ``code tone``: a ridge regression of the training faces' lightness (their cheeks' and nose's
   median L*) on their identity codes, by which pseudonyms of the person's complexion are chosen
   first (:data:`~idmrag_plugin.generation.attributes.TONE_TOLERANCE`).

Each reports its held-out accuracy or error (a fifth of the rows, shuffled). An age probe's
ridge penalty is chosen by cross-validation, and a photo's age reading is held to the labels'
range (1st to 99th percentile). The output records the renderer weights' sha256: refit after
retraining the renderer. ``--code-probes`` refits the image probes only and keeps the code
probes of an earlier fit for the same renderer (a code LCM trained on them stays valid);
``--image-probes`` keeps an earlier fit's image probes (with both, only the tone probe is fitted).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from idmrag_plugin.errors import ConfigError
from idmrag_plugin.generation.attributes import (
    GROUP_LABELS,
    IMAGE_READERS,
    AgeNet,
    AttributeProbes,
    face_lightness,
)

logger = logging.getLogger(__name__)


#: Ridge penalties tried for an age probe (a regression of log(1 + years)).
RIDGE_ALPHAS = (0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0)
#: The labels' percentiles that bound a photo's age reading (see ``AttributeProbes.age_range``).
AGE_RANGE_PERCENTILES = (1.0, 99.0)
#: Ridge penalty of the code tone probe (16k faces, 128-d codes: the penalty hardly matters).
TONE_RIDGE_ALPHA = 1.0


def _ridge_alpha(x: np.ndarray, y: np.ndarray, folds: int = 5) -> float:
    """The largest of ``RIDGE_ALPHAS`` whose cross-validated error (years) is within one
    standard error of the best: on UTKFace the errors of 0.01-10 differ by 0.15 years, but the
    least regularised probe extrapolates furthest on faces unlike its training photos."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    errors = np.array([[np.abs(np.expm1(Ridge(alpha).fit(x[tr], y[tr]).predict(x[te])) - np.expm1(y[te])).mean()
                        for tr, te in KFold(folds, shuffle=True, random_state=0).split(x)] for alpha in RIDGE_ALPHAS])
    means = errors.mean(1)
    best = int(np.argmin(means))
    limit = means[best] + errors[best].std(ddof=1) / np.sqrt(folds)
    return max(alpha for alpha, mean in zip(RIDGE_ALPHAS, means, strict=True) if mean <= limit)


def _held_out_ridge(x: np.ndarray, y: np.ndarray, alpha: float,
                    units: Callable[[np.ndarray], np.ndarray] = np.asarray) -> tuple[np.ndarray, float, float, float]:
    """A ridge regression fitted on 4/5 of the rows to report, then on all: its weights and bias,
    the held-out mean absolute error and that of predicting the mean (both in ``units`` of y)."""
    from sklearn.linear_model import Ridge

    cut = len(x) * 4 // 5
    held_out = np.abs(units(Ridge(alpha).fit(x[:cut], y[:cut]).predict(x[cut:])) - units(y[cut:])).mean()
    guess = np.abs(units(y[:cut]).mean() - units(y[cut:])).mean()
    model = Ridge(alpha).fit(x, y)
    return model.coef_.astype(np.float64), float(model.intercept_), float(held_out), float(guess)


def _ridge(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, float]:
    """Weights and bias of a ridge regression of log(1 + years), its penalty chosen by
    cross-validation (:func:`_ridge_alpha`), fitted on 4/5 of the rows to report, then on all."""
    alpha = _ridge_alpha(x, y) if len(x) >= 50 else RIDGE_ALPHAS[0]
    weight, bias, held_out, guess = _held_out_ridge(x, y, alpha, np.expm1)
    logger.info("%s age probe (ridge alpha %g): %.1f years mean absolute error on %d held-out rows "
                "(%.1f predicting the mean)", what, alpha, held_out, len(x) - len(x) * 4 // 5, guess)
    return weight, bias


def _tone_probe(generator, crops: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights and bias of a ridge regression of the faces' lightness (:func:`face_lightness`)
    on their identity codes, ``rows`` of ``crops`` (in random order), fitted on 4/5 of them to
    report, then on all."""
    codes = np.concatenate([generator.encode(crops[rows[start : start + 256]])[0]
                            for start in range(0, len(rows), 256)]).astype(np.float64)
    weight, bias, held_out, guess = _held_out_ridge(codes, face_lightness(crops[rows]), TONE_RIDGE_ALPHA)
    logger.info("code tone probe: lightness read to %.1f (L*, 0-255) on %d held-out faces (%.1f predicting the mean)",
                held_out, len(rows) - len(rows) * 4 // 5, guess)
    return weight, bias


#: The photo age network (``AgeNet``): members, hidden units, epochs, dropout, weight decay.
AGE_NET_MEMBERS = 5
AGE_NET_HIDDEN = 128
AGE_NET_EPOCHS = 80
AGE_NET_DROPOUT = 0.2
AGE_NET_WEIGHT_DECAY = 1e-3


def _train_age_net(x: np.ndarray, y: np.ndarray, seed: int) -> AgeNet:
    """An :class:`AgeNet` of log(1 + years) ``y`` on embeddings ``x`` (rows L2-normalised inside)."""
    import torch
    from torch import nn

    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    inputs = torch.as_tensor((x - mean) / scale, dtype=torch.float32)
    centre = float(np.mean(y))  # the networks learn the difference from the mean age
    targets = torch.as_tensor(y - centre, dtype=torch.float32)
    members = []
    for member in range(AGE_NET_MEMBERS):
        torch.manual_seed(seed * 1000 + member)
        net = nn.Sequential(nn.Dropout(AGE_NET_DROPOUT), nn.Linear(x.shape[1], AGE_NET_HIDDEN),
                            nn.GELU(approximate="tanh"), nn.Dropout(AGE_NET_DROPOUT), nn.Linear(AGE_NET_HIDDEN, 1))
        optimiser = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=AGE_NET_WEIGHT_DECAY)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, AGE_NET_EPOCHS)
        for _ in range(AGE_NET_EPOCHS):
            order = torch.randperm(len(inputs))
            for start in range(0, len(order), 128):
                batch = order[start : start + 128]
                # smooth L1 on log-years: a mislabelled photo pulls less than under squares
                loss = nn.functional.smooth_l1_loss(net(inputs[batch])[:, 0], targets[batch], beta=0.1)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            schedule.step()
        members.append([t.detach().numpy().astype(np.float64) for t in (net[1].weight, net[1].bias, net[4].weight[0],
                                                                       net[4].bias[0])])
    w1, b1, w2, b2 = (np.stack(parts) for parts in zip(*members, strict=True))
    return AgeNet(mean, scale, w1, b1, w2, b2 + centre)


def _age_net(x: np.ndarray, y: np.ndarray, what: str, seed: int) -> AgeNet:
    """:func:`_train_age_net`, fitted on 4/5 of the rows to report, then on all."""
    cut = len(x) * 4 // 5
    held_out = np.abs(np.expm1(_train_age_net(x[:cut], y[:cut], seed)(x[cut:])) - np.expm1(y[cut:])).mean()
    logger.info("%s age network: %.1f years mean absolute error on %d held-out rows", what, held_out, len(x) - cut)
    return _train_age_net(x, y, seed)


def _logistic(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, float]:
    """Weights and bias of a logistic regression, fitted on 4/5 of the rows, then on all."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        raise ConfigError(f"{what}: only one class among {len(y)} rows; more (or labelled) data is needed")
    cut = len(x) * 4 // 5
    held_out = LogisticRegression(C=1.0, max_iter=3000).fit(x[:cut], y[:cut]).score(x[cut:], y[cut:])
    model = LogisticRegression(C=1.0, max_iter=3000).fit(x, y)
    logger.info("%s gender probe: %.1f%% held-out accuracy on %d rows (%.0f%% label 1)",
                what, 100 * held_out, len(x) - cut, 100 * float(np.mean(y)))
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


#: Inverse regularisation of the group probe (5-fold on UTKFace's 5,983 faces: 0.3 / 1 / 3 / 10
#: gave 80 / 82 / 83 / 84% accuracy, Black faces found 54 / 78 / 80 / 83%).
GROUP_C = 3.0


def _group_probe(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights (K, D) and biases (K,) of a multinomial logistic regression of ``labels`` (0 to
    K-1, K = len(GROUP_LABELS)) on embeddings ``x``, fitted on 4/5 of the rows to report, then on all."""
    from sklearn.linear_model import LogisticRegression

    present = set(np.unique(labels).tolist())
    if present != set(range(len(GROUP_LABELS))):
        raise ConfigError(f"the group probe needs faces of all {len(GROUP_LABELS)} labels; the data has "
                          f"{sorted(present)}")
    cut = len(x) * 4 // 5
    predicted = LogisticRegression(C=GROUP_C, max_iter=5000).fit(x[:cut], labels[:cut]).predict(x[cut:])
    recall = ", ".join(f"{name} {100 * np.mean(predicted[labels[cut:] == k] == k):.0f}%"
                       for k, name in enumerate(GROUP_LABELS) if np.any(labels[cut:] == k))
    logger.info("image group probe: %.1f%% held-out accuracy on %d rows (found: %s)",
                100 * np.mean(predicted == labels[cut:]), len(x) - cut, recall)
    model = LogisticRegression(C=GROUP_C, max_iter=5000).fit(x, labels)
    return model.coef_.astype(np.float64), model.intercept_.astype(np.float64)


def _face_codes(generator, crops: np.ndarray, rows: np.ndarray, count: int, image_group,
                embeddings: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Identity codes (count, D) of ``count`` training faces, drawn so that every perceived group
    (the group probe's most probable reading of the face's dlib descriptor) is as common as
    any other where the data allows (uniformly without a group probe).

    The sampler's codes are nearly all of white-featured faces; the code probes fitted on
    their drawings alone misread the gender the renderer draws for a code of another group,
    which is what a code model conditioned on the group writes (session 27)."""
    weights = np.ones(len(rows))
    if image_group is not None and embeddings is not None:
        weight, bias = image_group
        groups = (embeddings[rows].astype(np.float64) @ weight.T + bias).argmax(1)  # the softmax's argmax
        counts = np.bincount(groups, minlength=len(GROUP_LABELS)).astype(np.float64)
        weights = 1.0 / counts[groups]
        logger.info("face codes drawn group-balanced from %s", ", ".join(
            f"{name} {int(n)}" for name, n in zip(GROUP_LABELS, counts, strict=True)))
    # with replacement: a rare group's faces come back, each drawn into other contexts
    chosen = rng.choice(rows, size=count, replace=True, p=weights / weights.sum())
    return np.concatenate([generator.encode(crops[chosen[start : start + 256]])[0]
                           for start in range(0, count, 256)]).astype(np.float32)


def _kept(path: str | None, which: str, renderer_sha256: str, reader: str) -> AttributeProbes | None:
    """The earlier fit whose ``which`` probes ``--code-probes`` / ``--image-probes`` keep, checked
    to describe this renderer and to judge with this reader; None without one."""
    if path is None:
        return None
    kept = AttributeProbes.load(path)
    if which == "code" and kept.renderer_sha256 != renderer_sha256:
        raise ConfigError(f"{path} describes renderer {kept.renderer_sha256[:12]}, not "
                          f"{renderer_sha256[:12]}; fit the code probes afresh (without --code-probes)")
    if kept.image_reader != reader:
        raise ConfigError(f"{path} judged faces with the {kept.image_reader!r} reader, not {reader!r}; "
                          f"pass --reader {kept.image_reader}, or fit the {which} probes afresh")
    return kept


def fit(args: argparse.Namespace) -> AttributeProbes:
    import torch

    from idmrag_plugin.generation.identity_student import IdentityStudent
    from idmrag_plugin.generation.renderer_generator import RendererGenerator
    from idmrag_plugin.training.data import unpack_crops
    from idmrag_plugin.weights import (
        CODES_VAE_DIR,
        MODEL_CONFIG,
        RENDERER_DIR,
        SAMPLER_FILE,
        packaged,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    renderer_dir = Path(args.renderer) if args.renderer else packaged(RENDERER_DIR)
    generator = RendererGenerator(renderer_dir, Path(args.codes) if args.codes else packaged(CODES_VAE_DIR),
                                  Path(args.sampler) if args.sampler else packaged(SAMPLER_FILE),
                                  refiner_dir=Path(args.refiner) if args.refiner else None)
    data = np.load(args.data, allow_pickle=False)
    crops = unpack_crops(data)
    train = data["split"] == "train"
    sha = json.loads((renderer_dir / MODEL_CONFIG).read_text()).get("sha256", "")
    kept_codes = _kept(args.code_probes, "code", sha, args.reader)
    kept_image = _kept(args.image_probes, "image", sha, args.reader)
    if kept_image is None and "gender" not in data.files:
        raise ConfigError(f"{args.data} has no gender labels (prepare it from UTKFace)")
    generator._load_renderer()  # refuses a renderer of other codes before any work
    generator._load()
    if args.reader == "dlib":
        if "emb_dlib" not in data.files and kept_image is None:  # the drawings' descriptors are measured here
            raise ConfigError(f"{args.data} has no dlib descriptors (emb_dlib); prepare it with `idmrag "
                              "prepare-data --oracles dlib,...`, or fit with --reader student")
        from idmrag_plugin.engine.oracles import build_oracle

        oracle = build_oracle("dlib", threads=args.threads)

        def embed(rows: np.ndarray) -> np.ndarray:
            return data["emb_dlib"][rows].astype(np.float64)

        def embed_drawn(faces: np.ndarray) -> np.ndarray:
            return np.concatenate([oracle.embed_aligned(faces[start : start + 64]) for start in range(0, len(faces), 64)])
    else:
        student = IdentityStudent.load(Path(args.student) if args.student else packaged("identity_student.safetensors"))
        student.eval()
        side = int(generator._model.config.image_size)  # type: ignore[union-attr]

        def embed_drawn(faces: np.ndarray) -> np.ndarray:
            out = []
            with torch.inference_mode():
                for start in range(0, len(faces), 256):
                    small = np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA)
                                      for f in faces[start : start + 256]])
                    out.append(student(torch.as_tensor(small).permute(0, 3, 1, 2).float() / 127.5 - 1.0).numpy())
            return np.concatenate(out)

        def embed(rows: np.ndarray) -> np.ndarray:
            return embed_drawn(crops[rows])
    if kept_image is not None:
        image_gender, image_age = kept_image.image_gender, kept_image.image_age
        age_net, age_range = kept_image.image_age_net, kept_image.age_range
    else:
        labelled = np.where(train & (data["gender"] >= 0) & (data["age"] >= 0))[0] if "age" in data.files else []
        if len(labelled) < 10:
            raise ConfigError(f"{args.data} has too few faces with gender and age labels ({len(labelled)})")
        rng.shuffle(labelled)
        labelled_embeddings = embed(labelled)
        log_ages = np.log1p(data["age"][labelled].astype(np.float64))
        image_gender = _logistic(labelled_embeddings, data["gender"][labelled] == 1, "image")
        image_age = _ridge(labelled_embeddings, log_ages, "image")
        age_net = _age_net(labelled_embeddings, log_ages, "image", args.seed) if args.age_model == "network" else None
        low, high = np.percentile(log_ages, AGE_RANGE_PERCENTILES)
        age_range = (float(low), float(high)) if low < high else None
    image_group = kept_image.image_group if kept_image is not None else None
    if args.reader == "dlib" and "race" in data.files and "emb_dlib" in data.files:
        grouped = np.where(train & (data["race"] >= 0))[0]
        np.random.default_rng([args.seed, 2]).shuffle(grouped)  # its own stream, as the tone probe's
        image_group = _group_probe(embed(grouped), data["race"][grouped].astype(np.int64))
    elif image_group is None:
        logger.warning("%s has no group labels (race) or no dlib descriptors: no group probe; a code model "
                       "conditioned on the perceived group cannot use these probes", args.data)
    # its own stream: the draws below stay those of a fit without it
    code_tone = _tone_probe(generator, crops, np.random.default_rng([args.seed, 1]).permutation(np.where(train)[0]))
    if kept_codes is not None:
        probes = AttributeProbes(image_gender, image_age, kept_codes.code_gender, kept_codes.code_age, sha,
                                 image_reader=args.reader, age_range=age_range, image_age_net=age_net,
                                 code_tone=code_tone, image_group=image_group)
        probes.save(Path(args.output))
        logger.info("wrote %s (code probes kept from %s%s)", args.output, args.code_probes,
                    f", image probes from {args.image_probes}" if kept_image is not None else "")
        return probes
    contexts = rng.choice(np.where(train)[0], args.draws)
    sampler = generator._sampler
    assert sampler is not None
    codes = np.stack([sampler.sample(rng.standard_normal(sampler.means.shape[1]), rng.bytes(16))[0]
                      for _ in range(args.draws)]).astype(np.float32)
    if args.face_codes:
        own = _face_codes(generator, crops, np.where(train)[0], args.face_codes, image_group,
                          data["emb_dlib"] if "emb_dlib" in data.files else None,
                          np.random.default_rng([args.seed, 3]))
        codes = np.concatenate([codes, own])
        contexts = np.concatenate([contexts, np.random.default_rng([args.seed, 4]).choice(np.where(train)[0], len(own))])
    drawings = []
    for start in range(0, len(codes), 64):
        faces = crops[contexts[start : start + 64]]
        _, attr = generator.encode(faces)
        # drawn, refined and blended into the face's context as the engine shows it
        drawings.append(np.stack([
            generator._composite(generator._render(codes[start + j : start + j + 1], face, attr[j : j + 1])[0], face)
            for j, face in enumerate(faces)]))
    drawn = embed_drawn(np.concatenate(drawings)).astype(np.float64)
    gender_drawn = drawn @ image_gender[0] + image_gender[1] > 0
    age_drawn = age_net(drawn) if age_net is not None else drawn @ image_age[0] + image_age[1]
    logger.info("drawn faces read as %.0f%% label 1, median age %.0f", 100 * gender_drawn.mean(),
                float(np.median(np.expm1(age_drawn))))
    codes64 = codes.astype(np.float64)
    probes = AttributeProbes(image_gender, image_age, _logistic(codes64, gender_drawn, "code (as drawn)"),
                             _ridge(codes64, age_drawn, "code (as drawn)"), sha, image_reader=args.reader,
                             age_range=age_range, image_age_net=age_net, code_tone=code_tone,
                             image_group=image_group)
    probes.save(Path(args.output))
    logger.info("wrote %s", args.output)
    return probes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idmrag fit-attribute-probes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help=".npz from idmrag prepare-data with UTKFace's gender and age labels")
    parser.add_argument("--output", required=True, help="attribute probes .safetensors to write")
    parser.add_argument("--renderer", default=None, help="renderer folder (default: the packaged one)")
    parser.add_argument("--codes", default=None, help="codes VAE folder (default: the packaged one)")
    parser.add_argument("--sampler", default=None, help="identity sampler (default: the packaged one)")
    parser.add_argument("--refiner", default=None,
                        help="refiner folder whose redrawing the code probes judge (as in use; default: none, the drawing resized)")
    parser.add_argument("--student", default=None, help="identity student (default: the packaged one)")
    parser.add_argument("--draws", type=int, default=4000, help="codes rendered to fit the code probe")
    parser.add_argument("--face-codes", type=int, default=0,
                        help="training faces' own identity codes rendered besides the sampler's --draws, drawn "
                             "group-balanced (with a group probe), so that the code probes also read codes of "
                             "people the sampler rarely draws")
    parser.add_argument("--reader", choices=IMAGE_READERS, default="dlib",
                        help="what the image probes read: dlib's descriptor of the face, or the identity student's embedding")
    parser.add_argument("--code-probes", default=None,
                        help="attribute probes whose code probes to keep (same renderer): refit the image probes only, "
                             "so that a code LCM trained on those code probes stays valid")
    parser.add_argument("--image-probes", default=None,
                        help="attribute probes whose image probes (and photo age network) to keep: with "
                             "--code-probes, only the code tone probe is fitted")
    parser.add_argument("--age-model", choices=("network", "ridge"), default="network",
                        help="what reads a photo's age: a small network ensemble on the embedding (default), "
                             "or the linear probe alone")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    fit(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
