"""The renderer with pseudonym codes written by the code LCM (``generator="renderer-lcm"``).

The one-pass renderer draws pseudonym codes from the identity sampler's Gaussian mixture and
redraws them until the renderer would draw the person's perceived gender and age. Here the
consistency-distilled diffusion model of :mod:`idmrag_plugin.generation.code_diffusion`
writes the candidates directly for that gender and age, the lightness of the person's face
in their first photo and, for a model conditioned on it, their perceived group (1-4 steps, a
batch of candidates at once); the sampler's rules still
decide which are acceptable (distinct from the original, realistic, and nobody real: no closer
to a training identity than 99% of unseen people are, the model's recorded ``novelty_cos``);
among the candidates the renderer draws closest to the person's attributes (and, with a tone
probe, that lightness) and, of those, the half a probe on the code reads as likelier drawn fit
(:mod:`idmrag_plugin.generation.fitness`), the one least like the person's
registered identity wins (the first of them the renderer draws clean in the speckle reference
context, see :mod:`idmrag_plugin.generation.speckle_reference`), and the renderer draws it. The oracles
verify the drawing as for every generator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from idmrag_plugin.config import DEFAULT_FACE_BLEND
from idmrag_plugin.errors import ModelLoadError
from idmrag_plugin.generation.attributes import TONE_TOLERANCE, Reading
from idmrag_plugin.generation.renderer_generator import RendererGenerator
from idmrag_plugin.generation.sampler import _normalise, pseudonym_key
from idmrag_plugin.generation.vae_generator import SUITED_ATTEMPTS

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Codes the LCM writes per attempt (one batch); the sampler's rules filter them.
CANDIDATES = 64
#: Rankings of candidates remembered (see ``RendererLCMGenerator._ranked_candidates``): a face
#: asks for its codes up to three times (its first, then its alternates, then further ones), and
#: each ranking samples a batch, judges it and draws codes in the speckle reference context.
RANKINGS_KEPT = 64
#: Measured (`idmrag bench --limit 300`, docs/generators.md): 1 step kept gender as well as 4
#: (79.7% vs 79.3%) at the same privacy, and is the fastest.
DEFAULT_LCM_STEPS = 1


def candidate_order(mismatch: np.ndarray, off_tone: np.ndarray, likelier_fit: np.ndarray,
                    closeness: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order in which candidates are preferred, and each one's suitability in that order
    (a dense rank: equal for equally suited candidates, lower is better). Best suited first:
    the least attribute ``mismatch``, then of the person's tone (``off_tone`` 0), then those
    the fitness probe reads in the likelier half to be drawn fit (``likelier_fit``: each unfit
    drawing costs a render and its screens, and a face all of whose drawings are unfit keeps
    the least unfit); within those, the least like the person (``closeness``) first. Ordered
    by the probe's probability alone, pseudonyms nearer the person were refused by the
    verifier more often (163 attempts against 147 on 60 LFW photos)."""
    unlikely = 1.0 - np.asarray(likelier_fit, np.float64)
    order = np.lexsort((closeness, unlikely, off_tone, mismatch))
    suitability = np.unique(np.stack([mismatch[order], off_tone[order], unlikely[order]], axis=1), axis=0,
                            return_inverse=True)[1]
    return order, suitability.ravel().astype(np.float64)


class RendererLCMGenerator(RendererGenerator):
    """Render pseudonyms written by a code diffusion model (an LCM, or its teacher).

    Args:
        code_model_dir: folder written by ``idmrag train-code-lcm`` (``OUTPUT/lcm`` or
            ``OUTPUT/teacher``), fitted to these codes and attribute probes.
        steps: sampling steps (default ``DEFAULT_LCM_STEPS`` for an LCM, 50 for a teacher).
        code_fitness_path: a :class:`~idmrag_plugin.generation.fitness.CodeFitness` probe fitted
            for this renderer (``idmrag fit-code-fitness``): of equally suited candidates, the
            half it reads as less likely to be drawn fit is drawn after the other half.
        The rest as for :class:`RendererGenerator`; the attribute probes are required (the
        person's perceived gender and age are the model's condition).
    """

    def __init__(
        self,
        code_model_dir: str | Path,
        renderer_dir: str | Path,
        model_dir: str | Path,
        sampler_path: str | Path,
        attribute_probes_path: str | Path,
        student_path: str | Path,
        steps: int | None = None,
        device: str = "cpu",
        secret: bytes | None = None,
        refiner_dir: str | Path | None = None,
        blend: str = DEFAULT_FACE_BLEND,
        keep_outside_face: bool = True,
        keep_expression: bool = True,
        glasses_probe_path: str | Path | None = None,
        match_sharpness: bool = True,
        runtime: str = "torch",
        cache_dir: Path | None = None,
        threads: int | None = None,
        code_fitness_path: str | Path | None = None,
    ) -> None:
        super().__init__(renderer_dir, model_dir, sampler_path, device=device, secret=secret,
                         attribute_probes_path=attribute_probes_path, student_path=student_path,
                         refiner_dir=refiner_dir, blend=blend, keep_outside_face=keep_outside_face,
                         keep_expression=keep_expression, glasses_probe_path=glasses_probe_path,
                         match_sharpness=match_sharpness, runtime=runtime, cache_dir=cache_dir, threads=threads)
        self.code_model_dir = Path(code_model_dir)
        self.kind = self._kind_of(self.code_model_dir)
        self.steps = steps if steps is not None else (DEFAULT_LCM_STEPS if self.kind == "lcm" else 50)
        if self.steps < 1:
            raise ModelLoadError(f"sampling steps must be at least 1, got {self.steps}")
        self._code_model = None
        self._code_lock = threading.Lock()
        self.code_fitness_path = Path(code_fitness_path) if code_fitness_path is not None else None
        self._fitness = None

    def _start_scope(self) -> None:
        super()._start_scope()
        self._rankings: OrderedDict[bytes, np.ndarray | None] = OrderedDict()  # see _ranked_candidates

    @staticmethod
    def _kind_of(folder: Path) -> str:
        from idmrag_plugin.weights import MODEL_CONFIG

        try:
            return str(json.loads((folder / MODEL_CONFIG).read_text())["kind"])
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{folder} holds no code diffusion model; train one with `idmrag train-code-lcm`") from exc

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"renderer-{self.kind}@{self.steps}"

    def _load_code_model(self):
        if self._code_model is None:
            with self._code_lock:
                if self._code_model is None:
                    from idmrag_plugin.generation.attributes import AttributeProbes
                    from idmrag_plugin.generation.code_diffusion import CodeDiffusion
                    from idmrag_plugin.generation.latent_diffusion import codes_fingerprint
                    from idmrag_plugin.weights import sha256_of

                    model = CodeDiffusion.from_pretrained(self.code_model_dir, map_location=self.device)
                    c = model.config
                    if c.codes_sha256 and c.codes_sha256 != codes_fingerprint(self.model_dir):
                        raise ModelLoadError(f"{self.code_model_dir} models the codes of {c.codes_sha256[:12]}, not "
                                             f"{self.model_dir}; retrain it with `idmrag train-code-lcm`")
                    assert self.attribute_probes_path is not None
                    probes = AttributeProbes.load(self.attribute_probes_path)
                    if c.on_group and (probes.image_group is None or probes.image_reader != "dlib"
                                       or c.group_probe_sha256 not in ("", probes.group_fingerprint())):
                        raise ModelLoadError(
                            f"{self.code_model_dir} is conditioned on the perceived group read by another group "
                            f"probe than {self.attribute_probes_path} has; use the probes it was trained with, or "
                            f"retrain it with `idmrag train-code-lcm --probes {self.attribute_probes_path}`")
                    if c.code_probes_sha256:
                        trained_for = c.code_probes_sha256 == probes.code_fingerprint()
                    else:
                        trained_for = not c.probes_sha256 or c.probes_sha256 == sha256_of(self.attribute_probes_path)
                    if not trained_for:
                        raise ModelLoadError(
                            f"{self.code_model_dir} was trained for other attribute probes than "
                            f"{self.attribute_probes_path}; retrain it with `idmrag train-code-lcm --probes "
                            f"{self.attribute_probes_path}`")
                    self._code_model = model
        return self._code_model

    def _likelier_fit(self, codes: np.ndarray) -> np.ndarray:
        """For each code (K, D), whether the fitness probe reads it in the likelier half to be
        drawn fit (all True without a probe: the order is then the rest of the ranking's)."""
        if self.code_fitness_path is None:
            return np.ones(len(codes), bool)
        if self._fitness is None:
            from idmrag_plugin.generation.fitness import CodeFitness

            with self._code_lock:
                if self._fitness is None:
                    self._fitness = CodeFitness.load(self.code_fitness_path)
        return self._fitness.likelier(codes)

    def sampler_keeps_attributes(self) -> bool:
        return False

    def replacement_code(self, code: np.ndarray, attempt: int, variant: int = 0) -> np.ndarray:
        ranked = self._ranked_candidates(code, attempt, variant)
        return ranked[0] if ranked is not None else super().replacement_code(code, attempt, variant)

    def pseudonym_codes(self, code: np.ndarray, attempt: int, count: int) -> np.ndarray:
        """The LCM's acceptable candidates of one batch in order of preference (the first is
        :meth:`replacement_code`'s), topped up with further variants when too few passed."""
        ranked = self._ranked_candidates(code, attempt, 0)
        if ranked is None:
            return super().pseudonym_codes(code, attempt, count)
        ranked = ranked[:count]
        extra = [self.replacement_code(code, attempt, variant) for variant in range(1, 1 + count - len(ranked))]
        return np.concatenate([ranked, np.reshape(extra, (-1, ranked.shape[1]))]) if extra else ranked

    def condition(self, wanted: Reading, seed: np.ndarray, count: int) -> torch.Tensor:
        """The code model's condition (count, C) for a person read as ``wanted`` whose registered
        code is ``seed``: their gender and age and, for a model conditioned on it, their face's
        lightness in their first photo (for a reading without it, the tone probe's reading of
        ``seed``)."""
        return self._condition(wanted, self._wanted_tone(wanted, seed), count)

    def _condition(self, wanted: Reading, tone: float | None, count: int) -> torch.Tensor:
        """:meth:`condition` for the person's wanted lightness ``tone`` (:meth:`_wanted_tone`)."""
        from idmrag_plugin.generation.code_diffusion import condition_of

        config = self._load_code_model().config
        if not config.on_tone:
            return condition_of([wanted] * count)
        if tone is None:
            raise ModelLoadError(f"{self.code_model_dir} is conditioned on the face's lightness, which this "
                                 "reading lacks and the attribute probes cannot read from a code")
        if not config.on_group:
            return condition_of([wanted] * count, [float(np.round(tone))] * count, config.tone_ceiling)
        if wanted.group is None:
            raise ModelLoadError(f"{self.code_model_dir} is conditioned on the perceived group, which "
                                 f"{self.attribute_probes_path} cannot read (no group probe); refit them with "
                                 "`idmrag fit-attribute-probes` on data with UTKFace's race labels")
        return condition_of([wanted] * count, [float(np.round(tone))] * count, config.tone_ceiling,
                            np.tile(np.asarray(wanted.group, np.float64), (count, 1)))

    def _wanted_tone(self, wanted: Reading, seed: np.ndarray) -> float | None:
        """The lightness a pseudonym should have: for a code model conditioned on it, the
        person's face's in their first photo (its condition); otherwise, or for a reading
        without it, the tone probe's reading of the person's code (None without that probe)."""
        if wanted.tone is not None and self._load_code_model().config.on_tone:
            return wanted.tone
        keeping = self._attribute_keeping()
        read = None if keeping is None else keeping[0].read_tone(np.asarray(seed)[None])
        return None if read is None else float(read[0])

    def _ranked_candidates(self, code: np.ndarray, attempt: int, variant: int) -> np.ndarray | None:
        """The candidate codes (M, D) of one LCM batch that pass the sampler's rules, best
        first; None where the sampler's own draws are used instead. Remembered (the last
        ``RANKINGS_KEPT``) by everything they follow from: this photo's code, the person's
        registered code and reading, the attempt, the variant and the pseudonym secret."""
        self._load()
        assert self._sampler is not None
        seed = self._seed_code(code)
        keeping = self._attribute_keeping()
        wanted = self._readings.get(np.asarray(seed).tobytes())
        if keeping is None or wanted is None or attempt >= SUITED_ATTEMPTS:
            # After a few unverified drawings a pseudonym of other attributes beats failing
            # closed: the sampler's unconstrained draws, as for the one-pass renderer.
            return None
        key = hashlib.blake2b(b"|".join([
            np.asarray(code, np.float64).tobytes(), np.asarray(seed, np.float64).tobytes(),
            repr((wanted, attempt, variant)).encode(), self.secret]), digest_size=16).digest()
        with self._lock:
            if key in self._rankings:
                self._rankings.move_to_end(key)
                known = self._rankings[key]
                return None if known is None else known.copy()
        ranked = self._rank_candidates(code, seed, wanted, keeping[0], attempt, variant)
        with self._lock:
            self._rankings[key] = None if ranked is None else ranked.copy()
            while len(self._rankings) > RANKINGS_KEPT:
                self._rankings.popitem(last=False)
        return ranked

    def _rank_candidates(self, code: np.ndarray, seed: np.ndarray, wanted: Reading, probes,
                         attempt: int, variant: int) -> np.ndarray | None:
        """:meth:`_ranked_candidates`, computed: one LCM batch sampled for ``wanted``, judged by
        the sampler's rules against ``code``, ranked by ``probes`` and by closeness to ``seed``."""
        from idmrag_plugin.generation.code_diffusion import generator_for, sample_codes

        model = self._load_code_model()
        wanted_tone = self._wanted_tone(wanted, seed)
        candidates = sample_codes(model, self._condition(wanted, wanted_tone, CANDIDATES), self.steps,
                                  generator_for(pseudonym_key(self.secret, seed, attempt, variant)))
        _, acceptable = self._sampler.judge(code, candidates, model.config.novelty_cos or None)
        if not acceptable.any():
            logger.info("none of %d LCM codes passed the sampler's rules; using the sampler's own", CANDIDATES)
            return None
        pool = np.flatnonzero(acceptable)
        mismatch = np.array([probes.mismatch(wanted, drawn) for drawn in probes.read_code(candidates[pool])])
        # Among the best-suited candidates, the one furthest from the person's identity: a
        # pseudonym of the person's gender and age is otherwise a nearer match than a random
        # one. Measured from the person's registered code, not this photo's: every photo of
        # the person then gets the same pseudonym (by this photo's code, 16 of 50 people's
        # two photos got two).
        closeness = _normalise(candidates[pool]) @ _normalise(seed)
        # Of the person's complexion first: a much lighter or darker drawing, toned to the
        # photo's face by the blend, shows its features as ghosts. Judged against the tone the
        # candidates were written for where the model has one: the probe can read a person's
        # own code far from their photo (a light-skinned man's code at 120 for a face at 167),
        # and a rule other than the condition's would favour the batch's outliers.
        tones = probes.read_tone(candidates[pool])
        if tones is None or wanted_tone is None:
            off_tone = np.zeros(len(pool))
        elif model.config.on_tone and wanted_tone >= model.config.tone_ceiling:
            # written for "light" (the condition's ceiling): any light candidate suits
            off_tone = (tones < model.config.tone_ceiling - TONE_TOLERANCE) * 1.0
        else:
            off_tone = (np.abs(tones - wanted_tone) > TONE_TOLERANCE) * 1.0
        order, suitability = candidate_order(mismatch, off_tone, self._likelier_fit(candidates[pool]), closeness)
        return self._clean_in_reference_first(candidates[pool[order]], suitability)
