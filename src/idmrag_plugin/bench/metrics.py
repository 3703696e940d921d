"""Metric functions of the benchmark: pure numpy, tested on cases with known answers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def verification_rate(originals: np.ndarray, anonymized: np.ndarray, threshold: float) -> float:
    """Share of faces an oracle still verifies as their original person (cosine >= threshold)."""
    if len(originals) == 0:
        return float("nan")
    sims = np.sum(_unit(originals) * _unit(anonymized), axis=1)
    return float(np.mean(sims >= threshold))


def reidentification_rates(
    probes: np.ndarray,
    probe_ids: Sequence[str],
    gallery: np.ndarray,
    gallery_ids: Sequence[str],
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Top-k re-identification: each probe is ranked against the gallery's identities.

    An identity's score is its best cosine over its gallery photos; a probe counts as
    re-identified at k when its true identity is among the k best-scoring identities.
    Probes whose identity has no gallery photo are not counted.
    """
    identities = sorted(set(gallery_ids))
    column = {name: i for i, name in enumerate(identities)}
    sims = _unit(probes) @ _unit(gallery).T  # (P, G)
    scores = np.full((len(probes), len(identities)), -np.inf)
    for g, name in enumerate(gallery_ids):
        scores[:, column[name]] = np.maximum(scores[:, column[name]], sims[:, g])
    keep = [i for i, name in enumerate(probe_ids) if name in column]
    if not keep:
        return {k: float("nan") for k in ks}
    truth = np.array([column[probe_ids[i]] for i in keep])
    scores = scores[keep]
    true_score = scores[np.arange(len(keep)), truth]
    # rank = number of identities scoring strictly higher (ties resolved in the probe's favour
    # would flatter a method that outputs identical faces, so ties count against it)
    rank = np.sum(scores > true_score[:, None], axis=1) + np.sum(scores == true_score[:, None], axis=1) - 1
    return {k: float(np.mean(rank < k)) for k in ks}


def chance_rate(n_identities: int, k: int) -> float:
    """Top-k re-identification a random guess achieves among ``n_identities``."""
    return min(k, n_identities) / n_identities if n_identities else float("nan")


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of embeddings (rows).

    tr(sqrt(S1 S2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix sqrt(S1) S2 sqrt(S1), which stays stable when there are fewer
    samples than dimensions (singular covariances).
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if len(real) < 2 or len(fake) < 2:
        return float("nan")
    mu1, mu2 = real.mean(axis=0), fake.mean(axis=0)
    s1, s2 = np.atleast_2d(np.cov(real, rowvar=False)), np.atleast_2d(np.cov(fake, rowvar=False))
    root = _psd_sqrt(s1)
    middle = root @ s2 @ root
    trace_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2.0), 0.0, None))))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


def interocular_distance(landmarks68: np.ndarray) -> float:
    """Distance between the eye centres of a 68-point (iBUG) landmark set."""
    pts = np.asarray(landmarks68, dtype=np.float64)
    return float(np.linalg.norm(pts[36:42].mean(axis=0) - pts[42:48].mean(axis=0)))


def landmark_error(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean point-to-point distance, in units of the reference's inter-ocular distance."""
    ref, oth = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if ref.shape != oth.shape:
        raise ValueError(f"landmark sets differ in shape: {ref.shape} vs {oth.shape}")
    iod = interocular_distance(ref) if len(ref) == 68 else float(np.linalg.norm(ref[0] - ref[1]))
    return float(np.mean(np.linalg.norm(ref - oth, axis=1)) / max(iod, 1e-9))


def same_person_rate(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    """Share of row pairs (a[i], b[i]) an oracle judges the same person."""
    if len(a) == 0:
        return float("nan")
    return float(np.mean(np.sum(_unit(a) * _unit(b), axis=1) >= threshold))


def distinct_people_rate(embeddings: np.ndarray, identities: Sequence[str], threshold: float) -> float:
    """Share of pairs of different identities an oracle judges different people."""
    emb = _unit(embeddings)
    sims = emb @ emb.T
    ids = np.asarray(identities)
    different = ids[:, None] != ids[None, :]
    upper = np.triu(np.ones_like(different, dtype=bool), k=1) & different
    if not upper.any():
        return float("nan")
    return float(np.mean(sims[upper] < threshold))


def median_p95(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"median": float("nan"), "p95": float("nan")}
    return {"median": float(np.median(arr)), "p95": float(np.percentile(arr, 95))}


def nanmean(values: Sequence[float | None]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return float(np.mean(arr)) if arr.size else float("nan")
