"""Face parsing with facexlib's ParseNet, for the optional parsing mask of paste-back."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from facexlib.parsing.parsenet import ParseNet

from codeformer_core.paste import parse_mask
from codeformer_core.weights import load_network


class FaceParser:
    """Soft face masks (skin, brows, eyes, nose, mouth, hair...; no neck, cloth or hat) of 512x512 faces."""

    def __init__(self, net: ParseNet, device: torch.device) -> None:
        self.net = net
        self.device = device

    @classmethod
    def from_weights(
        cls,
        device: torch.device,
        weights: str | None = None,
        weights_dir: str | os.PathLike[str] | None = None,
        synthetic_seed: int | None = None,
    ) -> FaceParser:
        with torch.device("meta"):
            net = ParseNet(in_size=512, out_size=512, parsing_ch=19)
        load_network(net, weights or "parsenet", weights_dir, synthetic_seed)
        return cls(net.to(device), device)

    def masks(self, faces: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One (512, 512) float mask in [0, 1] per RGB uint8 face, as the official helper makes them."""
        if not len(faces):
            return []
        x = torch.from_numpy(np.stack(faces).astype(np.float32) / 255.0).to(self.device).permute(0, 3, 1, 2)
        with torch.inference_mode():
            classes = self.net((x - 0.5) / 0.5)[0].argmax(dim=1).cpu().numpy()
        return [parse_mask(c, faces[0].shape[0]) for c in classes]
