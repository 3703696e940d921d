"""The renderer as the engine's generator: the face's own context, its attribute code and the
session's pseudonym code in; the crop with a newly drawn inner face out.

Pseudonyms come from the same codes model, sampler and registry as VAE-decode (one person
across a session's photos gets one synthetic identity; a retry draws another). The renderer
works at its training resolution; its drawing is redrawn at the crop's resolution by the
refiner when there is one (else resized) and composited through the inpainting mask at full
resolution, so everything outside the mask is the crop's own pixels, exactly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from idmrag_plugin.config import DEFAULT_FACE_BLEND, FACE_BLENDS
from idmrag_plugin.engine.blend import face_mask, poisson_blend, shift_tone
from idmrag_plugin.engine.face_outline import FaceOutliner, drawn_region, outline_of
from idmrag_plugin.engine.generator import GenerationRequest
from idmrag_plugin.engine.oracles import build_oracle, cosine
from idmrag_plugin.errors import ModelLoadError, UnfitDrawingError
from idmrag_plugin.generation.attributes import AttributeProbes, Reading, face_lightness
from idmrag_plugin.generation.chin import chin_smudge
from idmrag_plugin.generation.expression import mouth_opening
from idmrag_plugin.generation.eyes import eye_darkening
from idmrag_plugin.generation.forehead import forehead_smudge
from idmrag_plugin.generation.glasses import GlassesProbes, glasses_difference
from idmrag_plugin.generation.occluder import mask_over_face
from idmrag_plugin.generation.renderer import MASK_JITTER, inpaint_mask
from idmrag_plugin.generation.sampler import noise_seed
from idmrag_plugin.generation.sharpness import ALLOWANCE, WIDER_ALLOWANCE, as_sharp_as
from idmrag_plugin.generation.vae_generator import RESOLVED_MEMORY, VAEDecodeGenerator

logger = logging.getLogger(__name__)

#: Pseudonym candidates drawn per person and attempt when the identity student is there (the
#: drawing least like the person is kept). One by default: each further candidate costs a
#: sampler draw with its redraws and a rendering (about 3x the generate stage at 4).
PSEUDONYM_CANDIDATES = 1
#: Crops whose codes (and the original face's landmarks) are remembered: a face that fails
#: verification is drawn again from the same crop, whose encoding (about 15 ms on a CPU) need not
#: be computed again, and every drawing of it is composited and judged against the same landmarks.
ENCODINGS_KEPT = 64
#: Keeps the refiner's texture noise apart from the renderer's, both seeded by the pseudonym.
REFINER_NOISE_SALT = 0x5EED_F1E5
#: A drawing is *speckled*, a mottled mask of colour blotches rather than a face, when its fine
#: detail inside the mask, judged at 64 px whatever the renderer draws at (``speckle_score`` of
#: :mod:`idmrag_plugin.generation.speckle`, 8-bit levels) is above ``SPECKLE_LIMIT``. Set by eye
#: on 480 drawings (60 LFW contexts, 8 pseudonym codes each): the packaged renderer's clean
#: drawings score 1.3-1.7, the mottled ones 1.8-4.
SPECKLE_LIMIT = 1.8
#: A drawing is *washed out*, a pale, flat ghost of a face, when the spread of its luma over
#: the inner face is under ``GHOST_LIMIT`` of the photo's face's (``ghost_ratio`` of
#: :mod:`idmrag_plugin.generation.ghost`). On 240 held-out LFW faces the packaged stack's first
#: drawings had a median ratio of 0.84; the 5% under 0.5 were all pale, flat faces.
GHOST_LIMIT = 0.5
#: A drawing *smudges the forehead*, dark strands or blotches where the photo's forehead is
#: bare, when ``forehead_smudge`` (:mod:`idmrag_plugin.generation.forehead`: the share of the
#: forehead band darker than the cheeks, beyond the photo's share) is over ``SMUDGE_LIMIT``.
#: Set by eye on 186 LFW faces through the default engine: of the 16 drawings over 0.3, 11 were
#: a dark band, blotch or hair across a bare forehead (or in a headscarf), the others bangs
#: drawn where the person has hair over the forehead, or a turned face; with the screen, 1 of
#: 183 faces is over 0.3.
SMUDGE_LIMIT = 0.3
#: Likewise the chin and jaw (``chin_smudge`` of :mod:`idmrag_plugin.generation.chin`: stubble or
#: a dark smear where the photo's chin is bare), for a new pseudonym's drawings. Set by eye on
#: 183 LFW faces through the default engine of session 32 (mostly stubble or a smear on a bare
#: chin over it, a woman's among them; shading and darker complexions below); on 150 other LFW
#: photos, 16 of 182 faces were over it without the screen, 4 with it.
CHIN_SMUDGE_LIMIT = 0.25
#: Likewise the eyes (``eye_darkening`` of :mod:`idmrag_plugin.generation.eyes`: dark, sunken or
#: bruised-looking sockets where the photo's eyes are clear), for a new pseudonym's drawings. Set
#: by eye on 182 LFW faces through the default engine of session 33: over 0.25 nearly every
#: drawing had dark pits or a dark band across the eyes; under it, eyes drawn a little darker.
EYE_DARKENING_LIMIT = 0.25
#: And the other way round: a new pseudonym's drawing that leaves out the beard, moustache or
#: stubble the photo's chin has (``-chin_smudge`` over ``BEARD_DROP_LIMIT``) is unfit.
BEARD_DROP_LIMIT = 0.35
#: How far a drawing's mouth opening (:func:`~idmrag_plugin.generation.expression.mouth_opening`,
#: shares of the bridge-to-chin distance) may be from the photo's before a new pseudonym code's
#: drawing counts as unfit: 0.06 is a smile showing teeth drawn closed, or a closed mouth drawn
#: showing them. The person's own pseudonym is not judged on it (a person's expression changes
#: from photo to photo, their pseudonym should not), nor is a retry's: a drawing with the
#: person's expression is nearer them in the oracles' eyes, and a face once refused needs every
#: pseudonym the loop can try (judged at every attempt, 3.2% of the bench's faces failed closed
#: instead of 2.4%).
MOUTH_TOLERANCE = 0.06
#: A drawing off only in its mouth counts as barely unfit (at most this, the further off the
#: mouth the nearer): when every code drawn is unfit, the least unfit is kept, and a face of the
#: wrong gender, speckled or smudged is worse than one with another expression.
MOUTH_UNFITNESS_CAP = 1.05
#: Likewise for a drawing off only in its glasses (see :meth:`RendererGenerator.glasses_off`).
GLASSES_UNFITNESS_CAP = 1.05
#: Likewise for a drawing off only in its eyes' shade or its beard (see
#: :meth:`RendererGenerator.darkened_eyes`, :meth:`RendererGenerator.dropped_beard`): where
#: every code drawn is unfit, one of the wrong gender, speckled or smudged is not kept over it.
LOOK_UNFITNESS_CAP = 1.05
#: ... except eyes darkened this many times ``EYE_DARKENING_LIMIT`` or more: black pits for
#: eyes, which count in full, as a smudged forehead does. Capped, such a drawing was kept over
#: clean ones that the group screen put further off (LFW's Alfonso_Soriano_0001, darkening 0.41:
#: of twelve codes drawn, all read another group than his but this one, whose sockets read dark);
#: of 127 final drawings on 100 LFW photos none was darkened that much, 7 over the limit (0.23-0.32).
SUNKEN_EYES = 1.5
#: Where every code drawn for an attempt is unfit, the least unfit is kept unless it is this far
#: off (a face speckled or smudged over half again the limit, one that reads the other gender
#: with 0.75 or more, black pits for eyes...): then the attempt is refused
#: (:class:`~idmrag_plugin.errors.UnfitDrawingError`) and the next draws other codes. On 100 LFW
#: photos and the scenes (``benchmarks/focus_eval.py``, 151 faces) 8 faces took another
#: attempt for it, mean attempts 1.73 -> 1.78, none more failed closed; looked at, 5 of the 8 got
#: a visibly better face (Marilyn_Monroe_0001 a woman's where a man's was kept, a mottled face a
#: clean one, two small faces in a group photo without dark sockets or distortion), 3 alike.
GROSSLY_UNFIT = 1.5
#: A new pseudonym code's drawing that an oracle, reading the crop as composited, finds within
#: ``RECOGNISED_WITHIN[oracle]`` of the verifier's threshold of the original face counts as unfit
#: by ``RECOGNISED_UNFITNESS`` (see :meth:`RendererGenerator.recognised`): the verifier would
#: most likely refuse it, and another code costs one drawing where a refused attempt costs a
#: paste, a verification and a redraw. On 213 attempts at one-face LFW photos the verifier's
#: dlib similarity on the pasted photo followed the crop's (correlation 0.996) 0.010 higher (sd
#: 0.003, at most 0.018); on 195, its FaceNet similarity followed the crops' (the drawing's
#: and the original crop's, 0.994) 0.003 higher (sd 0.016, at most 0.063). Within these
#: margins (dlib 0.015, FaceNet 0.04) lay every attempt that oracle refused in its aligned view
#: but one. dlib's screen is nearly free (the look screens read its descriptor anyway); FaceNet's
#: costs a forward pass (18 ms) per drawing judged: on 200 LFW photos (265 faces) dlib's took
#: the mean attempts from 2.13 to 1.98, the faces failed closed from 21 to 18 and the time from
#: 343 to 324 s; FaceNet's added took the attempts to 1.90, failed none fewer, and the time to
#: 386 s, so it is off (add ``"facenet": 0.04`` to turn it on).
RECOGNISED_WITHIN: dict[str, float] = {"dlib": 0.015}
#: dlib's margin for a face the photo's frame cuts, read on the drawing with black beyond the
#: frame as the verifier's chips have it: on 160 such attempts (38 faces) the verifier's
#: similarity followed that reading (0.91) 0.013 higher with an sd of 0.012.
CUT_RECOGNISED_WITHIN = 0.025
#: Unfit, but less so than a drawing speckled, smudged or of the wrong gender: among drawings
#: all unfit, one the verifier would likely refuse is kept over them (it may pass; they would
#: be shown), and one off only in its mouth, glasses, eyes or beard is kept over it. A drawing
#: further over the margin counts further off, by up to ``RECOGNISED_SPREAD``: among drawings
#: all near the person, the least like them is kept.
RECOGNISED_UNFITNESS = 1.1
RECOGNISED_SPREAD = 0.1
#: Further pseudonym codes, in the generator's order of preference, drawn when the person's
#: first is speckled or washed out in this photo's context; of them the first fit one is used
#: (else the least unfit of all, see :meth:`RendererGenerator.unfitness`).
SPECKLE_ALTERNATES = 3
#: Further codes, in the same order, drawn one by one when the first and its
#: ``SPECKLE_ALTERNATES`` are all unfit in a photo, until one is fit: some contexts (a turned
#: face, hair across it) are drawn speckled by most codes, and the least unfit of four was
#: still a mottled mask (an LFW photo: the first four scored 1.7-2.0, the eleventh 0.9).
FURTHER_ALTERNATES = 8
#: How unfit (see :meth:`RendererGenerator.unfitness`) the person's own pseudonym, the one drawn
#: fit in an earlier photo of theirs, may be drawn in a later photo before an alternate replaces
#: it there; among drawings all unfit, its score counts divided by this. A replaced pseudonym
#: shows one person as two: on 100 LFW people's two photos, 20 of the second photos drew the
#: person's code unfit (most scored 1.0-1.3) and were given another, and every one of the 22
#: pairs dlib judged two people had two codes (one code in both photos: 46 of 46 judged alike).
KEPT_UNFITNESS = 1.2
#: A person's pseudonym is the first of this many suitable codes, in the generator's order of
#: preference, that the renderer draws clean in the speckle reference context (see
#: :mod:`idmrag_plugin.generation.speckle_reference`); the first one when none is.
REFERENCE_LOOKAHEAD = 8
#: How far (log(1 + years)) the age a drawing reads as may be from the person's before the
#: drawing counts as unfit (see :meth:`RendererGenerator.misdrawn`): 0.4 is 30 drawn as 45 or
#: 20, 60 drawn as 90 or 40; the code probes' own tolerance (``AGE_TOLERANCE``, 0.25) is
#: tighter, but a reading of one drawing is noisier than a probe fitted on thousands.
DRAWN_AGE_TOLERANCE = 0.4
#: A person whose photo the group probe reads as one perceived group (GROUP_LABELS) with at least
#: GROUP_SURE gets a drawing unfit (see :meth:`RendererGenerator.misdrawn`) when it reads that
#: group with under DRAWN_GROUP_FLOOR. The renderer draws white-featured faces for most codes of
#: any complexion: of 12 codes drawn for a Black woman (read 0.78 Black), 8 read White at
#: 0.76-0.99 and Black at 0.00-0.02, two Indian, two Black (0.80, 0.91).
GROUP_SURE = 0.6
DRAWN_GROUP_FLOOR = 0.25
#: Codes whose verdict in the reference context is remembered (one renderer pass each).
REFERENCE_VERDICTS_KEPT = 4096


def _forward(exported, module, inputs: tuple, noise: list):
    """``module(*inputs, noise=noise)``, on ONNX Runtime when ``exported`` is its export."""
    import torch

    if exported is None:
        return module(*inputs, noise=noise)
    return torch.from_numpy(exported.run(*(t.numpy() for t in (*inputs, *noise)))[0])


def _is_grey(face: np.ndarray, tolerance: float = 3.0) -> bool:
    """True for a black-and-white crop (channels equal up to JPEG noise)."""
    f = face.astype(np.int16)
    return float(np.abs(f[..., 0] - f[..., 1]).mean() + np.abs(f[..., 1] - f[..., 2]).mean()) < tolerance


#: From this attempt on (0-based), a face is redrawn over the widest inpainting ellipse the
#: renderer was trained with: the faces that fail closed are mostly ones the oracles still
#: recognise after several pseudonyms, by what lies around the inner face. (A person's own
#: pseudonym refused in one of their photos is drawn again over it at once: see
#: ``kept_pseudonym_retries``.)
WIDER_MASK_FROM_ATTEMPT = 2
#: Width (share of the crop's side) of the soft seam, outside both faces, where the drawing gives
#: way to the photo (``keep_outside_face``).
OUTLINE_FEATHER = 0.04


class RendererGenerator(VAEDecodeGenerator):
    """Draw replacement faces with a :class:`~idmrag_plugin.generation.renderer.FaceRenderer`.

    Args:
        renderer_dir: folder written by ``idmrag train-renderer`` (``OUTPUT/renderer``).
        model_dir, sampler_path: the codes VAE and identity sampler (as for VAE-decode).
        attribute_probes_path, student_path: the probes of ``idmrag fit-attribute-probes`` for
            this renderer and the identity student they read; with them, pseudonym codes are
            redrawn until the renderer draws them with the person's perceived gender and age.
        candidates: pseudonym codes drawn at a person's first photo (per attempt) when the
            student is there; the drawing it finds least like the person is kept.
        refiner_dir: folder written by ``idmrag train-refiner`` (``OUTPUT/refiner``): the
            renderer's drawing is redrawn at the refiner's resolution (the crop's, 128 px)
            with the detail a face has there; without it the drawing is resized up.
        blend: how the drawing meets the photo (``AnonymizerConfig.face_blend``):
            ``"poisson-tone"`` (seamless: the drawing's gradients, the photo's colours at the
            edge, so a rim the renderer drew lighter leaves no seam; then the face's mean tone
            moved to the original's inside the face), ``"poisson"`` (the blend alone) or
            ``"tone"`` (hard edge, mean tone moved to the original's).
        keep_outside_face: keep the photo's own pixels inside the drawn ellipse where neither
            face is (hair above the forehead, background beside the cheeks, neck and collar
            under the chin; see :mod:`idmrag_plugin.engine.face_outline`);
            ``AnonymizerConfig.keep_outside_face``.
        keep_expression: judge a new pseudonym's drawing at the first try at a face by its
            mouth too (:meth:`misexpressed`); ``AnonymizerConfig.keep_expression``.
        glasses_probe_path: :class:`~idmrag_plugin.generation.glasses.GlassesProbes` (the
            photo's and the drawing's); with them a drawing that adds glasses to a face without
            them, or drops them from a face wearing them, counts as unfit (:meth:`glasses_off`); ``AnonymizerConfig.keep_glasses``.
        match_sharpness: blur a drawing clearly sharper than the photo's face down to about its
            fine detail (:mod:`~idmrag_plugin.generation.sharpness`; from
            ``WIDER_MASK_FROM_ATTEMPT`` on, to twice its detail); ``AnonymizerConfig.match_sharpness``.
        runtime, cache_dir, threads: ``"auto"`` / ``"onnxruntime"`` run the codes encoder, the
            renderer and the refiner on ONNX Runtime on a CPU (exported once into ``cache_dir``,
            see :mod:`idmrag_plugin.generation.onnx_networks`); ``"torch"`` (default) does not.
    """

    name = "renderer"
    # The crop it returns already fits its own context (blended into it): no colour transfer,
    # and it is pasted over the whole ellipse it was drawn in (see paste_grow_for).
    colour_match = False
    #: A person's pseudonym refused in a photo is drawn there once more, over the wider mask
    #: of ``WIDER_MASK_FROM_ATTEMPT``, before another (their photos otherwise show two people).
    kept_pseudonym_retries = 1

    def __init__(
        self,
        renderer_dir: str | Path,
        model_dir: str | Path,
        sampler_path: str | Path,
        device: str = "cpu",
        secret: bytes | None = None,
        attribute_probes_path: str | Path | None = None,
        student_path: str | Path | None = None,
        candidates: int = PSEUDONYM_CANDIDATES,
        refiner_dir: str | Path | None = None,
        blend: str = DEFAULT_FACE_BLEND,
        keep_outside_face: bool = True,
        keep_expression: bool = True,
        glasses_probe_path: str | Path | None = None,
        match_sharpness: bool = True,
        runtime: str = "torch",
        cache_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(model_dir, sampler_path, device=device, secret=secret, runtime=runtime,
                         cache_dir=cache_dir, threads=threads)
        if blend not in FACE_BLENDS:
            raise ModelLoadError(f"blend must be one of {', '.join(FACE_BLENDS)}, got {blend!r}")
        self.blend = blend
        self.keep_outside_face = keep_outside_face
        self.keep_expression = keep_expression
        self.match_sharpness = match_sharpness
        self.glasses_probe_path = Path(glasses_probe_path) if glasses_probe_path is not None else None
        self._glasses: GlassesProbes | None = None
        self._outliner = FaceOutliner()
        if candidates < 1:
            raise ModelLoadError(f"candidates must be at least 1, got {candidates}")
        self.renderer_dir = Path(renderer_dir)
        if (attribute_probes_path is None) != (student_path is None):
            raise ModelLoadError("keeping gender and age needs both attribute_probes_path and student_path (or neither)")
        self.attribute_probes_path = Path(attribute_probes_path) if attribute_probes_path is not None else None
        self.student_path = Path(student_path) if student_path is not None else None
        self._probes: tuple[AttributeProbes, object] | None = None
        self._reader = None  # dlib's descriptor, for dlib-reading probes when a request brings no embedding
        self._oracles: dict[str, object] = {}  # the recognition screen's other oracles (recognised)
        self._crop_embeddings: dict[str, OrderedDict[bytes, np.ndarray]] = {}  # oracle -> crop -> embedding
        self._renderer = None
        self._renderer_onnx = None
        self.refiner_dir = Path(refiner_dir) if refiner_dir is not None else None
        self._refiner = None
        self._refiner_onnx = None
        self._encodings: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._points: OrderedDict[bytes, np.ndarray] = OrderedDict()  # the original face's 68 landmarks
        self._face_masks: OrderedDict[bytes, np.ndarray | None] = OrderedDict()  # a mask it wears
        self._photo_glasses: OrderedDict[bytes, float] = OrderedDict()  # P(glasses) of the original face
        self._renderer_lock = threading.Lock()
        self._masks: dict[tuple[int, float], np.ndarray] = {}
        self._nearest_kept: dict[bytes, np.ndarray] = {}  # a mask's bytes -> each masked pixel's nearest kept one
        self.candidates = candidates
        self._reference: tuple[np.ndarray, np.ndarray] | None = None  # the reference context's crop and attribute code
        self._reference_verdicts: OrderedDict[bytes, bool] = OrderedDict()  # code -> speckled there
        #: When a list, every code drawn into a photo's context is appended to it as (code,
        #: unfitness, pseudonym attempt, whether it was the one chosen): the data ``idmrag
        #: fit-code-fitness`` fits on.
        self.drawing_log: list[tuple[np.ndarray, float, int, bool]] | None = None

    def _start_scope(self) -> None:
        super()._start_scope()
        self._readings: dict[bytes, Reading] = {}  # the person's registered code -> their gender and age
        self._grows: OrderedDict[int, float] = OrderedDict()  # request seed -> ellipse drawn in
        self._chosen: dict[bytes, dict[int, np.ndarray]] = {}  # person -> attempt -> the pseudonym kept
        self._unspeckled: dict[bytes, dict[int, np.ndarray]] = {}  # person -> attempt -> the code drawn clean last

    def _forget(self, person: bytes) -> None:
        super()._forget(person)
        self._readings.pop(person, None)
        self._chosen.pop(person, None)
        self._unspeckled.pop(person, None)

    def _load_renderer(self):
        if self._renderer is None:
            with self._renderer_lock:
                if self._renderer is None:
                    from idmrag_plugin.generation.latent_diffusion import codes_fingerprint
                    from idmrag_plugin.generation.onnx_networks import RendererGraph
                    from idmrag_plugin.generation.renderer import FaceRenderer

                    renderer = FaceRenderer.from_pretrained(self.renderer_dir)
                    trained_on = renderer.config.codes_sha256
                    if trained_on and trained_on != codes_fingerprint(self.model_dir):
                        raise ModelLoadError(
                            f"{self.renderer_dir} was trained on codes model {trained_on[:12]}, not on "
                            f"{self.model_dir}; retrain it with `idmrag train-renderer --codes {self.model_dir}`"
                        )
                    renderer = renderer.to(self.device)
                    c = renderer.config
                    self._renderer_onnx = self._on_onnxruntime(
                        RendererGraph(renderer),
                        [(1, 3, c.image_size, c.image_size), (1, 1, c.image_size, c.image_size), (1, c.id_dim),
                         (1, c.attr_channels, c.bottleneck_size, c.bottleneck_size), *renderer.noise_shapes(1)],
                        "renderer", self.renderer_dir)
                    self._renderer = renderer
        return self._renderer

    def _load_refiner(self):
        """The refiner, or None when the generator has none; loaded once."""
        if self.refiner_dir is None:
            return None
        if self._refiner is None:
            drawn_at = self._load_renderer().config.image_size
            with self._renderer_lock:
                if self._refiner is None:
                    from idmrag_plugin.generation.onnx_networks import RefinerGraph
                    from idmrag_plugin.generation.refiner import FaceRefiner

                    refiner = FaceRefiner.from_pretrained(self.refiner_dir).to(self.device)
                    c = refiner.config
                    if drawn_at >= c.image_size:
                        # a renderer that draws at the refiner's resolution (128 px) already
                        logger.debug("the refiner in %s draws at %d px and the renderer already at %d px: its "
                                     "drawings are used as drawn", self.refiner_dir, c.image_size, drawn_at)
                        self.refiner_dir = None
                        return None
                    self._refiner_onnx = self._on_onnxruntime(
                        RefinerGraph(refiner),
                        [(1, 3, c.image_size, c.image_size), (1, 1, c.image_size, c.image_size),
                         (1, 3, c.input_size, c.input_size), *refiner.noise_shapes(1, c.image_size)],
                        "refiner", self.refiner_dir)
                    self._refiner = refiner
        return self._refiner

    def _attribute_keeping(self) -> tuple[AttributeProbes, object] | None:
        """(probes, identity student) when gender and age are kept, else None; loaded once."""
        if self.attribute_probes_path is None or self.student_path is None:
            return None
        if self._probes is None:
            with self._renderer_lock:
                if self._probes is None:
                    from idmrag_plugin.generation.identity_student import IdentityStudent
                    from idmrag_plugin.weights import MODEL_CONFIG

                    probes = AttributeProbes.load(self.attribute_probes_path)
                    drawn_by = json.loads((self.renderer_dir / MODEL_CONFIG).read_text()).get("sha256", "")
                    if probes.renderer_sha256 != drawn_by:
                        raise ModelLoadError(
                            f"{self.attribute_probes_path} describes renderer {probes.renderer_sha256[:12]}, not "
                            f"{self.renderer_dir}; refit them with `idmrag fit-attribute-probes --renderer "
                            f"{self.renderer_dir}`, or build the generator without attribute probes"
                        )
                    self._probes = (probes, IdentityStudent.load(self.student_path).to(self.device).eval())
        return self._probes

    def _note_person(self, code: np.ndarray, face: np.ndarray,
                     original_embeddings: Mapping[str, np.ndarray] | None = None) -> None:
        """Register the perceived gender and age of the person whose code is ``code`` from this
        photo, unless they were seen before (one person keeps one pseudonym across photos)."""
        person = self._seed_code(code, original_embeddings).tobytes()
        keeping = self._attribute_keeping()
        if keeping is None:
            return
        if person in self._readings:
            return
        probes = keeping[0]
        if probes.image_reader == "dlib":
            embedding = (original_embeddings or {}).get("dlib")
            if embedding is None:
                embedding = self._dlib_embedding(face)
            reading = probes.read_image(np.asarray(embedding, np.float64)[None])[0]
        else:
            reading = probes.read_image(self._student_embedding(face, keeping[1]))[0]
        # whole L* steps: the reading conditions the pseudonym, which must not depend on where the engine ran
        reading = replace(reading, tone=float(np.round(face_lightness(face[None])[0])))
        with self._lock:
            self._readings.setdefault(person, reading)

    def _student_embedding(self, face: np.ndarray, student) -> np.ndarray:
        import torch

        self._load()  # the student reads at the codes model's resolution
        side = self._model.config.image_size  # type: ignore[union-attr]
        small = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
        x = torch.as_tensor(small, device=self.device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        with torch.inference_mode():
            return student(x).cpu().numpy()

    def _dlib_embedding(self, face: np.ndarray) -> np.ndarray:
        """dlib's descriptor of an aligned crop, for a request that brings none (the generator
        used outside the engine); the oracle is built once, on first use."""
        if self._reader is None:
            with self._renderer_lock:
                if self._reader is None:
                    from idmrag_plugin.engine.oracles import build_oracle

                    self._reader = build_oracle("dlib", device=self.device)
        return self._reader.embed_aligned(face[None])[0]

    def sampler_keeps_attributes(self) -> bool:
        """The sampler's probes read the codes, not what this renderer draws: with attribute
        probes of its own the renderer judges gender and age itself."""
        return self._attribute_keeping() is None

    def mismatch(self, person: np.ndarray, code: np.ndarray) -> float:
        """0 for a pseudonym the renderer draws with the person's perceived gender and about
        their age (read from their photo), see :mod:`idmrag_plugin.generation.attributes`;
        else 1 for the wrong gender plus how far the age is beyond the tolerance."""
        keeping = self._attribute_keeping()
        wanted = self._readings.get(np.asarray(person).tobytes())
        if keeping is None or wanted is None:
            return 0.0
        return keeping[0].mismatch(wanted, keeping[0].read_code(code)[0])

    def mask_grow_for(self, attempt: int) -> float:
        """The inpainting ellipse's size (relative to the face ellipse) at ``attempt``: the
        renderer's own, and from ``WIDER_MASK_FROM_ATTEMPT`` on the widest it was trained with,
        so that a face still recognised by what surrounds the inner face (hairline, brows,
        the jaw's outline) gets more of it redrawn."""
        grow = float(self._load_renderer().config.mask_grow)
        return grow * MASK_JITTER[1] if attempt >= WIDER_MASK_FROM_ATTEMPT else grow

    def paste_grow_for(self, attempt: int) -> float:
        # Pasted over the whole drawn ellipse: the Poisson blend already met the photo at its edge.
        return self.mask_grow_for(attempt)

    def paste_grow_of(self, request: GenerationRequest) -> float:
        with self._lock:
            grow = self._grows.get(request.seed)
        return self.paste_grow_for(request.attempt) if grow is None else grow

    def mask(self, size: int, grow: float | None = None) -> np.ndarray:
        """The inpainting mask at ``size`` px (1 = drawn by the renderer), of the renderer's
        own size unless ``grow`` says otherwise."""
        grow = float(self._load_renderer().config.mask_grow) if grow is None else grow
        key = (size, round(grow, 6))
        if key not in self._masks:
            self._masks[key] = inpaint_mask(size, grow)
        return self._masks[key]

    def _encoded(self, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`encode` of one crop, remembered for its later attempts (same crop, same codes)."""
        return self._per_crop(self._encodings, face, lambda f: self.encode(f[None]))

    def _original_points(self, face: np.ndarray) -> np.ndarray:
        """The original face's 68 landmarks in its crop, remembered for every drawing composited
        there."""
        return self._per_crop(self._points, face, self._outliner.points)

    def _original_outline(self, face: np.ndarray) -> np.ndarray | None:
        """The original face's outline in its crop (see :func:`outline_of`)."""
        return outline_of(self._original_points(face), face.shape[0])

    def _per_crop(self, store: OrderedDict, face: np.ndarray, compute):
        """``compute(face)``, remembered in ``store`` (the last ``ENCODINGS_KEPT`` crops) by the
        crop's content."""
        key = hashlib.blake2b(np.asarray(face.shape, np.int64).tobytes() + face.tobytes(), digest_size=16).digest()
        with self._lock:
            if key in store:
                store.move_to_end(key)
                return store[key]
        value = compute(face)
        with self._lock:
            store[key] = value
            while len(store) > ENCODINGS_KEPT:
                store.popitem(last=False)
        return value

    def _kept_only(self, face: np.ndarray, grow: float | None = None) -> np.ndarray:
        """``face`` with every pixel under the inpainting mask replaced by its nearest pixel
        outside it: resized to a network's resolution, the context then mixes no pixel of the
        original's inner face into its ring at the mask's edge."""
        inside = self.mask(face.shape[0], grow) > 0.5
        key = inside.tobytes()
        nearest = self._nearest_kept.get(key)
        if nearest is None:
            _, labels = cv2.distanceTransformWithLabels(inside.astype(np.uint8), cv2.DIST_L2, 5,
                                                        labelType=cv2.DIST_LABEL_PIXEL)
            where = np.zeros((int(labels.max()) + 1, 2), np.int64)  # label of a kept pixel -> (y, x)
            where[labels[~inside]] = np.argwhere(~inside)
            nearest = where[labels[inside]]
            self._nearest_kept[key] = nearest
        out = face.copy()
        out[inside] = face[nearest[:, 0], nearest[:, 1]]
        return out

    def generate(self, request: GenerationRequest) -> np.ndarray:
        face = request.face
        id_mu, attr_mu = self._encoded(face)
        grow = self.mask_grow_for(request.attempt)
        if request.identity is not None:
            return self._composite(self._render(np.atleast_2d(request.identity), face, attr_mu, grow)[0], face, grow)
        self._note_person(id_mu[0], face, request.original_embeddings)
        attempt, retried = self._pseudonym_choice(id_mu[0], request.attempt, request.seed)
        if retried:
            grow = self.mask_grow_for(WIDER_MASK_FROM_ATTEMPT)
        with self._lock:
            self._grows[request.seed] = grow  # the ellipse it is pasted over (paste_grow_of)
            if len(self._grows) > RESOLVED_MEMORY:
                self._grows.popitem(last=False)
        keep_mouth = self.keep_expression and request.attempt == 0
        return self._draw_pseudonym(id_mu[0], face, attr_mu, attempt, grow, keep_mouth, request)

    def _draw_pseudonym(self, code: np.ndarray, face: np.ndarray, attr_mu: np.ndarray, attempt: int,
                        grow: float | None = None, keep_mouth: bool = True,
                        request: GenerationRequest | None = None) -> np.ndarray:
        """Draw the person's pseudonym for this attempt.

        With one candidate, the person's pseudonym code unless drawn speckled (see
        :meth:`_draw_unspeckled`). With several, at the person's first photo ``candidates``
        codes are drawn and the drawing the identity student finds least like this face is kept
        (a speckled one only when all are), its code registered so that the person's other
        photos get the same pseudonym; a registered code that is not distinct from *this*
        photo's code (the sampler's rule) is not reused for it."""
        keeping = self._attribute_keeping()
        count = self.candidates if keeping is not None else 1
        if count == 1:
            return self._draw_unspeckled(code, face, attr_mu, attempt, grow, keep_mouth, request)
        assert keeping is not None and self._sampler is not None
        person = self._seed_code(code).tobytes()
        with self._lock:
            chosen = self._chosen.get(person, {}).get(attempt)
        if chosen is not None and self._sampler.judge(code, chosen[None])[0][0]:
            return self._composite(self._render(chosen[None], face, attr_mu, grow)[0], face, grow)
        codes = self.pseudonym_codes(code, attempt, count)
        raw = self._draw(codes, face, attr_mu, grow)
        drawings = self._finish(raw, face, codes, grow)
        likeness = self._likeness(drawings, face, keeping[1])
        # a speckled or washed-out drawing is no face to keep, however unlike the person
        shown = [self._composite(d, face, grow) for d in drawings]
        off = np.array([max(self.smudged(one, face), self.smudged_chin(one, face), self.dropped_beard(one, face),
                            self.darkened_eyes(one, face), self.misexpressed(one, face) if keep_mouth else 0.0,
                            self.glasses_off(one, face)) for one in shown])
        likeness[np.maximum(self.unfitness(raw, face, grow), off) > 1.0] += 2.0
        best = int(np.argmin(likeness))
        if chosen is None:
            with self._lock:
                registered = self._chosen.setdefault(person, {}).setdefault(attempt, codes[best])
            if not np.array_equal(registered, codes[best]) and self._sampler.judge(code, registered[None])[0][0]:
                # another thread chose first for this person
                return self._composite(self._render(registered[None], face, attr_mu, grow)[0], face, grow)
        return shown[best]

    def _likeness(self, drawings: np.ndarray, face: np.ndarray, student) -> np.ndarray:
        """Cosine similarity of each drawing to ``face`` in the identity student's eyes."""
        import torch

        side = self._model.config.image_size  # type: ignore[union-attr]
        batch = np.stack([cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA) for im in [face, *drawings]])
        x = torch.as_tensor(batch, device=self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.inference_mode():
            e = torch.nn.functional.normalize(student(x), dim=1).cpu().numpy()
        return e[1:] @ e[0]

    def pseudonym_codes(self, code: np.ndarray, attempt: int, count: int) -> np.ndarray:
        """``count`` pseudonym codes (count, D) for ``attempt``, in order of preference; the
        first is :meth:`replacement_code`'s."""
        return np.stack([self.replacement_code(code, attempt, variant) for variant in range(count)])

    def speckle(self, drawn, grow: float | None = None) -> np.ndarray:
        """Speckle scores (K,) of the renderer's drawings (K, 3, r, r) in the mask of ``grow``;
        above ``SPECKLE_LIMIT`` a drawing is a mottled mask rather than a face."""
        import torch

        from idmrag_plugin.generation.speckle import speckle_score

        mask = torch.as_tensor(self.mask(drawn.shape[-1], grow))[None, None]
        return speckle_score(drawn.float().cpu(), mask).numpy()

    def unfitness(self, drawn, face: np.ndarray, grow: float | None = None) -> np.ndarray:
        """How far each of the renderer's drawings (K, 3, r, r) of ``face``'s context is from a
        face to keep, (K,): above 1 it is speckled (its speckle score over ``SPECKLE_LIMIT``) or
        washed out (its luma spread under ``GHOST_LIMIT`` of the photo's face's), whichever is
        further off."""
        from idmrag_plugin.generation.ghost import ghost_ratio

        speckled = self.speckle(drawn, grow) / SPECKLE_LIMIT
        washed_out = GHOST_LIMIT / np.maximum(ghost_ratio(drawn, face), 1e-3)
        return np.maximum(speckled, washed_out)

    def smudged(self, shown: np.ndarray, face: np.ndarray) -> float:
        """How far a drawing, as the engine shows it (the crop, composited), smudges the
        forehead of ``face``'s photo (see :mod:`~idmrag_plugin.generation.forehead`), in the
        scale of :meth:`unfitness`: above 1, dark strands or blotches where the photo's forehead
        is bare."""
        return max(forehead_smudge(shown, face), 0.0) / SMUDGE_LIMIT

    def smudged_chin(self, shown: np.ndarray, face: np.ndarray) -> float:
        """How far a drawing, as the engine shows it (the crop, composited), darkens the chin of
        ``face``'s photo (see :mod:`~idmrag_plugin.generation.chin`), in the scale of
        :meth:`unfitness`: above 1, stubble or a dark smear where the photo's chin is bare. Not
        judged for the person's own pseudonym in their later photos (as the mouth is not): a
        kept pseudonym refused for its chin would show one person as two."""
        return max(chin_smudge(shown, face), 0.0) / CHIN_SMUDGE_LIMIT

    def dropped_beard(self, shown: np.ndarray, face: np.ndarray) -> float:
        """How far a drawing, as the engine shows it (the crop, composited), leaves out the
        beard, moustache or stubble of ``face``'s photo (the chin-and-jaw band's dark share, see
        :mod:`~idmrag_plugin.generation.chin`, less than the photo's), in the scale of
        :meth:`unfitness`: above 1, a bearded face drawn clean-shaven, at most
        ``LOOK_UNFITNESS_CAP``. Not applied to a person's kept pseudonym, for the reason
        :meth:`smudged_chin` gives."""
        return _squeezed(max(-chin_smudge(shown, face), 0.0) / BEARD_DROP_LIMIT, LOOK_UNFITNESS_CAP)

    def darkened_eyes(self, shown: np.ndarray, face: np.ndarray) -> float:
        """How far a drawing, as the engine shows it (the crop, composited), darkens the eyes of
        ``face``'s photo (see :mod:`~idmrag_plugin.generation.eyes`), in the scale of
        :meth:`unfitness`: above 1, dark sunken sockets where the photo's eyes are clear, at most
        ``LOOK_UNFITNESS_CAP`` unless ``SUNKEN_EYES`` or more. Not applied to a person's kept
        pseudonym, for the reason :meth:`smudged_chin` gives."""
        off = max(eye_darkening(shown, face), 0.0) / EYE_DARKENING_LIMIT
        return off if off >= SUNKEN_EYES else _squeezed(off, LOOK_UNFITNESS_CAP)

    def misexpressed(self, shown: np.ndarray, face: np.ndarray) -> float:
        """How far a drawing, as the engine shows it (the crop, composited), opens the mouth
        otherwise than the photo's face ``face`` (see :mod:`~idmrag_plugin.generation.expression`),
        in the scale of :meth:`unfitness`: the difference in units of ``MOUTH_TOLERANCE``, at
        most ``MOUTH_UNFITNESS_CAP``."""
        drawn = mouth_opening(self._outliner.points(shown))
        return _squeezed(abs(drawn - mouth_opening(self._original_points(face))) / MOUTH_TOLERANCE,
                         MOUTH_UNFITNESS_CAP)

    def glasses_off(self, shown: np.ndarray, face: np.ndarray,
                    descriptor: Callable[[], np.ndarray] | None = None) -> float:
        """How far a drawing, as the engine shows it (the crop, composited), shows glasses
        otherwise than ``face``'s photo (added to a bare face, or clearly dropped from a face
        wearing them; see :mod:`~idmrag_plugin.generation.glasses`), in the scale of
        :meth:`unfitness`, at most ``GLASSES_UNFITNESS_CAP``; 0 without a glasses probe.
        ``descriptor``: dlib's descriptor of ``shown``, when the caller has it."""
        probes = self._glasses_probes()
        if probes is None:
            return 0.0
        photo = self._per_crop(self._photo_glasses, face,
                               lambda f: float(probes.photo.read(f[None], self._dlib_embedding(f))[0]))
        drawn = float(probes.drawing.read(shown[None], descriptor() if descriptor is not None
                                          else self._dlib_embedding(shown))[0])
        return _squeezed(glasses_difference(photo, drawn), GLASSES_UNFITNESS_CAP)

    def _glasses_probes(self) -> GlassesProbes | None:
        if self._glasses is None and self.glasses_probe_path is not None:
            with self._renderer_lock:
                if self._glasses is None:
                    self._glasses = GlassesProbes.load(self.glasses_probe_path)
        return self._glasses

    def recognised(self, shown: np.ndarray, request: GenerationRequest,
                   descriptor: Callable[[], np.ndarray] | None = None) -> float:
        """``RECOGNISED_UNFITNESS`` (plus how far over, up to ``RECOGNISED_SPREAD``) when an
        oracle that the verifier judges with (its threshold in ``request.thresholds``) finds a
        drawing, as the engine shows it, within ``RECOGNISED_WITHIN`` of its threshold of the
        original face or above it (the original's embedding the request's, else of the
        request's crop), the verifier then most likely recognising the person; else 0. dlib is
        asked first (``descriptor``: its descriptor of ``shown``, when the caller has it); for a
        face the frame cuts it reads the drawing with black beyond the frame, as the verifier
        sees it (``CUT_RECOGNISED_WITHIN``). FaceNet, when on, only when dlib is not near."""
        thresholds = request.thresholds or {}
        given = request.original_embeddings or {}
        for name, within in RECOGNISED_WITHIN.items():
            if name not in thresholds:
                continue
            if name == "dlib":
                if request.in_frame is not None:
                    drawn = self._dlib_embedding(_framed(shown, request.in_frame))
                    within = CUT_RECOGNISED_WITHIN
                else:
                    drawn = descriptor() if descriptor is not None else self._dlib_embedding(shown)
                original = given.get(name)
                if original is None:
                    original = self._dlib_embedding(request.face if request.in_frame is None
                                                    else _framed(request.face, request.in_frame))
            else:
                oracle = self._oracle(name)
                drawn = oracle.embed_aligned(shown[None])[0]
                original = given.get(name)
                if original is None:
                    original = self._per_crop(self._crop_embeddings.setdefault(name, OrderedDict()), request.face,
                                              lambda f, o=oracle: o.embed_aligned(f[None])[0])
            over = float(cosine(np.asarray(drawn, np.float64)[None], np.asarray(original, np.float64)[None])[0]) \
                - (thresholds[name] - within)
            if over >= 0.0:
                return RECOGNISED_UNFITNESS + min(over, RECOGNISED_SPREAD)
        return 0.0

    def _oracle(self, name: str):
        """An oracle of the verifier's kind (exact: no int8 screening), built once on first use."""
        if name not in self._oracles:
            with self._renderer_lock:
                if name not in self._oracles:
                    self._oracles[name] = build_oracle(name, device=self.device, cache_dir=self.cache_dir,
                                                       threads=self.threads, screening=False)
        return self._oracles[name]

    def misdrawn(self, shown: np.ndarray, wanted: Reading, age: bool = True,
                 descriptor: Callable[[], np.ndarray] | None = None) -> float:
        """How far a drawing, as the engine shows it (the crop, composited), is from the person's
        perceived gender, age and group ``wanted``, read from the drawing itself by the image
        probes (dlib's descriptor), in the scale of :meth:`unfitness`: the age difference in
        units of ``DRAWN_AGE_TOLERANCE`` (at most 1, fit, within it), for the other gender at
        least 1 plus how sure that reading is, and, for a person read as one group with at least
        ``GROUP_SURE``, 1 plus the shortfall when the drawing reads that group with less than
        ``DRAWN_GROUP_FLOOR`` (with a group probe). Age and group are not judged unless ``age``
        (the person's own pseudonym answers for its gender only).

        The code probes that rank candidates read the gender the renderer draws from the code
        alone, over random contexts (86-92% held out); this photo's context decides the rest
        (the hair around the face, the jaw's outline), and the drawing shows it. ``descriptor``:
        dlib's descriptor of ``shown``, when the caller has it."""
        keeping = self._attribute_keeping()
        if keeping is None:
            return 0.0
        probes = keeping[0]
        if probes.image_reader == "dlib":
            embedding = np.asarray(descriptor() if descriptor is not None else self._dlib_embedding(shown),
                                   np.float64)[None]
        else:
            embedding = np.asarray(self._student_embedding(shown, keeping[1]), np.float64)
        weight, bias = probes.image_gender
        label_1 = float(1.0 / (1.0 + np.exp(-(embedding[0] @ weight + bias))))
        gender_off = 0.0 if (label_1 > 0.5) == wanted.gender else 1.0 + 2.0 * abs(label_1 - 0.5)
        if not age:
            return gender_off
        age_off = abs(probes.read_image(embedding)[0].log_age - wanted.log_age) / DRAWN_AGE_TOLERANCE
        return max(gender_off, age_off, self._group_off(probes, embedding, wanted))

    @staticmethod
    def _group_off(probes: AttributeProbes, embedding: np.ndarray, wanted: Reading) -> float:
        """:meth:`misdrawn`'s group term: 0, or 1 plus how far under DRAWN_GROUP_FLOOR the
        drawing reads the group the person's photo surely reads as."""
        if wanted.group is None or max(wanted.group) < GROUP_SURE or probes.image_reader != "dlib":
            return 0.0
        drawn = probes.read_group(embedding)
        if drawn is None:
            return 0.0
        kept = float(drawn[0][int(np.argmax(wanted.group))])
        return 0.0 if kept >= DRAWN_GROUP_FLOOR else 1.0 + (DRAWN_GROUP_FLOOR - kept)

    def speckled_in_reference(self, code: np.ndarray) -> bool:
        """Whether the renderer draws ``code`` speckled in the speckle reference context, a
        fixed photo where codes drawn clean tend to be drawn clean in other photos too (see
        :mod:`idmrag_plugin.generation.speckle_reference`). Remembered per code."""
        key = np.asarray(code, np.float32).tobytes()
        with self._lock:
            known = self._reference_verdicts.get(key)
            if known is not None:
                self._reference_verdicts.move_to_end(key)
                return known
        if self._reference is None:
            from idmrag_plugin.generation.speckle_reference import CROP_SIZE, reference_crop

            self._load()
            crop = reference_crop(CROP_SIZE)
            self._reference = (crop, self._encoded(crop)[1])
        crop, attr_mu = self._reference
        # one code at a time, as every drawing: a verdict must not depend on the batch
        speckled = bool(self.speckle(self._draw(np.asarray(code)[None], crop, attr_mu))[0] > SPECKLE_LIMIT)
        with self._lock:
            self._reference_verdicts[key] = speckled
            while len(self._reference_verdicts) > REFERENCE_VERDICTS_KEPT:
                self._reference_verdicts.popitem(last=False)
        return speckled

    def _clean_in_reference_first(self, codes: np.ndarray, suitability: np.ndarray) -> np.ndarray:
        """``codes`` (in order of preference) with the first of the first
        ``REFERENCE_LOOKAHEAD`` that is as suitable as the first (``suitability``: lower is
        better) and drawn clean in the speckle reference context moved to the front."""
        for index in range(min(REFERENCE_LOOKAHEAD, len(codes))):
            if suitability[index] > suitability[0]:
                continue
            if not self.speckled_in_reference(codes[index]):
                if index == 0:
                    return codes
                return np.concatenate([codes[index:index + 1], codes[:index], codes[index + 1:]])
        return codes

    def _draw_unspeckled(self, code: np.ndarray, face: np.ndarray, attr_mu: np.ndarray, attempt: int,
                         grow: float | None, keep_mouth: bool = True,
                         request: GenerationRequest | None = None) -> np.ndarray:
        """The person's pseudonym for ``attempt`` drawn into ``face``, unless the renderer draws
        it speckled or washed out in this context (:meth:`unfitness`), smudges the forehead
        (:meth:`smudged`), opens or closes the mouth otherwise than the photo's face
        (:meth:`misexpressed`; judged at the engine's first try at a face only, and not for the
        person's own pseudonym), smudges the chin, drops a beard or darkens the eyes
        (:meth:`smudged_chin`, :meth:`dropped_beard`, :meth:`darkened_eyes`; not for the person's
        own pseudonym), adds or drops glasses (:meth:`glasses_off`) or, with attribute probes, as
        another gender or age than the person's (:meth:`misdrawn`), or, for a new pseudonym
        code, near enough the person for the verifier to recognise (:meth:`recognised`, with the
        verifier's thresholds in the engine's ``request``): then the first of
        ``SPECKLE_ALTERNATES`` further codes that it draws fit, else of ``FURTHER_ALTERNATES``
        more (else the least unfit of all). The code
        drawn fit is tried first at the person's next photo, and kept there unless drawn
        unfit beyond ``KEPT_UNFITNESS``, so that one person keeps one pseudonym where the
        renderer allows. That code is found again among this photo's codes by its value: which codes pass
        the sampler's rules (distinct from *this* photo's code) may differ between photos."""
        person = self._seed_code(code).tobytes()
        with self._lock:
            kept = self._unspeckled.get(person, {}).get(attempt)
        # code -> (drawing, unfitness, complete), each drawn once; an incomplete unfitness is the
        # cheap screens' alone, already over what was asked: unfit either way
        drawings: dict[bytes, tuple[object, float, bool]] = {}
        composites: dict[bytes, np.ndarray] = {}  # code -> its drawing as the engine shows it, made once
        wanted = self._readings.get(person)

        def composited(c: np.ndarray) -> np.ndarray:
            key = c.tobytes()
            if key not in composites:
                composites[key] = self._composite(self._finish(drawings[key][0], face, c[None], grow)[0], face, grow)
            return composites[key]

        def drawn(c: np.ndarray, enough: float = 1.0) -> tuple[object, float]:
            """The drawing of code ``c`` and its unfitness, on the drawing as composited. The
            screens that need dlib (its descriptor, the mouth's landmarks) are left out of a
            drawing the others already put over ``enough``; asked again with more (the least
            unfit of all), they are added."""
            key = c.tobytes()
            own_code = kept is not None and np.array_equal(c, kept)
            if key not in drawings:
                # one code at a time: a drawing must not depend on what else was in its batch
                drawing = self._draw(c[None], face, attr_mu, grow)
                drawings[key] = (drawing, 0.0, False)
                shown = composited(c)
                scores = [float(self.unfitness(drawing, face, grow)[0]), self.smudged(shown, face)]
                if not own_code:
                    scores += [self.smudged_chin(shown, face), self.dropped_beard(shown, face),
                               self.darkened_eyes(shown, face)]
                drawings[key] = (drawing, max(scores), False)
            drawing, score, complete = drawings[key]
            if complete or score > enough:
                return drawing, score
            shown = composited(c)
            descriptor = functools.cache(lambda: self._dlib_embedding(shown))  # for both screens, once
            scores = [score, self.glasses_off(shown, face, descriptor)]
            if keep_mouth and not own_code:
                scores.append(self.misexpressed(shown, face))
            if request is not None and request.thresholds and not own_code:
                scores.append(self.recognised(shown, request, descriptor))
            if wanted is not None:
                # the person's own pseudonym answers for its gender only: one drawing's age
                # reading is too noisy to show the person as two for
                scores.append(self.misdrawn(shown, wanted, age=not own_code, descriptor=descriptor))
            drawings[key] = (drawing, max(scores), True)
            return drawings[key][:2]

        codes = self.pseudonym_codes(code, attempt, 1 if kept is None else 1 + SPECKLE_ALTERNATES)
        own = kept is not None and any(np.array_equal(c, kept) for c in codes)
        if kept is not None and not own:  # one drawn fit only among an earlier photo's further alternates
            codes = self.pseudonym_codes(code, attempt, 1 + SPECKLE_ALTERNATES + FURTHER_ALTERNATES)
            own = any(np.array_equal(c, kept) for c in codes)
        first = kept if own else codes[0]
        # the person's own pseudonym counts less unfit: kept unless clearly unfit
        leniency = KEPT_UNFITNESS if own else 1.0
        chosen = first if drawn(first, leniency)[1] / leniency <= 1.0 else None
        if chosen is None:
            tried = [first]

            def first_fit(candidates: list[np.ndarray]) -> np.ndarray | None:
                for c in candidates:
                    tried.append(c)
                    if drawn(c)[1] <= 1.0:
                        return c
                return None

            # the codes already asked for serve as far as they go (the code LCM samples a batch per call)
            if len(codes) < 1 + SPECKLE_ALTERNATES:
                codes = self.pseudonym_codes(code, attempt, 1 + SPECKLE_ALTERNATES)
            chosen = first_fit([c for c in codes if not np.array_equal(c, first)][:SPECKLE_ALTERNATES])
            if chosen is None:
                # every one unfit here: further codes of the same order, until one is fit
                if len(codes) < 1 + SPECKLE_ALTERNATES + FURTHER_ALTERNATES:
                    codes = self.pseudonym_codes(code, attempt, 1 + SPECKLE_ALTERNATES + FURTHER_ALTERNATES)
                chosen = first_fit([c for c in codes if not any(np.array_equal(c, t) for t in tried)]
                                   [:FURTHER_ALTERNATES])
            if chosen is None:  # the least unfit of all, every screen read where it could still win
                scales = [leniency] + [1.0] * (len(tried) - 1)
                # A drawing's score so far (the cheap screens' alone where they refused it) is a
                # lower bound of its whole score, the largest of more screens: one whose bound is
                # already over the best whole score cannot be the least unfit, and the screens
                # that need dlib are not read for it (the same choice, without their cost).
                bounds = [drawings[c.tobytes()][1] / scale for c, scale in zip(tried, scales, strict=True)]
                scores = [np.inf] * len(tried)
                for index in np.argsort(bounds, kind="stable"):
                    if bounds[index] > min(scores):
                        break
                    scores[index] = drawn(tried[index], np.inf)[1] / scales[index]
                best = int(np.argmin(scores))
                if scores[best] >= GROSSLY_UNFIT:
                    raise UnfitDrawingError(f"all {len(tried)} pseudonym codes drawn unfit, the least by "
                                            f"{scores[best]:.2f} (limit {GROSSLY_UNFIT})")
                chosen = tried[best]
            logger.debug("pseudonym drawn unfit (at least %.2f); %d alternates scored at least %s",
                         drawings[first.tobytes()][1] / leniency, len(tried) - 1,
                         [round(drawings[c.tobytes()][1], 2) for c in tried[1:]])
        if self.drawing_log is not None:
            # an incomplete unfitness is already over what was asked, so over 1: unfit either way
            chosen_key = chosen.tobytes()
            self.drawing_log.extend((np.frombuffer(key, dtype=codes.dtype).copy(), score, attempt, key == chosen_key)
                                    for key, (_, score, _complete) in drawings.items())
        with self._lock:
            self._unspeckled.setdefault(person, {})[attempt] = np.array(chosen, copy=True)
        return composited(chosen)

    def _render(self, codes: np.ndarray, face: np.ndarray, attr_mu: np.ndarray, grow: float | None = None) -> np.ndarray:
        """The drawings (K, R, R, 3) of identity codes (K, D) into ``face``'s context, at the
        refiner's resolution R when there is one, else the renderer's (see :meth:`_composite`
        for the crop's)."""
        return self._finish(self._draw(codes, face, attr_mu, grow), face, codes, grow)

    def _draw(self, codes: np.ndarray, face: np.ndarray, attr_mu: np.ndarray, grow: float | None = None):
        """The renderer's drawings (K, 3, r, r), in [-1, 1], of identity codes (K, D) into
        ``face``'s context at its own resolution r."""
        import torch

        renderer = self._load_renderer()
        side = renderer.config.image_size
        count = len(codes)
        small = self._kept_only(face, grow)  # at any resolution, no pixel of the inner face goes in
        if small.shape[0] != side:
            small = cv2.resize(small, (side, side), interpolation=cv2.INTER_AREA)
        context = torch.as_tensor(small, device=self.device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        mask = torch.as_tensor(self.mask(side, grow), device=self.device)[None, None]
        # Noise follows the pseudonym: one person is drawn alike in every photo of the session.
        per_code = []
        for z in codes:
            generator = torch.Generator().manual_seed(noise_seed(z))
            per_code.append([torch.randn(shape, generator=generator) for shape in renderer.noise_shapes(1)])
        noise = [torch.cat(maps).to(self.device) for maps in zip(*per_code, strict=True)]
        inputs = (context.expand(count, -1, -1, -1), mask.expand(count, -1, -1, -1),
                  torch.as_tensor(codes, device=self.device).float(),
                  torch.as_tensor(attr_mu, device=self.device).float().expand(count, -1, -1, -1))
        with torch.inference_mode():
            return _forward(self._renderer_onnx, renderer, inputs, noise)

    def _finish(self, drawn, face: np.ndarray, codes: np.ndarray, grow: float | None = None) -> np.ndarray:
        """Drawings of :meth:`_draw` refined (see :meth:`_refine`) and as pixels (K, R, R, 3)."""
        import torch

        with torch.inference_mode():
            drawn = self._refine(drawn, face, codes, grow)
        return ((drawn.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    def _refine(self, drawn, face: np.ndarray, codes: np.ndarray, grow: float | None = None):
        """The renderer's drawings (K, 3, r, r) redrawn by the refiner at its resolution, with
        its texture noise following the pseudonym as the renderer's does; unchanged without a
        refiner."""
        import torch

        refiner = self._load_refiner()
        if refiner is None:
            return drawn
        side = refiner.config.image_size
        big = cv2.resize(self._kept_only(face, grow), (side, side), interpolation=cv2.INTER_AREA) \
            if face.shape[0] != side else face
        context = torch.as_tensor(big, device=self.device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        mask = torch.as_tensor(self.mask(side, grow), device=self.device)[None, None]
        count = len(codes)
        per_code = []
        for z in codes:
            generator = torch.Generator().manual_seed(noise_seed(z) ^ REFINER_NOISE_SALT)
            per_code.append([torch.randn(shape, generator=generator) for shape in refiner.noise_shapes(1, side)])
        noise = [torch.cat(maps).to(self.device) for maps in zip(*per_code, strict=True)]
        inputs = (context.expand(count, -1, -1, -1), mask.expand(count, -1, -1, -1), drawn)
        return _forward(self._refiner_onnx, refiner, inputs, noise)

    def _composite(self, image: np.ndarray, face: np.ndarray, grow: float | None = None) -> np.ndarray:
        """One drawing of :meth:`_render` at the crop's size, in its tone, inside the inpainting
        mask only."""
        size = face.shape[0]
        if image.shape[0] != size:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
        inside = self.mask(size, grow)
        image = np.where(inside[..., None] > 0.5, image, face)
        if self.blend != "tone":
            image = poisson_blend(image, face, inside)
        worn = self._per_crop(self._face_masks, face, mask_over_face)
        if self.blend != "poisson":
            # The pseudonym's complexion is its own; the photo's lighting and the person's skin
            # tone (their neck and ears stay in the picture) are not identity: keep their mean
            # (the skin's: a mask's colour is no complexion).
            skin = face_mask(size) if worn is None else face_mask(size) * (worn < 0.5)
            image = shift_tone(image, face, skin, inside)
        if _is_grey(face):
            image = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
        image = np.where(inside[..., None] > 0.5, image, face)
        # Over the wider ellipse of late attempts the drawing is kept whole: those faces were
        # refused, mostly for what surrounds the inner face (see WIDER_MASK_FROM_ATTEMPT).
        wider = grow is not None and grow > float(self._load_renderer().config.mask_grow)
        if self.keep_outside_face and not wider:
            image = self._photo_outside_faces(image, face, inside)
        # Blurred to the photo's focus, a drawing is harder for the oracles to tell from a blurred
        # original: the late attempts blur it less (sharpness.WIDER_ALLOWANCE)
        if self.match_sharpness:
            image = as_sharp_as(image, face, inside, WIDER_ALLOWANCE if wider else ALLOWANCE)
        if worn is not None and not wider:
            # the mask the person wears stays over the drawing (see occluder.py); but dlib's
            # chip of a masked face is mostly mask, and where the first attempts' drawings around
            # it cannot move dlib under its threshold, the later ones draw the whole face over it
            kept = worn[..., None]
            image = np.clip(kept * face + (1.0 - kept) * image + 0.5, 0, 255).astype(np.uint8)
        return image

    def _photo_outside_faces(self, drawn: np.ndarray, face: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """``drawn`` (a composite over the ellipse ``inside``) with the photo's pixels back where
        neither the original face nor the drawn one is (see :mod:`~idmrag_plugin.engine.face_outline`);
        unchanged when either outline cannot be believed. The seam is feathered outside both
        faces, so every pixel of either face is the drawing's."""
        outlines = [self._original_outline(face), self._outliner.outline(drawn)]
        if any(outline is None for outline in outlines):
            return drawn
        side = face.shape[0]
        region = drawn_region(side, outlines)  # type: ignore[arg-type]
        # a smooth step from the faces' edge (1) to OUTLINE_FEATHER of the side beyond it (0)
        beyond = cv2.distanceTransform((region < 0.5).astype(np.uint8), cv2.DIST_L2, 5)
        ramp = np.clip(1.0 - beyond / max(OUTLINE_FEATHER * side, 1.0), 0.0, 1.0)
        alpha = (ramp * ramp * (3.0 - 2.0 * ramp) * (inside > 0.5))[..., None]
        return np.clip(alpha * drawn + (1.0 - alpha) * face + 0.5, 0, 255).astype(np.uint8)


def _framed(crop: np.ndarray, in_frame: np.ndarray) -> np.ndarray:
    """``crop`` black beyond the photo's frame (``in_frame`` False), as the oracles' chips are."""
    return np.where(in_frame[..., None], crop, 0).astype(np.uint8)


def _squeezed(off: float, cap: float) -> float:
    """A screen's distance ``off`` (fit up to 1) with what lies beyond 1 squeezed into
    (1, ``cap``], in the same order: unfit, but less so than any drawing that is speckled,
    smudged or of the wrong gender."""
    return off if off <= 1.0 else 1.0 + (cap - 1.0) * float(np.tanh(off - 1.0))
