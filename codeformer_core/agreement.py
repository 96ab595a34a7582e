"""How close a fast run of the network is to a float32 reference on the same input."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Agreement:
    index_agreement: float  # fraction of code indices (argmax of the logits) equal to the reference's
    psnr_db: float  # of the output image clamped to [-1,1] (peak-to-peak 2) against the clamped reference; inf if equal


def agreement(out: torch.Tensor, logits: torch.Tensor, ref_out: torch.Tensor, ref_idx: torch.Tensor) -> Agreement:
    """`out`/`logits` as the network returns them; `ref_idx` the reference's (B, 256) code indices."""
    same = (logits.argmax(dim=2).cpu() == ref_idx.cpu()).double().mean().item()
    mse = (out.double().cpu().clamp(-1, 1) - ref_out.double().cpu().clamp(-1, 1)).square().mean().item()
    return Agreement(index_agreement=same, psnr_db=math.inf if mse == 0 else 10 * math.log10(4.0 / mse))
