"""Manifold-aware rejection sampler of replacement identity codes.

A replacement z_id' is drawn from a Gaussian mixture fitted to the training identities'
codes and accepted only when it is

* distinct: its cosine similarity to the original's code is below ``distinct_cos`` (the
  similarity that only 1% of different-person training pairs exceed);
* realistic: its log-density under the mixture is above ``density_floor`` (the 5th
  percentile of the training codes' own log-densities), i.e. on the identity manifold;
* nobody real: its cosine similarity to every training identity's mean code is below
  ``distinct_cos`` too;
* attribute-keeping: where linear probes of perceived gender and age band exist, the
  candidate's predictions match the original's.

Pseudonyms are consistent: the same key (derived from a secret and the original's code)
gives the same sequence of candidates.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

AGE_BANDS = (0, 13, 20, 35, 55, 200)
#: Candidates judged at once by ``IdentitySampler.sample`` (the first passing one wins).
SAMPLE_CHUNK = 32


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class SampleInfo:
    tries: int
    accepted: bool
    cos_to_original: float
    log_density: float
    max_cos_to_training: float
    seconds: float


class IdentitySampler:
    """Diagonal Gaussian mixture over z_id with rejection (see the module docstring)."""

    def __init__(
        self,
        weights: np.ndarray,
        means: np.ndarray,
        variances: np.ndarray,
        identity_means: np.ndarray,
        distinct_cos: float,
        density_floor: float,
        gender_probe: np.ndarray | None = None,
        age_probe: np.ndarray | None = None,
    ) -> None:
        weights = np.asarray(weights, np.float64)
        # stored as float32: renormalise, or numpy's choice() refuses weights summing to 1 +- 1e-7
        self.weights = weights / weights.sum()
        self.means = np.asarray(means, np.float64)
        self.variances = np.asarray(variances, np.float64)
        self.identity_means = _normalise(np.asarray(identity_means, np.float64))
        self.distinct_cos = float(distinct_cos)
        self.density_floor = float(density_floor)
        self.gender_probe = None if gender_probe is None else np.asarray(gender_probe, np.float64)
        self.age_probe = None if age_probe is None else np.asarray(age_probe, np.float64)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        codes: np.ndarray,
        labels: np.ndarray,
        components: int = 16,
        gender: np.ndarray | None = None,
        age: np.ndarray | None = None,
        seed: int = 0,
    ) -> IdentitySampler:
        """Fit on training codes; ``labels`` < 0 means unknown identity."""
        from sklearn.mixture import GaussianMixture

        codes = np.asarray(codes, np.float64)
        gmm = GaussianMixture(components, covariance_type="diag", random_state=seed, reg_covar=1e-4).fit(codes)
        known = labels >= 0
        ids = np.unique(labels[known])
        identity_means = np.stack([codes[labels == i].mean(axis=0) for i in ids])
        # Different-person similarity at FAR 1e-2 among identity means.
        normed = _normalise(identity_means)
        rng = np.random.default_rng(seed)
        a, b = rng.integers(0, len(ids), (2, 200_000))
        cross = np.sum(normed[a[a != b]] * normed[b[a != b]], axis=1)
        distinct_cos = float(np.quantile(cross, 0.99))
        floor = float(np.quantile(gmm.score_samples(codes), 0.05))
        probes = {}
        for name, target in (("gender", gender), ("age", age)):
            if target is None:
                continue
            have = target >= 0
            if have.sum() < 50:
                continue
            x = np.hstack([codes[have], np.ones((have.sum(), 1))])
            y = target[have].astype(np.float64)
            if name == "age":
                y = np.log1p(y)
            else:
                y = y * 2.0 - 1.0
            probes[name] = np.linalg.lstsq(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ y, rcond=None)[0]
        return cls(gmm.weights_, gmm.means_, gmm.covariances_, identity_means, distinct_cos, floor,
                   probes.get("gender"), probes.get("age"))

    # ------------------------------------------------------------------ density
    def log_density(self, z: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(z)
        diff = z[:, None, :] - self.means[None]
        log_comp = -0.5 * (np.sum(diff**2 / self.variances[None], axis=2)
                           + np.sum(np.log(2 * np.pi * self.variances), axis=1)[None])
        log_comp += np.log(self.weights)[None]
        peak = log_comp.max(axis=1, keepdims=True)
        return (peak + np.log(np.exp(log_comp - peak).sum(axis=1, keepdims=True)))[:, 0]

    def _attributes(self, z: np.ndarray) -> tuple[int | None, int | None]:
        gender, age = self._attribute_bands(np.atleast_2d(z))
        return (None if gender is None else int(gender[0])), (None if age is None else int(age[0]))

    def _attribute_bands(self, z: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Probe gender (0/1) and age band of codes (N, D), each None without its probe."""
        x = np.hstack([z, np.ones((len(z), 1))])
        gender = None if self.gender_probe is None else (x @ self.gender_probe > 0).astype(int)
        age = None
        if self.age_probe is not None:
            age = np.searchsorted(AGE_BANDS, np.expm1(x @ self.age_probe), side="right")
        return gender, age

    # ------------------------------------------------------------------ judging
    def judge(
        self, original: np.ndarray, candidates: np.ndarray, nobody_real_cos: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distinct, acceptable) masks over candidate codes (N, D) proposed by another model:
        distinct from ``original``, and acceptable = distinct, realistic and nobody real (the
        rules ``sample`` applies to its own draws, without the attribute probes).

        ``nobody_real_cos`` replaces ``distinct_cos`` in the nobody-real rule for proposals of a
        model of real codes: every real face is within ``distinct_cos`` of some of thousands of
        training identities (a pairwise level, not a nearest-of-thousands one), so such a model
        passes it with its real-looking codes only when they copy nobody more closely than
        unseen real people resemble their nearest training identity (see ``train-code-lcm``)."""
        z = np.atleast_2d(np.asarray(candidates, np.float64))
        units = _normalise(z)
        distinct = units @ _normalise(np.asarray(original, np.float64)) < self.distinct_cos
        realistic = self.log_density(z) >= self.density_floor
        nobody_real = (units @ self.identity_means.T).max(axis=1) < (
            self.distinct_cos if nobody_real_cos is None else nobody_real_cos)
        return distinct, distinct & realistic & nobody_real

    # ------------------------------------------------------------------ sampling
    def sample(
        self, original: np.ndarray, key: bytes, max_tries: int = 256, keep_attributes: bool = True,
        person: np.ndarray | None = None,
    ) -> tuple[np.ndarray, SampleInfo]:
        """A replacement code for ``original``; the same ``key`` gives the same answer.

        The candidates are drawn in one go and judged in chunks, in order, the first that
        passes winning. ``keep_attributes=False`` skips the gender and age-band probes (for a
        generator that judges attributes its own way); otherwise the candidates keep the gender
        and age band of ``person`` (the person's registered code, so that every photo of them
        aims at the same ones), or of ``original``. When no candidate passes within
        ``max_tries`` the last candidate that was at least distinct is returned with
        ``accepted=False`` (the oracle check downstream still decides whether the face may be
        used).
        """
        start = time.perf_counter()
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
        original = np.asarray(original, np.float64)
        components = rng.choice(len(self.weights), size=max_tries, p=self.weights)
        z = self.means[components] + rng.standard_normal((max_tries, self.means.shape[1])) * np.sqrt(
            self.variances[components])
        units = _normalise(z)
        cos_orig = units @ _normalise(original)
        target = self._attributes(original if person is None else person) if keep_attributes else (None, None)
        fallback: tuple[int, float, float] | None = None  # (index, density, max_real)
        for first in range(0, max_tries, SAMPLE_CHUNK):
            chunk = first + np.flatnonzero(cos_orig[first : first + SAMPLE_CHUNK] < self.distinct_cos)
            if not len(chunk):
                continue
            density = self.log_density(z[chunk])
            max_real = (units[chunk] @ self.identity_means.T).max(axis=1)
            fallback = (int(chunk[-1]), float(density[-1]), float(max_real[-1]))
            ok = (density >= self.density_floor) & (max_real < self.distinct_cos)
            gender, age = self._attribute_bands(z[chunk])
            if target[0] is not None and gender is not None:
                ok &= gender == target[0]
            if target[1] is not None and age is not None:
                ok &= age == target[1]
            passed = np.flatnonzero(ok)
            if len(passed):
                i = int(passed[0])
                return z[chunk[i]].astype(np.float32), SampleInfo(
                    int(chunk[i]) + 1, True, float(cos_orig[chunk[i]]), float(density[i]), float(max_real[i]),
                    time.perf_counter() - start)
        if fallback is None:
            code = -original
            return np.asarray(code, np.float32), SampleInfo(
                max_tries, False, -1.0, float(self.log_density(code)[0]),
                float(np.max(self.identity_means @ _normalise(code))), time.perf_counter() - start)
        index, density_, max_real_ = fallback
        return z[index].astype(np.float32), SampleInfo(
            max_tries, False, float(cos_orig[index]), density_, max_real_, time.perf_counter() - start)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        tensors = {
            "weights": self.weights, "means": self.means, "variances": self.variances,
            "identity_means": self.identity_means,
            "distinct_cos": np.array([self.distinct_cos]), "density_floor": np.array([self.density_floor]),
        }
        if self.gender_probe is not None:
            tensors["gender_probe"] = self.gender_probe
        if self.age_probe is not None:
            tensors["age_probe"] = self.age_probe
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(path))

    @classmethod
    def load(cls, path: Path) -> IdentitySampler:
        from safetensors.numpy import load_file

        t = load_file(str(path))
        return cls(t["weights"], t["means"], t["variances"], t["identity_means"],
                   float(t["distinct_cos"][0]), float(t["density_floor"][0]),
                   t.get("gender_probe"), t.get("age_probe"))


def pseudonym_key(secret: bytes, embedding: np.ndarray, attempt: int, variant: int = 0) -> bytes:
    """Keyed, deterministic per-face key: the same face (embedding) and secret give the same
    replacement; a different secret unlinks them. ``variant`` > 0 keys further candidates of
    the same attempt."""
    quantised = np.round(_normalise(np.asarray(embedding, np.float64)) * 8).astype(np.int8).tobytes()
    tail = attempt.to_bytes(2, "little") + (variant.to_bytes(2, "little") if variant else b"")
    return hmac.new(secret, quantised + tail, hashlib.sha256).digest()


def noise_seed(code: np.ndarray) -> int:
    """Seed of a generator's start noise, derived from the pseudonym code: one person is drawn
    alike in every photo of a session, and a retry (another code) gets other noise."""
    return int.from_bytes(hashlib.blake2b(np.asarray(code, np.float32).tobytes(), digest_size=8).digest(),
                          "little") % (2**63)
