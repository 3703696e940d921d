"""ONNX Runtime inference for the engine's fixed networks (the oracles, and the generator's
codes encoder, renderer and refiner).

On this project's CPUs ONNX Runtime runs FaceNet 1.5-1.9x and dlib's ResNet 2.2-2.6x faster
than torch's eager mode, with the same outputs to ~1e-7; the generator's networks at batch 1
1.3-1.7x faster. A network is exported once from its
torch module into the cache folder (with a sha256 sidecar), and every load checks the
exported graph against the torch module on a fixed input: a stale or damaged export is
exported again, and one that still disagrees is not used (torch runs instead). The torch
module stays the reference and the differentiable path (training, tests).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from idmrag_plugin.config import ORACLE_RUNTIMES as RUNTIMES
from idmrag_plugin.errors import ModelLoadError

logger = logging.getLogger(__name__)

#: Largest absolute difference from the torch module tolerated on the check input.
TOLERANCE = 1e-4
_export_lock = threading.Lock()


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def wants_onnxruntime(runtime: str, device: str) -> bool:
    """Whether a network should run on ONNX Runtime: ``"auto"`` on a CPU when it is
    installed; ``"onnxruntime"`` always (refused on another device or when missing)."""
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch":
        return False
    on_cpu = str(device).startswith("cpu")
    if runtime == "auto":
        return on_cpu and onnxruntime_available()
    if not on_cpu:
        raise ModelLoadError(f"runtime 'onnxruntime' runs on the CPU only, not on {device!r}")
    if not onnxruntime_available():
        raise ModelLoadError("runtime 'onnxruntime' needs ONNX Runtime: pip install 'idmrag-plugin[fast]'")
    return True


class OnnxNetwork:
    """One exported network run by an ONNX Runtime session (thread-safe, like the session)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Every output of the network for its float32 inputs, in order."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"network takes {len(self.input_names)} inputs, got {len(inputs)}")
        feed = {name: np.ascontiguousarray(x, dtype=np.float32) for name, x in zip(self.input_names, inputs, strict=True)}
        return self.session.run(None, feed)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The first output of a one-input network."""
        return self.run(x)[0]


def _shapes(input_shapes: tuple[int, ...] | Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """One input's shape, or several inputs' shapes, as a list of shapes."""
    if input_shapes and all(isinstance(d, int) for d in input_shapes):
        return [tuple(input_shapes)]  # type: ignore[arg-type]
    return [tuple(shape) for shape in input_shapes]  # type: ignore[union-attr]


def _check_input(shape: tuple[int, ...], index: int = 0) -> np.ndarray:
    return np.random.default_rng(20261201 + index).standard_normal(shape).astype(np.float32)


def _check_inputs(shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    return [_check_input(shape, i) for i, shape in enumerate(shapes)]


def _outputs(module: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = module(*(torch.from_numpy(x) for x in inputs))
    return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


def _export(module: Any, shapes: list[tuple[int, ...]], count: int, path: Path,
            dynamic: Sequence[int] = (0,)) -> None:
    import torch

    from idmrag_plugin.weights import sha256_of

    if importlib.util.find_spec("onnx") is None:
        raise ModelLoadError("exporting a network for ONNX Runtime needs the onnx package: pip install 'idmrag-plugin[fast]'")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    single = len(shapes) == 1
    inputs = ["x"] if single else [f"x{i}" for i in range(len(shapes))]
    outputs = ["y"] if count == 1 else [f"y{i}" for i in range(count)]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape checks in forward()
        torch.onnx.export(
            module, tuple(torch.from_numpy(x) for x in _check_inputs(shapes)), str(tmp), dynamo=False,
            opset_version=17, input_names=inputs, output_names=outputs,
            dynamic_axes={name: {axis: f"{name}_{axis}" for axis in dynamic} for name in (*inputs, *outputs)},
        )
    tmp.replace(path)
    path.with_suffix(path.suffix + ".sha256").write_text(sha256_of(path) + "\n")


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # The engine alternates ONNX Runtime with torch (detection, generation). Spinning intra-op
    # threads keep both cores busy after each run and starve torch's threads: on a 2-core CPU
    # the default engine took 414-483 ms per 250x250 photo with spinning, 263-280 without.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_network(module: Any, input_shape: tuple[int, ...] | Sequence[tuple[int, ...]], name: str, cache: Path,
                 threads: int | None = None, required: bool = False,
                 dynamic: Sequence[int] = (0,)) -> OnnxNetwork | None:
    """``module`` (eval mode; float32 inputs of ``input_shape``, or of each shape of a list of
    them, batch first; one output or a tuple of them) as an :class:`OnnxNetwork`, exported
    once into ``cache/name.onnx``, free in the axes ``dynamic`` of every input and output (the
    batch; a fully convolutional network's height and width too). When the export cannot be
    made, written or made to agree with the module on a fixed input: None (the caller runs
    torch), or :class:`ModelLoadError` when ``required``."""
    from idmrag_plugin.weights import _checked

    path = cache / f"{name}.onnx"
    shapes = _shapes(input_shape)
    check = _check_inputs(shapes)
    expected = _outputs(module, check)
    with _export_lock:
        for fresh in (False, True):
            try:
                if fresh or not _checked(path):
                    logger.info("exporting %s for ONNX Runtime into %s (once)", name, path)
                    _export(module, shapes, len(expected), path, dynamic)
                network = OnnxNetwork(_session(path, threads))
                got = network.run(*check)
                if len(got) != len(expected):
                    raise ValueError(f"export has {len(got)} outputs, the module {len(expected)}")
                error = max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))
            except Exception as exc:  # export and session errors vary by version; torch is the fallback
                if required:
                    raise ModelLoadError(f"{name}: cannot run it on ONNX Runtime ({exc})") from exc
                logger.warning("%s: ONNX Runtime unavailable (%s: %s); running torch", name, type(exc).__name__, exc)
                return None
            if error <= TOLERANCE:
                return network
            logger.warning("%s: exported graph differs from torch by %.2g%s", name, error,
                           "; running torch" if fresh else "; exporting again")
    if required:
        raise ModelLoadError(f"{name}: its ONNX export does not agree with the torch network; delete {path}")
    return None
