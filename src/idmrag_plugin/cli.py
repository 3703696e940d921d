"""``idmrag``: anonymize files and folders; calibrate the oracles' thresholds."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from idmrag_plugin.config import DEFAULT_FACE_BLEND, FACE_BLENDS, GENERATORS, AnonymizerConfig
from idmrag_plugin.errors import ConfigError, IdmragError

logger = logging.getLogger("idmrag_plugin.cli")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"}
SAMPLE_IMAGES = ("astronaut", "camera")


def _inputs(items: Sequence[str]) -> Iterator[tuple[str, Path | str]]:
    """(relative output name, source) for every image named or inside a named folder.

    The name keeps the source's suffix (``photo.jpg`` -> ``photo.jpg.png``), so photo.jpg
    and photo.png never share an output. ``sample:astronaut`` and ``sample:camera`` name
    scikit-image's bundled photos.
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
            for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                yield file.relative_to(path).as_posix(), file
        elif path.exists():
            yield path.name, path
        else:
            raise IdmragError(f"{path} does not exist")


def _load_sample(name: str):
    import skimage.data

    return getattr(skimage.data, name)()


def _engine_config(args: argparse.Namespace):
    """The AnonymizerConfig of the options `anonymize` and `anonymize-corpus` share."""
    try:
        rotations = tuple(int(a) for a in args.rotations.split(","))
    except ValueError as exc:
        raise IdmragError(f"--rotations takes comma-separated multiples of 45, got {args.rotations!r}") from exc
    return AnonymizerConfig(
        detector=args.detector,
        min_face_size=args.min_face_size,
        rotations=rotations,
        border_search=not args.no_border_search,
        exposure_search=not args.no_exposure_search,
        negative_search=not args.no_negative_search,
        stretch_search=not args.no_stretch_search,
        seam_search=not args.no_seam_search,
        hog_search=not args.no_hog_search,
        grey_search=not args.no_grey_search,
        denoise_search=not args.no_denoise_search,
        descreen_search=not args.no_descreen_search,
        privacy_level=args.privacy_level,
        on_failure=args.on_failure,
        max_attempts=args.max_attempts,
        generator=args.generator,
        generator_steps=args.generator_steps,
        generator_weights=Path(args.generator_weights) if args.generator_weights else None,
        refine_faces=not args.no_refine,
        face_blend=args.face_blend,
        keep_outside_face=not args.redraw_whole_ellipse,
        keep_expression=not args.any_expression,
        keep_glasses=not args.any_glasses,
        match_sharpness=not args.any_sharpness,
        output_format=args.format,
        device=args.device,
        threads=args.threads,
    )


def cmd_anonymize(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from idmrag_plugin.pipeline import FaceAnonymizer

    config = _engine_config(args)
    engine = FaceAnonymizer(config)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[config.output_format]
    jobs = list(_inputs(args.inputs))
    claimed: dict[str, str] = {}
    failures = 0
    with logging_redirect_tqdm():
        for name, source in tqdm(jobs, desc="anonymizing", unit="image", disable=args.quiet):
            target = out_dir / f"{name}{suffix}"
            report_path = out_dir / f"{name}.json"
            key = str(target).casefold()
            if key in claimed:
                failures += 1
                logger.error("%s: not written: %s already holds the output of %s", source, target, claimed[key])
                continue
            claimed[key] = str(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                image = _load_sample(str(source).split(":", 1)[1]) if str(source).startswith("sample:") else source
                result = engine.anonymize(image)
            except Exception as exc:  # noqa: BLE001 - report the file and go on with the others
                failures += 1
                message = str(exc) if isinstance(exc, IdmragError) else f"{type(exc).__name__}: {exc}"
                logger.error("%s: %s", source, message)
                report_path.write_text(json.dumps({"source": str(source), "status": "error", "error": message}, indent=2))
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
    from idmrag_plugin.engine.views import box_view_description, box_view_name

    names = [o.name for o in oracles] + [box_view_name(o.name) for o in oracles if o.box_view]
    report = calibrate(root, embed, names, args.identities_per_half)
    for oracle in (o for o in oracles if o.box_view):
        report["oracles"][box_view_name(oracle.name)]["view"] = box_view_description(oracle.name)
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
    from idmrag_plugin.corpus import anonymize_corpus

    summary = anonymize_corpus(
        args.src, args.dst, _engine_config(args), address=args.address, actors=args.actors,
        batch_size=args.batch_size, num_cpus=args.cpus_per_actor, num_gpus=args.gpus_per_actor,
        limit=args.limit, fetch_timeout_s=args.fetch_timeout, fetch_allow=tuple(args.fetch_allow),
    )
    print(json.dumps(summary.to_dict(), indent=2))
    return 1 if summary.errors else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from idmrag_plugin.bench import BenchConfig, run_benchmark
    from idmrag_plugin.bench.reporting import write_results
    from idmrag_plugin.pipeline import resolve_device

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        import torch

        # process-wide, before any engine is built: two benches sharing a 2-core CPU with
        # torch's default threads took 36 CPU minutes each and did not finish
        torch.set_num_threads(args.threads)
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


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The engine options that `anonymize` and `anonymize-corpus` share."""
    parser.add_argument("--detector", default="mtcnn", choices=["mtcnn", "mtcnn+hog"],
                        help="face detector; mtcnn+hog adds dlib's HOG detector for recall (slower)")
    parser.add_argument("--min-face-size", type=int, default=20, help="smallest face side searched, in pixels")
    parser.add_argument("--rotations", default="0,45,90,135,180,225,270,315",
                        help="detect faces in the image turned by these angles, multiples of 45 (sideways and "
                             "tilted photos); 0,90,180,270 or 0 alone is faster")
    parser.add_argument("--no-border-search", action="store_true",
                        help="skip the extra pass for faces cut by the image border (faster; misses them)")
    parser.add_argument("--no-exposure-search", action="store_true",
                        help="skip the extra pass over a levelled copy of dark or washed-out photos (misses their faces)")
    parser.add_argument("--no-negative-search", action="store_true",
                        help="skip the extra pass over the photo's negative (misses the faces of scanned film "
                             "negatives)")
    parser.add_argument("--no-denoise-search", action="store_true",
                        help="skip the extra pass over a median-filtered copy of photos full of salt-and-pepper "
                             "noise (misses the faces such noise hides)")
    parser.add_argument("--no-descreen-search", action="store_true",
                        help="skip the extra pass over a blurred copy of halftone or dithered photos (misses the "
                             "faces of printed pictures)")
    parser.add_argument("--no-grey-search", action="store_true",
                        help="skip the extra pass over a colour photo's grey levels (misses the faces of photos "
                             "cast in green or cyan)")
    parser.add_argument("--no-stretch-search", action="store_true",
                        help="skip the extra passes over the photo squeezed along each axis (misses the faces of "
                             "photos stretched out of proportion)")
    parser.add_argument("--no-seam-search", action="store_true",
                        help="skip the extra pass over a panorama's seam (misses faces across the edges of "
                             "360-degree panoramas, which a viewer joins)")
    parser.add_argument("--no-hog-search", action="store_true",
                        help="skip dlib's HOG detector's look after MTCNN's searches (misses the faces MTCNN "
                             "alone misses, such as faces with a black bar over the eyes or in a line drawing)")
    parser.add_argument("--privacy-level", default="far1e-2", choices=["far1e-2", "far1e-3"],
                        help="a replaced face must be less like the original than all but this fraction of "
                             "different-person pairs (far1e-3 is stricter)")
    parser.add_argument("--on-failure", default="obfuscate", choices=["obfuscate", "drop", "raise"],
                        help="a face that cannot be verified anonymous: fill it irreversibly, withhold the "
                             "image, or fail the image")
    parser.add_argument("--max-attempts", type=int, default=AnonymizerConfig.max_attempts,
                        help="generator attempts per face")
    parser.add_argument("--generator", default="renderer-lcm", choices=list(GENERATORS),
                        help="none: obfuscate every face; the others replace identities")
    parser.add_argument("--generator-steps", type=int, default=None, help="sampling steps of renderer-lcm / lcm / ldm-teacher")
    parser.add_argument("--generator-weights", default=None, help="folder from `idmrag train-lcm` (OUTPUT/lcm), `idmrag train-renderer` (OUTPUT/renderer) or `idmrag train-code-lcm` (OUTPUT/lcm, for renderer-lcm)")
    parser.add_argument("--no-refine", action="store_true",
                        help="renderer generators: resize the 64 px drawing up instead of refining it at 128 px")
    parser.add_argument("--face-blend", default=DEFAULT_FACE_BLEND, choices=list(FACE_BLENDS),
                        help="renderer generators: poisson-tone (seamless, the original's mean tone), poisson "
                             "(seamless only), tone (hard edge, mean tone)")
    parser.add_argument("--redraw-whole-ellipse", action="store_true",
                        help="renderer generators: keep the drawing over the whole ellipse, not the photo's own "
                             "hair, background and neck around the faces")
    parser.add_argument("--any-expression", action="store_true",
                        help="renderer generators: do not replace a new pseudonym drawn with the mouth open where "
                             "the photo's is closed or the other way round (faster on new people)")
    parser.add_argument("--any-glasses", action="store_true",
                        help="renderer generators: do not replace a pseudonym drawn with glasses on a face that "
                             "wears none in the photo, or without them on a face that wears them")
    parser.add_argument("--any-sharpness", action="store_true",
                        help="renderer generators: do not blur a drawn face that is clearly sharper than the photo's "
                             "face (a face out of focus or blurred) down to about the photo's detail")
    parser.add_argument("--format", default="PNG", choices=["PNG", "JPEG", "WEBP"], help="output encoding")
    parser.add_argument("--device", default="auto", help="auto, cpu or a torch device such as cuda:0")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; 1-2 avoid collapse when the CPU is shared)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idmrag", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    anon = sub.add_parser("anonymize", help="replace every face in images; write images and JSON reports",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    anon.add_argument("inputs", nargs="+", help="image files, folders, or sample:astronaut / sample:camera")
    anon.add_argument("-o", "--output", required=True,
                      help="output folder: NAME.png and NAME.json per input (NAME keeps the input's suffix)")
    _add_engine_options(anon)
    anon.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    anon.set_defaults(func=cmd_anonymize)

    cal = sub.add_parser("calibrate", help="calibrate oracle thresholds on LFW impostor pairs")
    cal.add_argument("--lfw", default="../shared/data/lfw", help="LFW folder with images/ and pairs.txt")
    cal.add_argument("--oracles", default="dlib,facenet")
    cal.add_argument("--identities-per-half", type=int, default=1500)
    cal.add_argument("-o", "--output", default="calibration.json")
    cal.add_argument("-q", "--quiet", action="store_true")
    cal.set_defaults(func=cmd_calibrate)

    corpus = sub.add_parser("anonymize-corpus", help="anonymize an image corpus with Ray Data (resumable)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    corpus.add_argument("src", help="folder of images, or a text file of image paths/URLs")
    corpus.add_argument("dst", help="output folder: images/, records/, report.parquet")
    corpus.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    corpus.add_argument("--actors", type=int, default=1, help="actor pool size (each loads the models once)")
    corpus.add_argument("--batch-size", type=int, default=8, help="images per actor call")
    corpus.add_argument("--cpus-per-actor", type=float, default=1.0, help="logical CPUs each actor holds")
    corpus.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs each actor holds")
    corpus.add_argument("--limit", type=int, default=None, help="process at most this many remaining images")
    corpus.add_argument("--fetch-timeout", type=float, default=10.0, help="deadline per URL download, seconds")
    corpus.add_argument("--fetch-allow", action="append", default=[], metavar="HOST_OR_NETWORK",
                        help="let URLs reach this non-public host or network (repeatable); others are refused")
    _add_engine_options(corpus)
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
                       help="OUTPUT folder of `idmrag train-lcm` (lcm / ldm-teacher methods) or "
                            "`idmrag train-renderer` (renderer method); default: the packaged weights")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--threads", type=int, default=None,
                       help="torch threads for the whole run (default: torch's; 1 each when two runs share the CPU)")
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
    sub.add_parser("train-renderer", help="train the context-aware face renderer adversarially (see --help)")
    sub.add_parser("train-refiner", help="train the refiner that redraws the renderer's faces at 128 px (see --help)")
    sub.add_parser("fit-attribute-probes", help="fit the probes with which the renderer keeps gender and age (see --help)")
    sub.add_parser("train-code-lcm", help="train the pseudonym-code diffusion model and distil it into an LCM (see --help)")
    sub.add_parser("fit-glasses-probe", help="fit the probe that keeps drawings from adding glasses (see --help)")
    sub.add_parser("fit-int8-ranges", help="calibrate the int8 FaceNet that screens verdicts, on LFW (see --help)")
    return parser


# Subcommands whose module parses its own arguments (listed in build_parser for --help).
DELEGATED = {
    "train-codes": "idmrag_plugin.training.train_codes",
    "train-lcm": "idmrag_plugin.training.train_lcm",
    "fit-sampler": "idmrag_plugin.training.fit_sampler",
    "blend-codes": "idmrag_plugin.training.blend_codes",
    "train-renderer": "idmrag_plugin.training.train_renderer",
    "train-refiner": "idmrag_plugin.training.train_refiner",
    "fit-attribute-probes": "idmrag_plugin.training.fit_attribute_probes",
    "train-code-lcm": "idmrag_plugin.training.train_code_lcm",
    "fit-int8-ranges": "idmrag_plugin.training.fit_int8_ranges",
    "fit-glasses-probe": "idmrag_plugin.training.fit_glasses_probe",
    "fit-code-fitness": "idmrag_plugin.training.fit_code_fitness",
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
