"""The first learned generator: encode the face, replace z_id by a sampled pseudonym code,
decode with the face's own z_attr.

Pseudonyms are consistent within one generator instance: a face judged the same person as
one already seen reuses that face's replacement, so one person across the images of a
session gets one synthetic identity. Same person: dlib's descriptors (the verifier's, which
the engine's requests bring) at the oracle's calibrated threshold, or, where a face has none,
identity codes closer than the sampler's different-person level. The registry lives as long
as the instance (its scope); a new instance, or a new ``secret``, gives unlinkable pseudonyms.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from idmrag_plugin.engine.generator import FaceGenerator, GenerationRequest
from idmrag_plugin.errors import ConfigError
from idmrag_plugin.generation.sampler import IdentitySampler, pseudonym_key

logger = logging.getLogger(__name__)

#: Redraws of a pseudonym code that does not suit the person (see ``mismatch``).
REDRAWS = 16
#: Attempts (counted from 0) before which a pseudonym must suit the person. A pseudonym of the
#: person's gender is nearer them in a recognizer's eyes, so it fails verification more often;
#: after a few failures a verified face of other attributes beats one that fails closed.
SUITED_ATTEMPTS = 3
#: The registry's rule for "the same person": a new face joins the most similar registered
#: person when dlib's descriptors match at ``far1e-3`` (93.8% of LFW's genuine pairs) or, once
#: more than 50 people are registered, at the stricter false-accept rate at which all of them
#: together would match a stranger ``REGISTRY_FALSE_MATCHES`` times on average (N people: FAR
#: = REGISTRY_FALSE_MATCHES / N, from the calibrated impostor tail). At a fixed level strangers
#: get in as the registry grows: at ``far1e-3``, 13% of new people joined someone else's
#: pseudonym among 300 LFW people, 26% among 1,000 and 43% among 3,000; with this rule 4% at each
#: size, while later photos of a person find them 93% / 82% / 69% of the time (96 / 95 / 93)
#: (``benchmarks/registry_scale.py``, README). Past the strictest calibrated level
#: (``far1e-5``: 5,000 people) the threshold stays there.
REGISTRY_FALSE_MATCHES = 0.05
REGISTRY_LOOSEST_FAR = 1e-3
#: Faces (identity codes) whose person was resolved recently, remembered so that every step
#: drawing a face finds the person its request resolved.
RESOLVED_MEMORY = 4096
#: People a generator remembers at most (at this bound: 102 MB of codes and descriptors and a
#: 6 ms lookup; at 100,000, 32 ms while another job ran). A corpus job's engine can meet
#: millions: past the bound the person least recently met is forgotten, and if met again gets
#: a new pseudonym.
MAX_PEOPLE = 50_000


def registry_threshold(people: int) -> float:
    """dlib's similarity at which a face is one of ``people`` registered people (see
    ``REGISTRY_FALSE_MATCHES``)."""
    from idmrag_plugin.calibration import threshold_at_far

    far = min(REGISTRY_LOOSEST_FAR, REGISTRY_FALSE_MATCHES / max(people, 1))
    return threshold_at_far("dlib", far)


class PersonRegistry:
    """The people a generator has drawn: unit identity codes, dlib descriptors (where known) and
    the seed code each person's pseudonyms are keyed by, in arrays grown by doubling, so that
    finding a face's person is one matrix-vector product however many people are registered
    (a corpus job's engine sees many). At most ``capacity`` people: a new one then takes the
    place of the one least recently met. Not thread-safe: the generator holds its lock."""

    def __init__(self, capacity: int = MAX_PEOPLE) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._codes = np.zeros((0, 0))
        self._descriptors = np.zeros((0, 0))
        self._has_descriptor = np.zeros(0, bool)
        self._met = np.zeros(0, np.int64)  # when each person was last met (a counter)
        self._clock = 0
        self._seeds: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._seeds)

    def nearest(self, unit: np.ndarray, descriptor: np.ndarray | None, same_cos: float,
                distinct_cos: float) -> np.ndarray | None:
        """The seed of the most similar registered person who matches, else None. People match
        by dlib's descriptors where both faces have one (at ``same_cos``), else by identity codes
        (closer than ``distinct_cos``); similarity is the margin over the rule's threshold."""
        n = len(self._seeds)
        if n == 0:
            return None
        margin = self._codes[:n] @ unit - distinct_cos
        if descriptor is not None and self._has_descriptor[:n].any():
            margin = np.where(self._has_descriptor[:n], self._descriptors[:n] @ descriptor - same_cos, margin)
        best = int(np.argmax(margin))
        if margin[best] < 0.0:
            return None
        self._clock += 1
        self._met[best] = self._clock
        return self._seeds[best]

    def add(self, unit: np.ndarray, descriptor: np.ndarray | None, seed: np.ndarray) -> np.ndarray | None:
        """Register a person; the seed of the person forgotten to make room, if any."""
        n = len(self._seeds)
        forgotten = None
        if n == self.capacity:  # full: the person least recently met makes room
            row = int(np.argmin(self._met[:n]))
            forgotten = self._seeds[row]
            self._seeds[row] = seed
        else:
            row = n
            self._seeds.append(seed)
            if n == len(self._codes):  # arrays full: double them (up to the capacity)
                rows = min(max(64, 2 * n), self.capacity)
                self._codes = _grown(self._codes, rows, unit.shape[0])
                self._descriptors = _grown(self._descriptors, rows, self._descriptors.shape[1])
                self._has_descriptor = np.concatenate([self._has_descriptor, np.zeros(rows - n, bool)])
                self._met = np.concatenate([self._met, np.zeros(rows - n, np.int64)])
        self._has_descriptor[row] = descriptor is not None
        if descriptor is not None:
            if self._descriptors.shape[1] == 0:  # the first descriptor sets their width
                self._descriptors = _grown(self._descriptors, len(self._codes), descriptor.shape[0])
            self._descriptors[row] = descriptor
        self._codes[row] = unit
        self._clock += 1
        self._met[row] = self._clock
        return forgotten


def _grown(rows: np.ndarray, capacity: int, width: int) -> np.ndarray:
    """``rows`` (at most ``width`` columns) copied into a zero array of ``capacity`` x ``width``."""
    out = np.zeros((capacity, width))
    out[: rows.shape[0], : rows.shape[1]] = rows
    return out


def _checked_secret(secret: object) -> bytes:
    if not isinstance(secret, (bytes, bytearray)) or not secret:
        raise ConfigError(f"a pseudonym secret is non-empty bytes (e.g. secrets.token_bytes(32)), got {type(secret).__name__}")
    return bytes(secret)


class VAEDecodeGenerator(FaceGenerator):
    name = "vae-decode"
    #: Attempts after the first at which a person's verified pseudonym is drawn again before
    #: any other (see :meth:`pseudonym_attempt`): none here, where a redraw would be the same.
    kept_pseudonym_retries = 0

    def __init__(
        self,
        model_dir: str | Path,
        sampler_path: str | Path,
        device: str = "cpu",
        secret: bytes | None = None,
        runtime: str = "torch",
        cache_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.sampler_path = Path(sampler_path)
        self.device = device
        # what runs the networks on a CPU (AnonymizerConfig.generator_runtime), see onnx_networks
        self.runtime = runtime
        self.cache_dir = cache_dir
        self.threads = threads
        self._encoder_onnx = None
        self._lock = threading.Lock()
        self._model = None
        self._sampler: IdentitySampler | None = None
        self._secret = _checked_secret(secret) if secret is not None else secrets.token_bytes(32)
        self._start_scope()

    @property
    def secret(self) -> bytes:
        """The pseudonym secret: the same person under the same secret gets the same pseudonym.

        Setting a new one starts a new scope, as a new instance would (the models stay loaded):
        the people met, the pseudonyms kept for them and every other choice made under the old
        secret are forgotten, so nothing links the pseudonyms of the two scopes. Set it between
        requests, not while the generator is drawing."""
        return self._secret

    @secret.setter
    def secret(self, value: bytes) -> None:
        value = _checked_secret(value)
        with self._lock:
            self._secret = value
            self._start_scope()

    def _start_scope(self) -> None:
        """Fresh per-secret state (see :attr:`secret`); generators that keep more about the
        people they met extend it."""
        self._registry = PersonRegistry()
        self._resolved: OrderedDict[bytes, np.ndarray] = OrderedDict()
        # the pseudonym attempt that was last verified for each person (by registered code), and
        # which person and pseudonym attempt each recent request drew (by the request's seed)
        self._verified_attempt: dict[bytes, int] = {}
        self._drawn: OrderedDict[int, tuple[bytes, int]] = OrderedDict()

    def _load(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is None:
                from idmrag_plugin.generation.encoder import DisentangledFaceVAE
                from idmrag_plugin.generation.onnx_networks import EncoderMeans

                self._sampler = IdentitySampler.load(self.sampler_path)
                model = DisentangledFaceVAE.from_pretrained(self.model_dir).to(self.device)
                self._encoder_onnx = self._on_onnxruntime(
                    EncoderMeans(model), [(1, 3, model.config.image_size, model.config.image_size)], "codes_encoder",
                    self.model_dir)
                self._model = model

    def _on_onnxruntime(self, graph, input_shapes: list[tuple[int, ...]], kind: str, weights: Path):
        """``graph`` on ONNX Runtime when this generator's runtime asks for it, else None."""
        from idmrag_plugin.generation.onnx_networks import on_onnxruntime

        return on_onnxruntime(graph, input_shapes, kind, weights, self.runtime, self.device, self.cache_dir,
                              self.threads)

    def encode(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) uint8 canonical crops -> (id_mu, attr_mu) as numpy."""
        import torch

        self._load()
        assert self._model is not None
        size = self._model.config.image_size
        small = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in faces])
        x = torch.as_tensor(small, device=self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if self._encoder_onnx is not None:
            id_mu, attr_mu = self._encoder_onnx.run(x.numpy())
            return id_mu, attr_mu
        with torch.inference_mode():
            id_mu, _, attr_mu, _ = self._model.encode(x)
        return id_mu.cpu().numpy(), attr_mu.cpu().numpy()

    def decode(self, z_id: np.ndarray, z_attr: np.ndarray, out_size: int) -> np.ndarray:
        import torch

        self._load()
        assert self._model is not None
        with torch.inference_mode():
            y = self._model.decode(
                torch.as_tensor(np.ascontiguousarray(np.atleast_2d(z_id)), device=self.device).float(),
                torch.as_tensor(np.ascontiguousarray(z_attr), device=self.device).float().reshape(-1, *self._attr_shape()),
            )
        images = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return np.stack([cv2.resize(im, (out_size, out_size), interpolation=cv2.INTER_CUBIC) for im in images])

    def _attr_shape(self) -> tuple[int, int, int]:
        assert self._model is not None
        c = self._model.config
        return (c.attr_channels, c.attr_size, c.attr_size)

    def _seed_code(self, code: np.ndarray, embeddings: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The registered code of the person whose identity code is ``code``, or this one
        (registered now). With ``embeddings`` (the oracles' of the original face) the person
        is found by dlib's descriptor; of several registered people who match, the most
        similar. A face resolved before answers as it did then."""
        self._load()
        assert self._sampler is not None
        key = np.ascontiguousarray(code, np.float32).tobytes()
        with self._lock:
            if key in self._resolved:
                self._resolved.move_to_end(key)
                return self._resolved[key]
        descriptor = None if embeddings is None else embeddings.get("dlib")
        if descriptor is not None:
            descriptor = np.asarray(descriptor, np.float64).ravel()
            descriptor = descriptor / max(float(np.linalg.norm(descriptor)), 1e-12)
        unit = code / max(float(np.linalg.norm(code)), 1e-12)
        with self._lock:
            if key in self._resolved:  # resolved by another thread meanwhile
                return self._resolved[key]
            same_cos = registry_threshold(len(self._registry)) if descriptor is not None else 0.0
            best = self._registry.nearest(unit, descriptor, same_cos, self._sampler.distinct_cos)
            if best is None:
                forgotten = self._registry.add(unit, descriptor, code)
                if forgotten is not None:
                    self._forget(forgotten.tobytes())
                best = code
            self._resolved[key] = best
            if len(self._resolved) > RESOLVED_MEMORY:
                self._resolved.popitem(last=False)
        return best

    def _forget(self, person: bytes) -> None:
        """Drop what is kept about a person the registry forgot (called with the lock held), so
        that a long job's memory stays bounded by the registry's."""
        self._verified_attempt.pop(person, None)

    def pseudonym_attempt(self, code: np.ndarray, attempt: int, request_seed: int | None = None) -> int:
        """The person's pseudonym attempt for the engine's ``attempt`` at a face whose identity
        code is ``code``: the one last verified for the person comes first, the others keep their
        order. A pseudonym that failed on one photo and was replaced by a later attempt's would
        otherwise give every later photo of the person the first one again (two pseudonyms for
        one person). It is drawn again at the next ``kept_pseudonym_retries`` attempts (a
        generator whose later attempts redraw more of the face) before any other.
        ``request_seed`` remembers the choice for :meth:`accepted`."""
        return self._pseudonym_choice(code, attempt, request_seed)[0]

    def redraws_kept_pseudonym(self, code: np.ndarray, attempt: int) -> bool:
        """Whether the engine's ``attempt`` at a face whose identity code is ``code`` draws the
        person's verified pseudonym again after it was refused in this photo (see
        :meth:`pseudonym_attempt`)."""
        return self._pseudonym_choice(code, attempt)[1]

    def _pseudonym_choice(self, code: np.ndarray, attempt: int,
                          request_seed: int | None = None) -> tuple[int, bool]:
        """:meth:`pseudonym_attempt` and :meth:`redraws_kept_pseudonym` from one reading of
        the person's verified attempt."""
        person = self._seed_code(code).tobytes()
        with self._lock:
            verified = self._verified_attempt.get(person)
            retried = verified is not None and 0 < attempt <= self.kept_pseudonym_retries
            if verified is None:
                chosen = attempt
            elif attempt <= self.kept_pseudonym_retries:
                chosen = verified
            else:
                attempt -= self.kept_pseudonym_retries
                chosen = attempt if attempt > verified else (verified if attempt == 0 else attempt - 1)
            if request_seed is not None:
                self._drawn[request_seed] = (person, chosen)
                if len(self._drawn) > RESOLVED_MEMORY:
                    self._drawn.popitem(last=False)
        return chosen, retried

    def accepted(self, request: GenerationRequest) -> None:
        with self._lock:
            drawn = self._drawn.get(request.seed)
            if drawn is None:
                return
            person, attempt = drawn
            self._verified_attempt[person] = attempt

    def replacement_code(self, code: np.ndarray, attempt: int, variant: int = 0) -> np.ndarray:
        """The pseudonym code for a face whose identity code is ``code`` at ``attempt``;
        ``variant`` > 0 gives further candidates for the same attempt."""
        self._load()
        assert self._sampler is not None
        seed = self._seed_code(code)
        keep = self.sampler_keeps_attributes()
        z, info = self._sampler.sample(code, pseudonym_key(self.secret, seed, attempt, variant), keep_attributes=keep,
                                       person=seed)
        if not info.accepted:
            logger.info("sampler found no fully acceptable code in %d tries", info.tries)
        if attempt >= SUITED_ATTEMPTS:
            return z
        best, best_mismatch = z, self.mismatch(seed, z)
        for redraw in range(1, REDRAWS + 1):
            if best_mismatch <= 0.0:
                break
            # deterministic: the same person and attempt redraw the same way
            z, _ = self._sampler.sample(code, pseudonym_key(self.secret, seed, attempt + 1000 * redraw, variant),
                                        keep_attributes=keep, person=seed)
            mismatch = self.mismatch(seed, z)
            if mismatch < best_mismatch:
                best, best_mismatch = z, mismatch
        return best

    def sampler_keeps_attributes(self) -> bool:
        """Whether the sampler's own gender and age-band probes on the codes should filter the
        pseudonyms (a generator that judges attributes its own way turns them off)."""
        return True

    def mismatch(self, person: np.ndarray, code: np.ndarray) -> float:
        """How badly a sampled pseudonym ``code`` suits the person whose registered code is
        ``person``: 0 when it suits; otherwise up to ``REDRAWS`` more are drawn and the least
        bad is kept. Any code suits here."""
        return 0.0

    def generate(self, request: GenerationRequest) -> np.ndarray:
        id_mu, attr_mu = self.encode(request.face[None])
        if request.identity is not None:
            return self.decode(request.identity, attr_mu, request.face.shape[0])[0]
        self._seed_code(id_mu[0], request.original_embeddings)  # the person, by dlib where the request says
        attempt = self.pseudonym_attempt(id_mu[0], request.attempt, request.seed)
        return self.decode(self.replacement_code(id_mu[0], attempt), attr_mu, request.face.shape[0])[0]
