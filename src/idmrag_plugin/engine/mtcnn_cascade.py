"""MTCNN's three-stage cascade, as facenet-pytorch's ``detect_face`` runs it, with the
candidate boxes resampled in one batch.

facenet-pytorch cuts and resizes every candidate box alone (``interpolate(mode="area")`` in a
Python loop): some 280 calls for a 250x250 photo searched at four rotations, a quarter of the
detector's time. Area resampling averages the input over integer bins, so each output pixel
is four lookups into the image's integral image; in float64 the integral of 8-bit pixels is
exact, so the averages equal pooling's to float32 rounding, and all boxes of a stage are
resampled in one gather. Everything else (pyramid, thresholds, box regression, the three
non-maximum suppressions) is facenet-pytorch's own code, called unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (
    batched_nms_numpy,
    bbreg,
    generateBoundingBox,
    pad,
    rerec,
)
from torch import nn
from torch.nn.functional import interpolate
from torchvision.ops.boxes import batched_nms

#: Candidate boxes per refinement-network forward (facenet-pytorch's value).
REFINE_BATCH = 512
#: Output rows of the proposal network per strip of a tall pyramid level (see _proposals).
STRIP_ROWS = 32


@dataclass(frozen=True)
class CascadeNets:
    """The three MTCNN networks (facenet-pytorch's PNet, RNet and ONet)."""

    pnet: nn.Module
    rnet: nn.Module
    onet: nn.Module


class _OnnxStage:
    """One cascade network run by ONNX Runtime, called as its torch module is (a tensor in,
    a tuple of tensors out)."""

    def __init__(self, network) -> None:
        self.network = network

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(out) for out in self.network.run(x.numpy()))


def onnx_cascade(mtcnn: nn.Module, runtime: str, device: str, cache: Path | None,
                 threads: int | None) -> CascadeNets | None:
    """facenet-pytorch MTCNN's three networks on ONNX Runtime (the bare cascade on four turned
    250 px photos, one thread: 92 against 112 ms; inside the engine's whole search no faster),
    or None where the runtime says torch or the export fails
    (it is exported once into ``cache`` and checked against the torch network at each load).
    Call it before the torch networks' max pools are replaced (their own pools export)."""
    from idmrag_plugin.engine.onnx_runtime import onnx_network, wants_onnxruntime
    from idmrag_plugin.weights import cache_dir

    if not wants_onnxruntime(runtime, device):
        return None
    folder, required = cache_dir(cache), runtime == "onnxruntime"
    # P-Net is fully convolutional: any pyramid level's height and width
    pnet = onnx_network(mtcnn.pnet.eval(), (1, 3, 64, 64), "mtcnn_pnet", folder, threads, required, dynamic=(0, 2, 3))
    rnet = onnx_network(mtcnn.rnet.eval(), (4, 3, 24, 24), "mtcnn_rnet", folder, threads, required)
    onet = onnx_network(mtcnn.onet.eval(), (4, 3, 48, 48), "mtcnn_onet", folder, threads, required)
    if pnet is None or rnet is None or onet is None:
        return None
    return CascadeNets(_OnnxStage(pnet), _OnnxStage(rnet), _OnnxStage(onet))  # type: ignore[arg-type]


def _bins(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive pooling's bins over ``[start, start + length)`` for ``size`` outputs: for each
    output, the first input index and one past the last (torch's integer rule)."""
    index = torch.arange(size, dtype=torch.int64)
    begin = start[..., None] + torch.div(index * length[..., None], size, rounding_mode="floor")
    end = start[..., None] + torch.div((index + 1) * length[..., None] + size - 1, size, rounding_mode="floor")
    return begin, end


class BoxSampler:
    """Area resampling (``interpolate(mode="area")``) of boxes of a batch of images to a square
    size. From the images' integral images (one gather for all boxes) when that is cheaper
    than resampling box by box, which it is unless the images are large and the boxes few."""

    #: Cost of the integral image per pixel against one box resampled alone, measured on this
    #: CPU (float64 cumulative sums: ~23 ns per pixel; one pooling call: ~57 us).
    PIXELS_PER_BOX = 2500

    def __init__(self, images: torch.Tensor) -> None:
        """``images``: (batch, 3, height, width) float32 with integer values (8-bit pixels)."""
        self.images = images
        self.height, self.width = images.shape[2], images.shape[3]
        self._integral: torch.Tensor | None = None

    def _integral_image(self) -> torch.Tensor:
        if self._integral is None:
            batch, channels = self.images.shape[:2]
            # float64 sums of 8-bit values are exact: the box averages match pooling's
            integral = torch.zeros((batch, self.height + 1, self.width + 1, channels), dtype=torch.float64)
            integral[:, 1:, 1:] = self.images.permute(0, 2, 3, 1).to(torch.float64).cumsum(1).cumsum(2)
            self._integral = integral
        return self._integral

    def crops(
        self, image_index: torch.Tensor, y0: np.ndarray, y1: np.ndarray, x0: np.ndarray, x1: np.ndarray, size: int
    ) -> torch.Tensor:
        """Boxes ``[y0, y1) x [x0, x1)`` of the images ``image_index``, each area-resampled
        to size x size: (boxes, 3, size, size) float32."""
        pixels = self.images.shape[0] * self.height * self.width
        if self._integral is None and pixels > len(y0) * self.PIXELS_PER_BOX:
            return torch.cat([
                interpolate(self.images[int(i), None, :, a:b, c:d], size=(size, size), mode="area")
                for i, a, b, c, d in zip(image_index, y0, y1, x0, x1, strict=True)
            ]) if len(y0) else torch.zeros((0, self.images.shape[1], size, size))
        y0, y1, x0, x1 = (torch.as_tensor(np.asarray(v, dtype=np.int64)) for v in (y0, y1, x0, x1))
        top, bottom = _bins(y0, y1 - y0, size)  # (boxes, size)
        left, right = _bins(x0, x1 - x0, size)
        s = self._integral_image()
        _, rows_total, cols_total, channels = s.shape
        base = image_index.to(torch.int64)[:, None, None] * rows_total
        channel = torch.arange(channels)

        def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            pixel = (base + rows[:, :, None]) * cols_total + cols[:, None, :]  # (boxes, size, size)
            return s.take(pixel[..., None] * channels + channel)  # (boxes, size, size, channels)

        total = corner(bottom, right) - corner(top, right) - corner(bottom, left) + corner(top, left)
        area = ((bottom - top)[:, :, None] * (right - left)[:, None, :]).to(torch.float64)
        return (total / area[..., None]).to(torch.float32).permute(0, 3, 1, 2)


def _proposal_rows(height: int) -> int:
    """Rows of P-Net's output for an input ``height`` rows high: 3x3 convolution, 2x2 max pool
    (stride 2, ceil mode), two 3x3 convolutions."""
    return max(-(-(height - 4) // 2) + 1 - 4, 0)


def _proposals(pnet: nn.Module, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P-Net over one pyramid level, in strips of :data:`STRIP_ROWS` output rows when the
    level is tall. Output row ``i`` sees input rows ``[2i, 2i + 12)``, so a strip of input rows
    ``[2a, 2b + 10)`` gives exactly output rows ``[a, b)``; the strips' activations stay in
    the CPU's cache, where a whole large level's do not (about 4x faster at 858x1201)."""
    rows = _proposal_rows(data.shape[2])
    if rows <= 2 * STRIP_ROWS:
        return pnet(data)
    regression, probs = [], []
    for start in range(0, rows, STRIP_ROWS):
        stop = min(start + STRIP_ROWS, rows)
        reg, prob = pnet(data[:, :, 2 * start : 2 * stop + 10])
        regression.append(reg[:, :, : stop - start])
        probs.append(prob[:, :, : stop - start])
    return torch.cat(regression, dim=2), torch.cat(probs, dim=2)


def _normalised(pixels: torch.Tensor) -> torch.Tensor:
    """MTCNN's input scaling, in place (``pixels`` is a fresh resampled copy), laid out
    channels-last: torch's CPU convolutions run the three networks 1.2-1.5x faster so."""
    return pixels.sub_(127.5).mul_(0.0078125).contiguous(memory_format=torch.channels_last)


def _refine(net: nn.Module, data: torch.Tensor) -> tuple[torch.Tensor, ...]:
    outputs = [net(data[i : i + REFINE_BATCH]) for i in range(0, len(data), REFINE_BATCH)]
    return tuple(torch.cat(parts, dim=0) for parts in zip(*outputs, strict=True))


def _box_crops(
    sampler: BoxSampler, boxes: torch.Tensor, image_index: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes' crops at size x size (as facenet-pytorch cuts them: 1-based, clipped to the
    image) and a mask of the boxes that have any pixel inside the image."""
    y, ey, x, ex = pad(boxes, sampler.width, sampler.height)
    inside = torch.as_tensor((ey > y - 1) & (ex > x - 1))
    keep = inside.numpy()
    crops = sampler.crops(image_index[inside], y[keep] - 1, ey[keep], x[keep] - 1, ex[keep], size)
    return crops, inside


def detect_faces(
    images: np.ndarray,
    nets: CascadeNets,
    min_face_size: int,
    thresholds: tuple[float, float, float],
    factor: float = 0.709,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Faces in a batch of same-size images, (batch, height, width, 3) uint8.

    Returns, per image, the boxes with scores (n, 5: x1, y1, x2, y2, probability) and the five
    landmarks (n, 5, 2), as facenet-pytorch's ``detect_face``.
    """
    batch, h, w = images.shape[:3]
    # planar (N, C, H, W) in memory: area resampling of interleaved pixels is 1.3-3x slower
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32))
    sampler = BoxSampler(pixels)
    m = 12.0 / min_face_size
    minl = min(h, w) * m
    scales = []
    scale = m
    while minl >= 12:
        scales.append(scale)
        scale *= factor
        minl *= factor

    # First stage: the proposal network over the pyramid, NMS per level and image
    stage_boxes, stage_images = [], []
    for scale in scales:
        data = _normalised(interpolate(pixels, size=(int(h * scale + 1), int(w * scale + 1)), mode="area"))
        reg, probs = _proposals(nets.pnet, data)
        level_boxes, level_images = generateBoundingBox(reg, probs[:, 1], scale, thresholds[0])
        pick = batched_nms(level_boxes[:, :4], level_boxes[:, 4], level_images, 0.5)
        stage_boxes.append(level_boxes[pick])
        stage_images.append(level_images[pick])
    boxes = torch.cat(stage_boxes, dim=0)
    image_index = torch.cat(stage_images, dim=0)
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.7)
    boxes, image_index = boxes[pick], image_index[pick]
    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([
        boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
        boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4],
    ]).permute(1, 0)
    boxes = rerec(boxes)

    # Second stage: the refinement network on 24 px crops
    if len(boxes) > 0:
        crops, inside = _box_crops(sampler, boxes, image_index, 24)
        boxes, image_index = boxes[inside], image_index[inside]
    if len(boxes) > 0:
        regression, probs = _refine(nets.rnet, _normalised(crops))
        score = probs[:, 1]
        passed = score > thresholds[1]
        boxes = torch.cat((boxes[passed, :4], score[passed].unsqueeze(1)), dim=1)
        image_index, regression = image_index[passed], regression[passed]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.7)
        boxes, image_index, regression = boxes[pick], image_index[pick], regression[pick]
        boxes = rerec(bbreg(boxes, regression))

    # Third stage: the output network on 48 px crops, landmarks, NMS by the smaller area
    points = torch.zeros(0, 5, 2)
    if len(boxes) > 0:
        crops, inside = _box_crops(sampler, boxes, image_index, 48)
        boxes, image_index = boxes[inside], image_index[inside]
    if len(boxes) > 0:
        regression, marks, probs = _refine(nets.onet, _normalised(crops))
        score = probs[:, 1]
        passed = score > thresholds[2]
        marks = marks[passed].permute(1, 0)
        boxes = torch.cat((boxes[passed, :4], score[passed].unsqueeze(1)), dim=1)
        image_index, regression = image_index[passed], regression[passed]
        width = boxes[:, 2] - boxes[:, 0] + 1
        height = boxes[:, 3] - boxes[:, 1] + 1
        points_x = width.repeat(5, 1) * marks[:5, :] + boxes[:, 0].repeat(5, 1) - 1
        points_y = height.repeat(5, 1) * marks[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
        points = torch.stack((points_x, points_y)).permute(2, 1, 0)
        boxes = bbreg(boxes, regression)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_index, 0.7, "Min")
        boxes, image_index, points = boxes[pick], image_index[pick], points[pick]

    boxes_np, points_np, index_np = boxes.numpy(), points.numpy(), image_index.numpy()
    return (
        [boxes_np[index_np == i].copy() for i in range(batch)],
        [points_np[index_np == i].copy() for i in range(batch)],
    )
