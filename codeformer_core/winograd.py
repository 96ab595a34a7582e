"""3x3 convolutions by the Winograd transform (NNPACK), for float32 on CPUs.

Winograd's minimal filtering computes a 3x3, stride-1 convolution with fewer multiplications
than the direct sum (NNPACK's F(6x6, 3x3) tiles: 64 instead of 324 per 6x6 output tile and
channel pair), at the price of float32 rounding of a few 1e-6 relative per layer. Most of
CodeFormer's ~810 GFLOP are such convolutions, so on CPUs without 16-bit matrix units
(no AMX) this is the way to fewer operations per face. NNPACK ships inside regular PyTorch builds.
"""

from __future__ import annotations

import torch
from torch import nn


def winograd_available() -> bool:
    return bool(torch._nnpack_available())


class WinogradConv3x3(nn.Module):
    """The same parameters as the 3x3, stride-1, padding-1 `conv` it replaces, computed by NNPACK."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch._nnpack_spatial_convolution(x.contiguous(), self.weight, self.bias, [1, 1, 1, 1], [1, 1])


def eligible(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (3, 3)
        and module.stride == (1, 1)
        and module.padding == (1, 1)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def use_winograd(model: nn.Module) -> int:
    """Swap every eligible convolution of `model` (float32, on the CPU) for its Winograd form; how many were swapped."""
    if not winograd_available():
        raise RuntimeError("this PyTorch build has no NNPACK, which the Winograd convolutions need")
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if eligible(child):
                setattr(parent, name, WinogradConv3x3(child))
                swapped += 1
    return swapped
