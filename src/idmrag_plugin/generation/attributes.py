"""Perceived gender and age kept across the swap, judged where they show: in the drawn face.

Linear probes, fitted by ``idmrag fit-attribute-probes`` for one renderer:

* ``image``: the perceived gender (logistic) and age (ridge on log-years) of a face photo,
  fitted on UTKFace's labels and read from one of the ``IMAGE_READERS``: dlib's descriptor
  of the face (the verifier computes it for every original anyway), or the identity student's
  embedding of the 64 px crop (the small network distilled from FaceNet; older probes);
* ``code``: the gender and age the renderer *draws* for an identity code, fitted on codes from
  the sampler, each rendered into a real face's context and judged by the image probes.

A third code probe, ``code_tone``, reads the lightness of the face a code belongs to (fitted on
training faces' codes and the median CIELAB L* of their cheeks and nose, :func:`face_lightness`):
a pseudonym drawn much lighter or darker than the person's own code would be is toned to the
photo's face by the blend, which leaves its features as dark or pale ghosts. Among the
pseudonyms that suit the person's gender and age, those within ``TONE_TOLERANCE`` come first: of
the person's own code's lightness, or, for a code model conditioned on it, of the lightness
of the person's face in their photo (``Reading.tone``) that the candidates were written for.

A fourth image probe, ``image_group``, reads the perceived ancestry group of a face photo
(UTKFace's five labels, :data:`GROUP_LABELS`; a multinomial logistic regression on dlib's
descriptor) as probabilities: a code model conditioned on it writes pseudonyms that look like
the person's group, as it writes them for their gender and age. Without it the model wrote
white-featured faces for nearly every Black person (lightness alone does not carry it, and the
identity codes carry it too weakly to choose by).

A person's gender and age are read from their photo (the first one of the session, kept with
their pseudonym), and a pseudonym code suits them when the code probes give the same gender
and an age within ``AGE_TOLERANCE``. Probes of gender on the codes themselves, fitted on
labelled faces' codes, were tried first: the renderer does not draw what they read (gender
agreement 61% against 57% without them, on 300 LFW faces).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from idmrag_plugin.errors import ModelLoadError

#: Largest difference of log(1 + years) between the person and the age a pseudonym is drawn
#: at: about +-25% (a 40-year-old gets 31 to 51).
AGE_TOLERANCE = 0.25
#: What the image probes read: ``"dlib"``, dlib's face descriptor of the face in the photo
#: (UTKFace held-out: see docs/generators.md), or ``"student"``, the identity student's embedding of the
#: 64 px aligned crop.
IMAGE_READERS = ("dlib", "student")
#: A photo's age reading is rounded to this many decimals of log(1 + years) (about 1% of the
#: age): the embeddings it is read from differ by ~1e-7 between ONNX Runtime, torch and GPUs,
#: and the reading conditions the pseudonym, which must not depend on where the engine ran.
READING_DECIMALS = 2
#: Largest difference between the lightness a pseudonym code's face has and the person's own
#: code's (CIELAB L* as OpenCV scales it, 0-255; training faces spread by about 25): beyond it the
#: blend must tone the drawing so far that its features ghost.
TONE_TOLERANCE = 8.0
#: UTKFace's perceived-group labels, in the order of its ``race`` column (0-4). They are the
#: dataset's labels of how a face looks, read as probabilities; a probe conditions a pseudonym
#: on them and never reports them.
GROUP_LABELS = ("White", "Black", "Asian", "Indian", "Other")


@dataclass(frozen=True)
class Reading:
    """A perceived gender (True: the data's label 1, UTKFace's female) and log(1 + years), and
    where it was read from a photo's crop, the face's lightness there (:func:`face_lightness`);
    with a group probe, the probabilities of :data:`GROUP_LABELS` read from the photo."""

    gender: bool
    log_age: float
    tone: float | None = None
    group: tuple[float, ...] | None = None

    @property
    def years(self) -> float:
        return float(np.expm1(self.log_age))


def _read(x: np.ndarray, gender: tuple[np.ndarray, float], age: tuple[np.ndarray, float]) -> list[Reading]:
    x = np.atleast_2d(x).astype(np.float64)
    return [Reading(bool(g > 0.0), float(a)) for g, a in zip(x @ gender[0] + gender[1], x @ age[0] + age[1],
                                                             strict=True)]


def face_lightness(crops: np.ndarray) -> np.ndarray:
    """Median CIELAB L* (0-255, OpenCV's scale) of the cheeks and nose of canonical crops
    (N, S, S, 3) uint8 RGB, (N,): below the eyes, above the mouth, between the eye centres."""
    from idmrag_plugin.engine.align import template

    crops = np.asarray(crops)
    points = template(crops.shape[1])
    eye_distance = points[1, 0] - points[0, 0]
    top = round((points[0, 1] + points[1, 1]) / 2 + 0.3 * eye_distance)
    bottom = round((points[3, 1] + points[4, 1]) / 2 - 0.2 * eye_distance)
    left, right = round(points[0, 0]), round(points[1, 0])
    region = np.ascontiguousarray(crops[:, top:bottom, left:right], dtype=np.uint8)
    lightness = cv2.cvtColor(region.reshape(-1, right - left, 3), cv2.COLOR_RGB2LAB)[..., 0]
    return np.median(lightness.reshape(len(crops), -1).astype(np.float64), axis=1)


@dataclass(frozen=True)
class AgeNet:
    """A small ensemble of one-hidden-layer networks reading log(1 + years) from an L2-normalised
    face embedding: ``mean`` and ``scale`` (D,) standardise the input, then each member ``m``
    computes ``w2[m] . gelu(w1[m] x + b1[m]) + b2[m]`` (tanh GELU); the reading is the members'
    mean. Fitted on UTKFace's labels over dlib's descriptor it reads age with 5.6 years of
    held-out error, the linear probe 9.3, and on LFW it agrees better with an age model it
    never saw (see docs/generators.md)."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    w1: np.ndarray  # (M, H, D)
    b1: np.ndarray  # (M, H)
    w2: np.ndarray  # (M, H)
    b2: np.ndarray  # (M,)

    TENSORS = ("mean", "scale", "w1", "b1", "w2", "b2")

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """log(1 + years) of embeddings (N, D), (N,)."""
        x = np.atleast_2d(np.asarray(embeddings, np.float64))
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        x = (x - self.mean) / self.scale
        hidden = np.einsum("mhd,nd->mnh", self.w1, x) + self.b1[:, None, :]
        hidden = 0.5 * hidden * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (hidden + 0.044715 * hidden**3)))
        return (np.einsum("mnh,mh->mn", hidden, self.w2) + self.b2[:, None]).mean(axis=0)


@dataclass(frozen=True)
class AttributeProbes:
    """The four read-outs; ``renderer_sha256`` names the renderer weights the code probes describe."""

    image_gender: tuple[np.ndarray, float]
    image_age: tuple[np.ndarray, float]
    code_gender: tuple[np.ndarray, float]
    code_age: tuple[np.ndarray, float]
    renderer_sha256: str
    image_reader: str = "student"
    #: The range of log(1 + years) a photo's age reading is held to: the labels' own (1st to
    #: 99th percentile). A linear probe extrapolates on faces unlike its training photos (fitted
    #: on UTKFace, it read LFW faces as up to 171 years old). None: unbounded (older probes).
    age_range: tuple[float, float] | None = None
    #: Reads a photo's age in place of the linear ``image_age`` (which training's differentiable
    #: age term still uses); None: the linear probe (older probes).
    image_age_net: AgeNet | None = None
    #: The lightness (:func:`face_lightness`) of the face an identity code belongs to; None:
    #: not fitted (older probes), pseudonyms are not chosen by it.
    code_tone: tuple[np.ndarray, float] | None = None
    #: Perceived group of a face photo from the image reader's embedding: weights (K, D) and
    #: biases (K,) of a multinomial logistic regression over :data:`GROUP_LABELS`; None: not
    #: fitted (older probes), readings carry no group.
    image_group: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.image_reader not in IMAGE_READERS:
            raise ModelLoadError(f"attribute probes read {self.image_reader!r}; known readers: {', '.join(IMAGE_READERS)}")
        if self.age_range is not None and not self.age_range[0] < self.age_range[1]:
            raise ModelLoadError(f"attribute probes' age range {self.age_range} is empty")

    def read_image(self, embeddings: np.ndarray) -> list[Reading]:
        """Perceived gender and age of faces from their embeddings (N, D) by ``image_reader``."""
        low, high = self.age_range if self.age_range is not None else (-np.inf, np.inf)
        readings = _read(embeddings, self.image_gender, self.image_age)
        ages = self.image_age_net(embeddings) if self.image_age_net is not None else [r.log_age for r in readings]
        groups = self.read_group(embeddings)
        return [Reading(r.gender, round(float(np.clip(age, low, high)), READING_DECIMALS),
                        group=None if groups is None else tuple(round(float(p), READING_DECIMALS) for p in groups[i]))
                for i, (r, age) in enumerate(zip(readings, ages, strict=True))]

    def read_group(self, embeddings: np.ndarray) -> np.ndarray | None:
        """Probabilities (N, len(GROUP_LABELS)) of each perceived group for faces' embeddings
        (N, D) by ``image_reader``; None without the group probe."""
        if self.image_group is None:
            return None
        from scipy.special import softmax

        logits = np.atleast_2d(np.asarray(embeddings, np.float64)) @ self.image_group[0].T + self.image_group[1]
        return softmax(logits, axis=1)

    def read_code(self, codes: np.ndarray) -> list[Reading]:
        """The gender and age the renderer draws for identity codes (N, id_dim)."""
        return _read(codes, self.code_gender, self.code_age)

    def read_tone(self, codes: np.ndarray) -> np.ndarray | None:
        """The lightness of the faces of identity codes (N, id_dim), (N,); None without the probe."""
        if self.code_tone is None:
            return None
        return np.atleast_2d(codes).astype(np.float64) @ self.code_tone[0] + self.code_tone[1]

    @staticmethod
    def mismatch(person: Reading, drawn: Reading) -> float:
        """0 when ``drawn`` has the person's gender and an age within ``AGE_TOLERANCE``; else 1
        for the other gender plus the age difference beyond the tolerance (in log-years)."""
        return float(person.gender != drawn.gender) + max(0.0, abs(person.log_age - drawn.log_age) - AGE_TOLERANCE)

    def code_fingerprint(self) -> str:
        """sha256 of the code probes alone (float32, as saved): what a code model trained on
        their read-outs depends on; refitting the image probes leaves it unchanged."""
        import hashlib

        digest = hashlib.sha256()
        for name in ("code_gender", "code_age"):
            weight, bias = getattr(self, name)
            digest.update(np.ascontiguousarray(weight, np.float32).tobytes())
            digest.update(np.array([bias], np.float32).tobytes())
        return digest.hexdigest()

    def group_fingerprint(self) -> str:
        """sha256 of the group probe alone (float32, as saved): what labelled the training codes
        of a code model conditioned on the perceived group; empty without the probe."""
        import hashlib

        if self.image_group is None:
            return ""
        digest = hashlib.sha256()
        for part in self.image_group:
            digest.update(np.ascontiguousarray(part, np.float32).tobytes())
        return digest.hexdigest()

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        tensors = {}
        for name in ("image_gender", "image_age", "code_gender", "code_age", "code_tone"):
            if getattr(self, name) is None:
                continue
            weight, bias = getattr(self, name)
            tensors[f"{name}.weight"] = np.ascontiguousarray(weight, np.float32)
            tensors[f"{name}.bias"] = np.array([bias], np.float32)
        if self.image_group is not None:
            # C order: sklearn's coefficients may be a Fortran-ordered array, whose memory
            # safetensors would write as if it were C-ordered (a scrambled probe)
            tensors["image_group.weight"] = np.ascontiguousarray(self.image_group[0], np.float32)
            tensors["image_group.bias"] = np.ascontiguousarray(self.image_group[1], np.float32)
        if self.image_age_net is not None:
            for name in AgeNet.TENSORS:
                tensors[f"image_age_net.{name}"] = np.ascontiguousarray(getattr(self.image_age_net, name), np.float32)
        metadata = {"renderer_sha256": self.renderer_sha256, "image_reader": self.image_reader}
        if self.age_range is not None:
            metadata["age_range"] = json.dumps([float(v) for v in self.age_range])
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> AttributeProbes:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
                metadata = handle.metadata() or {}
            probes = {name: (tensors[f"{name}.weight"].astype(np.float64), float(tensors[f"{name}.bias"][0]))
                      for name in ("image_gender", "image_age", "code_gender", "code_age")}
            age_range = json.loads(metadata["age_range"]) if "age_range" in metadata else None
            tone = ((tensors["code_tone.weight"].astype(np.float64), float(tensors["code_tone.bias"][0]))
                    if "code_tone.weight" in tensors else None)
            group = ((tensors["image_group.weight"].astype(np.float64), tensors["image_group.bias"].astype(np.float64))
                     if "image_group.weight" in tensors else None)
            if group is not None and group[0].shape[0] != len(GROUP_LABELS):
                raise ValueError(f"the group probe reads {group[0].shape[0]} groups, not {len(GROUP_LABELS)}")
            net = None
            if "image_age_net.w1" in tensors:
                net = AgeNet(**{name: tensors[f"image_age_net.{name}"].astype(np.float64) for name in AgeNet.TENSORS})
        except (OSError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"{path} does not hold attribute probes ({exc}); refit them with "
                                 "`idmrag fit-attribute-probes`") from exc
        return cls(**probes, renderer_sha256=metadata.get("renderer_sha256", ""),
                   image_reader=metadata.get("image_reader", "student"),
                   age_range=None if age_range is None else (float(age_range[0]), float(age_range[1])),
                   image_age_net=net, code_tone=tone, image_group=group)
