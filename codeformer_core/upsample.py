"""Real-ESRGAN x2/x4 upsampling of whole images and faces, as the official CodeFormer inference uses it.

The RRDBNet architecture comes from spandrel, which loads the official checkpoints (`params_ema`,
BasicSR names). Images go through it as the official RealESRGANer does: RGB in [0, 1], padded by
reflection to an even size for the x2 model, cut into tiles of `tile` pixels that each see `pad`
pixels of context, stitched, clamped and rounded back to uint8. Tiles bound the memory of large
images; at the tile seams the output differs a little from an untiled pass, because the network
sees farther than `pad`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from codeformer_core.weights import WeightsError, WeightsInfo, layout_state

CHECKPOINTS = {2: "realesrgan_x2plus", 4: "realesrgan_x4plus"}
DEFAULT_TILE = 400
TILE_PAD = 40
FEATURES, BLOCKS, GROWTH = 64, 23, 32


def realesrgan_shapes(scale: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the official RRDBNet state dict (BasicSR's), x2 (pixel-unshuffled input) or x4."""
    if scale not in CHECKPOINTS:
        raise ValueError(f"Real-ESRGAN scale must be 2 or 4, got {scale}")
    conv = lambda out, inp: {"weight": (out, inp, 3, 3), "bias": (out,)}  # noqa: E731
    layers = {"conv_first": conv(FEATURES, 12 if scale == 2 else 3)}  # x2 sees its input pixel-unshuffled by 2
    for b in range(BLOCKS):
        for r in (1, 2, 3):
            for c in range(1, 6):
                out = FEATURES if c == 5 else GROWTH
                layers[f"body.{b}.rdb{r}.conv{c}"] = conv(out, FEATURES + (c - 1) * GROWTH)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        layers[name] = conv(FEATURES, FEATURES)
    layers["conv_last"] = conv(3, FEATURES)
    return {f"{layer}.{kind}": shape for layer, params in layers.items() for kind, shape in params.items()}


class Upsampler:
    """A Real-ESRGAN network on a device, applied in tiles of `tile` pixels with `pad` of context (tile 0: whole)."""

    def __init__(self, net: torch.nn.Module, scale: int, device: torch.device, tile: int = DEFAULT_TILE, pad: int = TILE_PAD) -> None:
        self.net, self.scale, self.device, self.tile, self.pad = net, scale, device, tile, pad

    @classmethod
    def from_weights(
        cls,
        scale: int,
        device: torch.device,
        weights: str | None = None,
        weights_dir: str | os.PathLike[str] | None = None,
        synthetic_seed: int | None = None,
        tile: int = DEFAULT_TILE,
        pad: int = TILE_PAD,
    ) -> tuple[Upsampler, WeightsInfo]:
        import spandrel  # imported when a network is built (see codeformer_core.detect)

        state_dict, info = realesrgan_weights(scale, weights, weights_dir, synthetic_seed)
        descriptor = spandrel.ModelLoader().load_from_state_dict(state_dict)
        if descriptor.scale != scale:
            raise WeightsError(f"{info.source} is a x{descriptor.scale} model; --upscale {scale} needs a x{scale} one")
        return cls(descriptor.model.eval().to(device), scale, device, tile, pad), info

    def upsample(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H*scale, W*scale, 3) uint8."""
        h, w = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        if self.scale == 2:
            x = F.pad(x, (0, w % 2, 0, h % 2), mode="reflect")
        with torch.inference_mode():
            out = (self._tiled(x) if self.tile else self.net(x))[0, :, : h * self.scale, : w * self.scale].clamp(0, 1)
            return (out.permute(1, 2, 0) * 255.0).round().to(torch.uint8).cpu().numpy()

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        s, t, p = self.scale, self.tile, self.pad
        out = x.new_zeros((1, c, h * s, w * s))
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                y1, x1 = min(y0 + t, h), min(x0 + t, w)
                py0, px0 = max(y0 - p, 0), max(x0 - p, 0)
                tile = self.net(x[:, :, py0 : min(y1 + p, h), px0 : min(x1 + p, w)])
                oy, ox = (y0 - py0) * s, (x0 - px0) * s
                out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = tile[:, :, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
        return out


def realesrgan_weights(
    scale: int, weights: str | None = None, weights_dir: str | os.PathLike[str] | None = None, synthetic_seed: int | None = None
) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """The official-layout state dict of the x`scale` model (`weights`: a path, URI or known name;
    default the official checkpoint), checked, and its provenance; synthetic with `synthetic_seed`."""
    return layout_state(realesrgan_shapes(scale), f"Real-ESRGAN x{scale}", weights or CHECKPOINTS[scale], weights_dir, synthetic_seed)
