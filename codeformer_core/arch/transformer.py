"""Code-prediction transformer, AdaIN and the controllable feature fusion (SFT) block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codeformer_core.arch.vqgan import ResBlock, conv3

ADAIN_EPS = 1e-5


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input's dtype; the result is in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)


class SelfAttention(nn.Module):
    """Multi-head attention with `nn.MultiheadAttention`'s parameter names, batch-first.

    Queries and keys see `qk_in` (features plus position embedding); values see `v_in`.
    """

    def __init__(self, dim: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, qk_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        b, length, dim = v_in.shape
        w_qk, w_v = self.in_proj_weight.split((2 * dim, dim))
        b_qk, b_v = self.in_proj_bias.split((2 * dim, dim))
        q, k = F.linear(qk_in, w_qk, b_qk).chunk(2, dim=-1)
        v = F.linear(v_in, w_v, b_v)
        q, k, v = (t.reshape(b, length, self.n_head, dim // self.n_head).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(o.transpose(1, 2).reshape(b, length, dim))


class TransformerLayer(nn.Module):
    """Pre-norm layer; the position embedding is added to query and key inputs only."""

    def __init__(self, dim: int, n_head: int, dim_mlp: int) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, n_head)
        self.linear1 = nn.Linear(dim, dim_mlp)
        self.linear2 = nn.Linear(dim_mlp, dim)
        self.norm1 = Float32LayerNorm(dim)
        self.norm2 = Float32LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        a = self.norm1(x).to(x.dtype)
        x = x + self.self_attn(a + pos, a)
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x).to(x.dtype))))


def adaptive_instance_norm(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Give `content` the per-sample, per-channel mean and std of `style` (unbiased variance),
    computed in float32; the result is in `content`'s dtype."""

    def stats(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = feat.float().flatten(2)
        mean = flat.mean(dim=2)[..., None, None]
        std = (flat.var(dim=2, unbiased=True) + ADAIN_EPS).sqrt()[..., None, None]
        return mean, std

    c_mean, c_std = stats(content)
    s_mean, s_std = stats(style)
    return ((content.float() - c_mean) / c_std * s_std + s_mean).to(content.dtype)


class FuseSFT(nn.Module):
    """Controllable feature transformation: dec + w * (dec * scale + shift)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels)
        self.scale = nn.Sequential(conv3(channels, channels), nn.LeakyReLU(0.2), conv3(channels, channels))
        self.shift = nn.Sequential(conv3(channels, channels), nn.LeakyReLU(0.2), conv3(channels, channels))

    def forward(self, enc: torch.Tensor, dec: torch.Tensor, w: float) -> torch.Tensor:
        e = self.encode_enc(torch.cat([enc, dec], dim=1))
        return dec + w * (dec * self.scale(e) + self.shift(e))
