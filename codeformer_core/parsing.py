"""Face parsing with facexlib's ParseNet, for the optional parsing mask of paste-back."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from codeformer_core.paste import parse_mask
from codeformer_core.weights import load_network

if TYPE_CHECKING:  # facexlib is imported when a network is built (see codeformer_core.detect)
    from facexlib.parsing.parsenet import ParseNet

PARSE_SIZE = 512


class FaceParser:
    """Soft face masks (skin, brows, eyes, nose, mouth, hair...; no neck, cloth or hat) of restored faces."""

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
        from facexlib.parsing.parsenet import ParseNet

        with torch.device("meta"):
            net = ParseNet(in_size=PARSE_SIZE, out_size=PARSE_SIZE, parsing_ch=19)
        load_network(net, weights or "parsenet", weights_dir, synthetic_seed)
        return cls(net.to(device), device)

    def masks(self, faces: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One float mask in [0, 1] of each RGB uint8 face's size, as the official helper makes them:
        parsed at 512x512 (a face of another size resized to it), the mask resized back."""
        if not len(faces):
            return []
        at_512 = [f if f.shape[:2] == (PARSE_SIZE, PARSE_SIZE) else cv2.resize(f, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR) for f in faces]
        x = torch.from_numpy(np.stack(at_512).astype(np.float32) / 255.0).to(self.device).permute(0, 3, 1, 2)
        with torch.inference_mode():
            classes = self.net((x - 0.5) / 0.5)[0].argmax(dim=1).cpu().numpy()
        return [parse_mask(c, f.shape[0]) for c, f in zip(classes, faces)]
