"""Max pooling by strided slices, for MTCNN on the CPU.

torch's CPU ``max_pool2d`` is slow on MTCNN's shapes: a 2x2 pool over a batch of four
150 px pyramid levels takes about 5 ms at one thread, and the 3x3 pools of the refinement
networks 40 ms over a few hundred candidate boxes, where a running maximum of strided slices
takes about a tenth. Taking maxima is exact, so the detector's output is unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _pooled_length(size: int, kernel: int, stride: int, ceil_mode: bool) -> int:
    """torch's output length for padding 0 and dilation 1."""
    span = size - kernel
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size:
        out -= 1  # a last window may not start past the input (torch's rule)
    return max(out, 0)


def _pool_axis(x: torch.Tensor, dim: int, kernel: int, stride: int, ceil_mode: bool) -> torch.Tensor:
    size = x.shape[dim]
    out = _pooled_length(size, kernel, stride, ceil_mode)

    def taps(offset: int, count: int) -> torch.Tensor:
        """Every ``stride``-th element from ``offset``: the window position ``offset`` of
        the first ``count`` windows (a view)."""
        part = x.narrow(dim, offset, (count - 1) * stride + 1)
        return part[(slice(None),) * dim + (slice(None, None, stride),)]

    if out == 0:
        return x.narrow(dim, 0, 0)
    # ceil mode's last window may hang past the input: window positions past the end are
    # left out of that window only (padding the whole tensor with -inf costs a copy of it)
    counts = [min(out, (size - 1 - offset) // stride + 1) for offset in range(kernel)]
    result = taps(0, out)
    full = [offset for offset in range(1, kernel) if counts[offset] == out]
    for offset in full:
        result = torch.maximum(result, taps(offset, out))
    partial = [offset for offset in range(1, kernel) if 0 < counts[offset] < out]
    if partial:
        if not full:
            result = result.clone()
        for offset in partial:
            head = result.narrow(dim, 0, counts[offset])
            head.copy_(torch.maximum(head, taps(offset, counts[offset])))
    return result


class SlicedMaxPool2d(nn.Module):
    """``nn.MaxPool2d(kernel, stride, padding=0, ceil_mode=...)`` computed by strided slices."""

    def __init__(self, kernel_size: int, stride: int, ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.ceil_mode = ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pool_axis(x, x.dim() - 2, self.kernel_size, self.stride, self.ceil_mode)
        return _pool_axis(x, x.dim() - 1, self.kernel_size, self.stride, self.ceil_mode)

    @classmethod
    def replacing(cls, pool: nn.MaxPool2d) -> nn.Module:
        """The sliced equivalent of ``pool``, or ``pool`` itself when it uses padding,
        dilation, rectangular windows or index output (not needed by MTCNN)."""
        kernel, stride = pool.kernel_size, pool.stride if pool.stride is not None else pool.kernel_size
        if (not isinstance(kernel, int) or not isinstance(stride, int) or pool.padding not in (0, (0, 0))
                or pool.dilation not in (1, (1, 1)) or pool.return_indices):
            return pool
        return cls(kernel, stride, bool(pool.ceil_mode))


def replace_max_pools(module: nn.Module) -> int:
    """Swap every plain ``nn.MaxPool2d`` inside ``module`` for :class:`SlicedMaxPool2d`; the count."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MaxPool2d):
            sliced = SlicedMaxPool2d.replacing(child)
            if sliced is not child:
                setattr(module, name, sliced)
                count += 1
        else:
            count += replace_max_pools(child)
    return count
