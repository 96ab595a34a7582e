"""facexlib's ArcFace recognition network (IR-SE50), loaded once, for identity similarity."""

from __future__ import annotations

import os

import torch
from facexlib.recognition.arcface_arch import Backbone

from codeformer_core.weights import read_checkpoint, resolve, synthetic_state_dict


def build_arcface(state_dict: dict[str, torch.Tensor] | None, device: torch.device) -> Backbone:
    net = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
    if state_dict is not None:
        net.load_state_dict({k.removeprefix("module."): v for k, v in state_dict.items()}, strict=True)
    return net.to(device).eval()


def load_arcface(
    device: torch.device,
    weights: str | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
    synthetic_seed: int | None = None,
) -> Backbone:
    """The official checkpoint resolved by name (or `weights`: a path or s3:// URI), or synthetic weights."""
    if synthetic_seed is not None:
        with torch.device("meta"):
            state_dict = synthetic_state_dict(Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se"), synthetic_seed)
    else:
        state_dict, _ = read_checkpoint(resolve(weights or "arcface", weights_dir=weights_dir))
    return build_arcface(state_dict, device)
