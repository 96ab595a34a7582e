"""VQGAN building blocks and the encoder/generator stacks used by CodeFormer.

Module and parameter names follow the official checkpoint layout so that
`codeformer.pth` loads with `strict=True`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

GROUPNORM_EPS = 1e-6


class Float32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input's dtype (its statistics overflow or lose
    precision in 16 bits); the result is given back in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


def norm(channels: int) -> nn.GroupNorm:
    return Float32GroupNorm(num_groups=32, num_channels=channels, eps=GROUPNORM_EPS, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def conv3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1)


def conv1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=1, padding=0)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = norm(in_ch)
        self.conv1 = conv3(in_ch, out_ch)
        self.norm2 = norm(out_ch)
        self.conv2 = conv3(out_ch, out_ch)
        self.conv_out = conv1(in_ch, out_ch) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return h + self.conv_out(x)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all H*W positions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.q = conv1(channels, channels)
        self.k = conv1(channels, channels)
        self.v = conv1(channels, channels)
        self.proj_out = conv1(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # (B, 1, N, C): one head whose width is the channel count.
        q, k, v = (t(y).reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v, scale=c**-0.5)
        o = o.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(o)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def encoder_blocks(
    nf: int, ch_mult: Sequence[int], res_blocks: int, img_size: int, attn_resolutions: Sequence[int], emb_dim: int
) -> nn.ModuleList:
    blocks: list[nn.Module] = [conv3(3, nf)]
    res = img_size
    in_ch = nf
    for level, mult in enumerate(ch_mult):
        out_ch = nf * mult
        for _ in range(res_blocks):
            blocks.append(ResBlock(in_ch, out_ch))
            in_ch = out_ch
            if res in attn_resolutions:
                blocks.append(AttnBlock(in_ch))
        if level != len(ch_mult) - 1:
            blocks.append(Downsample(in_ch))
            res //= 2
    blocks += [ResBlock(in_ch, in_ch), AttnBlock(in_ch), ResBlock(in_ch, in_ch)]
    blocks += [norm(in_ch), conv3(in_ch, emb_dim)]
    return nn.ModuleList(blocks)


def generator_blocks(
    nf: int, ch_mult: Sequence[int], res_blocks: int, img_size: int, attn_resolutions: Sequence[int], emb_dim: int
) -> nn.ModuleList:
    in_ch = nf * ch_mult[-1]
    res = img_size // 2 ** (len(ch_mult) - 1)
    blocks: list[nn.Module] = [conv3(emb_dim, in_ch), ResBlock(in_ch, in_ch), AttnBlock(in_ch), ResBlock(in_ch, in_ch)]
    for level in reversed(range(len(ch_mult))):
        out_ch = nf * ch_mult[level]
        for _ in range(res_blocks):
            blocks.append(ResBlock(in_ch, out_ch))
            in_ch = out_ch
            if res in attn_resolutions:
                blocks.append(AttnBlock(in_ch))
        if level != 0:
            blocks.append(Upsample(in_ch))
            res *= 2
    blocks += [norm(in_ch), conv3(in_ch, 3)]
    return nn.ModuleList(blocks)


class BlockStack(nn.Module):
    """Holds `blocks` under the name the checkpoint uses (`encoder.blocks.N...`)."""

    def __init__(self, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.blocks = blocks


class VectorQuantizer(nn.Module):
    """Only the codebook is used at inference: CodeFormer predicts indices and looks rows up."""

    def __init__(self, codebook_size: int, emb_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, emb_dim)

    def lookup(self, indices: torch.Tensor, grid: int) -> torch.Tensor:
        """(B, L) code indices -> (B, emb_dim, grid, grid) features, tokens in row-major order."""
        feat = self.embedding.weight[indices]
        return feat.reshape(indices.shape[0], grid, grid, -1).permute(0, 3, 1, 2).contiguous()
