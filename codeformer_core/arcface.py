"""facexlib's ArcFace recognition network (IR-SE50), loaded once, for identity similarity."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from codeformer_core.weights import load_network

if TYPE_CHECKING:  # facexlib is imported when a network is built (see codeformer_core.detect)
    from facexlib.recognition.arcface_arch import Backbone


def load_arcface(
    device: torch.device, weights: str | None = None, weights_dir: str | os.PathLike[str] | None = None, synthetic_seed: int | None = None
) -> Backbone:
    """The official checkpoint resolved by name (or `weights`: a path or s3:// URI), or synthetic weights."""
    from facexlib.recognition.arcface_arch import Backbone

    with torch.device("meta"):
        net = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
    load_network(net, weights or "arcface", weights_dir, synthetic_seed)
    return net.to(device)
