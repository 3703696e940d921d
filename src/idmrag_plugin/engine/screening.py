"""An int8 copy of an oracle's network that screens verdicts before the exact network decides.

On CPUs with int8 dot products (VNNI) the int8 FaceNet runs about four times faster than the
float32 one, and its similarities stay within a few hundredths of the exact ones. The verifier
(:mod:`idmrag_plugin.engine.views`) therefore compares with the int8 embeddings first and
recomputes exactly every pair whose screened similarity lies within
:data:`SCREEN_MARGIN` of the threshold: verdicts are the float32 network's wherever the int8
error stays under the margin (measured on LFW: under half of it, see
``idmrag fit-int8-ranges``).

The int8 network is quantized here, once per cache folder, from the float32 ONNX export and
activation ranges shipped with the package (calibrated on real faces, which the package
cannot ship): every activation of the graph must have a shipped range, and the int8 copy must
agree with the float32 network on check faces, or screening is off (exact verdicts only,
at full cost).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from idmrag_plugin.engine.onnx_runtime import OnnxNetwork, _session

logger = logging.getLogger(__name__)

#: Screened similarities within this distance of a threshold are recomputed exactly: more than
#: twice the int8 FaceNet's largest similarity error measured (0.090 over all pairs of 1,200
#: held-out LFW crops, see the ranges file; 0.085 on the engine's outputs for 190 LFW photos).
SCREEN_MARGIN = 0.20
#: The int8 copy is used only when its embeddings of the check faces keep at least this
#: cosine with the float32 ones (held-out LFW faces: 0.985 at worst, 0.994 on average).
MIN_AGREEMENT = 0.97
_lock = threading.Lock()


def load_ranges(path: Path) -> dict[str, tuple[float, float]]:
    """Activation ranges {tensor name: (min, max)} written by ``idmrag fit-int8-ranges``."""
    data = json.loads(Path(path).read_text())
    return {name: (float(lo), float(hi)) for name, (lo, hi) in data["ranges"].items()}


def activation_names(model_path: Path) -> set[str]:
    """The float tensors flowing between the graph's nodes, as the quantizer's calibration picks
    them (after shape inference): the activations int8 needs a range for."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    infos = {vi.name: vi for vi in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    initializers = {t.name for t in model.graph.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    return {
        name for node in model.graph.node for name in (*node.input, *node.output)
        if name in infos and name not in initializers
        and infos[name].type.HasField("tensor_type") and infos[name].type.tensor_type.elem_type in floats
    }


def _quantize(float_path: Path, ranges: dict[str, tuple[float, float]], out: Path, check: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _OneBatch(CalibrationDataReader):
        """quantize_static wants a reader; every range it would calibrate is overridden."""

        def __init__(self) -> None:
            self._batches = iter([{"x": check[:1]}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    overrides = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for name, (lo, hi) in ranges.items()}
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    root = logging.getLogger()
    quiet = _DropPreprocessingAdvice()
    root.addFilter(quiet)  # the quantizer logs "please pre-process" to the root logger; nothing to act on
    try:
        quantize_static(
            str(float_path), str(tmp), _OneBatch(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            extra_options={"TensorQuantOverrides": overrides},
        )
    finally:
        root.removeFilter(quiet)
    tmp.replace(out)


class _DropPreprocessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "pre-processing" not in message and "out-of-range for weight" not in message


def screening_network(float_path: Path, ranges_path: Path, float_network: OnnxNetwork, check: np.ndarray,
                      threads: int | None = None) -> OnnxNetwork | None:
    """The int8 copy of the exported network at ``float_path`` (quantized once beside it), or
    None when it cannot be built or does not agree with ``float_network`` on ``check`` inputs."""
    from idmrag_plugin.weights import _checked, sha256_of

    out = float_path.with_name(float_path.stem + "_int8.onnx")
    try:
        # the export's sha256 as its sidecar records it (onnx_network has just checked it): hashing
        # the 90 MB export again at every load would only repeat that work
        exported_sha = float_path.with_suffix(float_path.suffix + ".sha256").read_text().split()[0]
        source_sha = f"{exported_sha} {sha256_of(Path(ranges_path))}"  # the export and the ranges
        ranges = load_ranges(ranges_path)
        with _lock:
            stamp = out.with_suffix(".source")
            if not _checked(out) or not stamp.is_file() or stamp.read_text().strip() != source_sha:
                missing = activation_names(float_path) - set(ranges) - {"x"}
                if missing:
                    logger.warning("int8 screening off: %d activations of %s have no shipped range (e.g. %s); "
                                   "verifying at full cost", len(missing), float_path.name, min(missing))
                    return None
                logger.info("quantizing %s to int8 for screening (once)", float_path.name)
                _quantize(float_path, ranges, out, check)
                out.with_suffix(out.suffix + ".sha256").write_text(sha256_of(out) + "\n")
                stamp.write_text(source_sha + "\n")
            network = OnnxNetwork(_session(out, threads))
    except Exception as exc:  # quantizer and session errors vary by version; exact verdicts still run
        logger.warning("int8 screening off (%s: %s); verifying at full cost", type(exc).__name__, exc, exc_info=True)
        return None
    agreement = _agreement(network(check), float_network(check))
    if agreement < MIN_AGREEMENT:
        logger.warning("int8 screening off: it agrees with the float32 network to cosine %.3f only", agreement)
        return None
    return network


def _agreement(a: Any, b: Any) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))
