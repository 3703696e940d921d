"""``idmrag``: anonymize files and folders; calibrate the oracles' thresholds."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from idmrag_plugin.errors import IdmragError

logger = logging.getLogger("idmrag_plugin.cli")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"}
SAMPLE_IMAGES = ("astronaut", "camera")


def _inputs(items: Sequence[str]) -> Iterator[tuple[str, Path | str]]:
    """(relative output stem, source) for every image named or inside a named folder.

    ``sample:astronaut`` and ``sample:camera`` name scikit-image's bundled photos.
    """
    for item in items:
        if item.startswith("sample:"):
            name = item.split(":", 1)[1]
            if name not in SAMPLE_IMAGES:
                raise IdmragError(f"unknown sample {name!r}; choose from {', '.join(SAMPLE_IMAGES)}")
            yield name, item
            continue
        path = Path(item)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                yield str(file.relative_to(path).with_suffix("")), file
        elif path.exists():
            yield path.stem, path
        else:
            raise IdmragError(f"{path} does not exist")


def _unique_stems(jobs: list[tuple[str, Path | str]]) -> list[tuple[str, Path | str]]:
    """Keep outputs apart when two inputs share a stem (photo.jpg and photo.png)."""
    seen: dict[str, int] = {}
    unique = []
    for stem, source in jobs:
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        unique.append((stem if count == 0 else f"{stem}_{count}", source))
    return unique


def _load_sample(name: str):
    import skimage.data

    return getattr(skimage.data, name)()


def cmd_anonymize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from idmrag_plugin.config import AnonymizerConfig
    from idmrag_plugin.pipeline import FaceAnonymizer

    config = AnonymizerConfig(
        detector=args.detector,
        min_face_size=args.min_face_size,
        rotations=tuple(int(a) for a in args.rotations.split(",")),
        privacy_level=args.privacy_level,
        on_failure=args.on_failure,
        max_attempts=args.max_attempts,
        generator=args.generator,
        generator_steps=args.generator_steps,
        generator_weights=Path(args.generator_weights) if args.generator_weights else None,
        output_format=args.format,
        device=args.device,
    )
    engine = FaceAnonymizer(config)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[config.output_format]
    jobs = _unique_stems(list(_inputs(args.inputs)))
    failures = 0
    for stem, source in tqdm(jobs, desc="anonymizing", unit="image", disable=args.quiet):
        target = out_dir / f"{stem}{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        report_path = out_dir / f"{stem}.json"
        image = _load_sample(str(source).split(":", 1)[1]) if str(source).startswith("sample:") else source
        try:
            result = engine.anonymize(image)
        except IdmragError as exc:
            failures += 1
            logger.error("%s: %s", source, exc)
            report_path.write_text(json.dumps({"source": str(source), "status": "error", "error": str(exc)}, indent=2))
            continue
        record = result.report()
        record["source"] = str(source)
        if result.image is not None:
            target.write_bytes(result.to_bytes(config.output_format))
            record["output"] = str(target)
        else:
            failures += 1
        report_path.write_text(json.dumps(record, indent=2))
        if not args.quiet:
            tqdm.write(f"{source} -> {record.get('output', 'withheld')}: {result.summary()}")
    return 1 if failures else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from idmrag_plugin.calibration import calibrate, engine_embedder, write_calibration
    from idmrag_plugin.engine.detect import MTCNNDetector
    from idmrag_plugin.engine.oracles import build_oracle

    root = Path(args.lfw)
    if not (root / "images").is_dir() or not (root / "pairs.txt").is_file():
        raise IdmragError(f"{root} is not an LFW folder (needs images/<Name>/ and pairs.txt)")
    oracles = [build_oracle(name) for name in args.oracles.split(",")]
    embed = engine_embedder(MTCNNDetector(), oracles, progress=not args.quiet)
    report = calibrate(root, embed, [o.name for o in oracles], args.identities_per_half)
    write_calibration(report, Path(args.output))
    print(json.dumps({k: v["thresholds"] for k, v in report["oracles"].items()}, indent=2))
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from idmrag_plugin.engine.detect import MTCNNDetector
    from idmrag_plugin.engine.oracles import build_oracle
    from idmrag_plugin.training.data import prepare_dataset

    oracles = [build_oracle(name) for name in args.oracles.split(",") if name]
    counts = prepare_dataset(
        [Path(p) for p in args.sources], Path(args.output), MTCNNDetector(), oracles,
        size=args.size, limit=args.limit, progress=not args.quiet,
    )
    print(json.dumps(counts))
    return 0


def cmd_anonymize_corpus(args: argparse.Namespace) -> int:
    from idmrag_plugin.config import AnonymizerConfig
    from idmrag_plugin.corpus import anonymize_corpus

    config = AnonymizerConfig(
        detector=args.detector, min_face_size=args.min_face_size, privacy_level=args.privacy_level,
        on_failure=args.on_failure, generator=args.generator, output_format=args.format, device=args.device,
    )
    summary = anonymize_corpus(
        args.src, args.dst, config, address=args.address, actors=args.actors, batch_size=args.batch_size,
        num_cpus=args.cpus_per_actor, num_gpus=args.gpus_per_actor, limit=args.limit,
    )
    print(json.dumps(summary.to_dict(), indent=2))
    return 1 if summary.errors else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from idmrag_plugin.bench import BenchConfig, run_benchmark
    from idmrag_plugin.bench.reporting import write_results
    from idmrag_plugin.pipeline import resolve_device

    config = BenchConfig(
        data=Path(args.data),
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        limit=args.limit,
        gallery_per_identity=args.gallery_per_identity,
        consistency=args.consistency,
        grid=not args.no_grid,
        oracles=tuple(o.strip() for o in args.oracles.split(",") if o.strip()),
        privacy_level=args.privacy_level,
        device=resolve_device(args.device),
        seed=args.seed,
        age_gender=not args.no_age_gender,
        progress=not args.quiet,
        diffusion_weights=Path(args.diffusion_weights) if args.diffusion_weights else None,
    )
    results = run_benchmark(config)
    paths = write_results(results, Path(args.output), args.stem)
    if args.readme:
        from idmrag_plugin.bench.reporting import update_readme

        update_readme(Path(args.readme), paths)
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        logger.info("wrote %s: %s", kind, path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idmrag", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    anon = sub.add_parser("anonymize", help="replace every face in images; write images and JSON reports")
    anon.add_argument("inputs", nargs="+", help="image files, folders, or sample:astronaut / sample:camera")
    anon.add_argument("-o", "--output", required=True, help="output folder")
    anon.add_argument("--detector", default="mtcnn", choices=["mtcnn", "mtcnn+hog"])
    anon.add_argument("--min-face-size", type=int, default=20, help="smallest face side in pixels")
    anon.add_argument("--rotations", default="0", help="also detect at these angles, e.g. 0,90,270")
    anon.add_argument("--privacy-level", default="far1e-2", choices=["far1e-2", "far1e-3"])
    anon.add_argument("--on-failure", default="obfuscate", choices=["obfuscate", "drop", "raise"])
    anon.add_argument("--max-attempts", type=int, default=3)
    anon.add_argument("--generator", default="vae-decode", choices=["none", "vae-decode", "lcm", "ldm-teacher"],
                      help="none: obfuscate every face; vae-decode / lcm / ldm-teacher: replace identities")
    anon.add_argument("--generator-steps", type=int, default=None, help="sampling steps of lcm / ldm-teacher")
    anon.add_argument("--generator-weights", default=None, help="folder from `idmrag train-lcm` (OUTPUT/lcm)")
    anon.add_argument("--format", default="PNG", choices=["PNG", "JPEG", "WEBP"])
    anon.add_argument("--device", default="auto")
    anon.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    anon.set_defaults(func=cmd_anonymize)

    cal = sub.add_parser("calibrate", help="calibrate oracle thresholds on LFW impostor pairs")
    cal.add_argument("--lfw", default="../shared/data/lfw", help="LFW folder with images/ and pairs.txt")
    cal.add_argument("--oracles", default="dlib,facenet")
    cal.add_argument("--identities-per-half", type=int, default=1500)
    cal.add_argument("-o", "--output", default="calibration.json")
    cal.add_argument("-q", "--quiet", action="store_true")
    cal.set_defaults(func=cmd_calibrate)

    corpus = sub.add_parser("anonymize-corpus", help="anonymize an image corpus with Ray Data (resumable)")
    corpus.add_argument("src", help="folder of images, or a text file of image paths/URLs")
    corpus.add_argument("dst", help="output folder: images/, records/, report.parquet")
    corpus.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    corpus.add_argument("--actors", type=int, default=1, help="actor pool size (each loads the models once)")
    corpus.add_argument("--batch-size", type=int, default=8)
    corpus.add_argument("--cpus-per-actor", type=float, default=1.0)
    corpus.add_argument("--gpus-per-actor", type=float, default=0.0)
    corpus.add_argument("--limit", type=int, default=None, help="process at most this many remaining images")
    corpus.add_argument("--detector", default="mtcnn", choices=["mtcnn", "mtcnn+hog"])
    corpus.add_argument("--min-face-size", type=int, default=20)
    corpus.add_argument("--privacy-level", default="far1e-2", choices=["far1e-2", "far1e-3"])
    corpus.add_argument("--on-failure", default="obfuscate", choices=["obfuscate", "drop", "raise"])
    corpus.add_argument("--generator", default="vae-decode", choices=["none", "vae-decode"])
    corpus.add_argument("--format", default="PNG", choices=["PNG", "JPEG", "WEBP"])
    corpus.add_argument("--device", default="auto")
    corpus.set_defaults(func=cmd_anonymize_corpus)

    from idmrag_plugin.bench.methods import DEFAULT_METHODS, METHODS

    bench = sub.add_parser("bench", help="privacy, utility, realism and cost of every method vs baselines")
    bench.add_argument("--data", default="../shared/data/lfw", help="folder of identity subfolders (LFW layout)")
    bench.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                       help=f"comma-separated, from {', '.join(METHODS)}; NAME@STEPS for samplers with steps")
    bench.add_argument("--limit", type=int, default=300, help="identities (each with 2+ photos)")
    bench.add_argument("--gallery-per-identity", type=int, default=4)
    bench.add_argument("--consistency", type=int, default=100, help="identities whose second photo is anonymized too")
    bench.add_argument("--no-grid", action="store_true",
                       help="skip the picture grid (drawn on scikit-image's astronaut and cameraman only)")
    bench.add_argument("--oracles", default="dlib,facenet")
    bench.add_argument("--privacy-level", default="far1e-2", choices=["far1e-2", "far1e-3"])
    bench.add_argument("--no-age-gender", action="store_true", help="skip the age/gender judges")
    bench.add_argument("--diffusion-weights", default=None,
                       help="OUTPUT folder of `idmrag train-lcm` for the lcm / ldm-teacher methods")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("-o", "--output", default="benchmarks/results")
    bench.add_argument("--stem", default="bench", help="output file names: STEM.json, STEM.md, ...")
    bench.add_argument("--readme", default=None,
                       help="also replace the <!-- bench:start --> ... <!-- bench:end --> block of this file")
    bench.add_argument("-q", "--quiet", action="store_true")
    bench.set_defaults(func=cmd_bench)

    prep = sub.add_parser("prepare-data", help="align every face of image folders into a training dataset")
    prep.add_argument("sources", nargs="+", help="LFW folder, UTKFace folder or any folder of photos")
    prep.add_argument("-o", "--output", required=True, help="output .npz")
    prep.add_argument("--size", type=int, default=128, help="side of the aligned crops")
    prep.add_argument("--oracles", default="dlib,facenet", help="embeddings to cache")
    prep.add_argument("--limit", type=int, default=None)
    prep.add_argument("-q", "--quiet", action="store_true")
    prep.set_defaults(func=cmd_prepare_data)

    # Listed for --help; main() hands its arguments to the training module's own parser.
    sub.add_parser("train-codes", help="train the identity student and the disentangled VAE (see --help)")
    sub.add_parser("train-lcm", help="train the latent diffusion teacher and distil it into an LCM (see --help)")
    sub.add_parser("fit-sampler", help="fit the replacement-identity sampler on the trained codes (see --help)")
    sub.add_parser("blend-codes", help="interpolate two codes models in weight space (see --help)")
    return parser


# Subcommands whose module parses its own arguments (listed in build_parser for --help).
DELEGATED = {
    "train-codes": "idmrag_plugin.training.train_codes",
    "train-lcm": "idmrag_plugin.training.train_lcm",
    "fit-sampler": "idmrag_plugin.training.fit_sampler",
    "blend-codes": "idmrag_plugin.training.blend_codes",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in DELEGATED:
        # These commands parse their own arguments; their errors end like every other command's.
        import importlib

        try:
            importlib.import_module(DELEGATED[argv[0]]).main(argv[1:])
        except IdmragError as exc:
            logger.error("%s", exc)
            return 2
        return 0
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except IdmragError as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
