"""CodeFormer (Zhou et al., arXiv 2206.11253): VQGAN encoder, code-prediction transformer,
codebook lookup with AdaIN, and a generator with fidelity-weighted fusion of encoder features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from codeformer_core.arch.transformer import Float32LayerNorm, FuseSFT, TransformerLayer, adaptive_instance_norm
from codeformer_core.arch.vqgan import BlockStack, VectorQuantizer, encoder_blocks, generator_blocks

IMG_SIZE = 512
NF = 64
CH_MULT = (1, 2, 2, 4, 4, 8)
RES_BLOCKS = 2
ATTN_RESOLUTIONS = (16,)
EMB_DIM = 256
GRID = 16

# Which encoder output is kept as the skip feature of each resolution, and after which
# generator block that resolution is fused.
ENCODER_SKIP_BLOCK = {"32": 14, "64": 11, "128": 8, "256": 5}
GENERATOR_FUSE_BLOCK = {"32": 9, "64": 12, "128": 15, "256": 18}
FUSE_CHANNELS = {"32": 256, "64": 256, "128": 128, "256": 128}


class CodeFormer(nn.Module):
    def __init__(
        self,
        dim_embd: int = 512,
        codebook_size: int = 1024,
        n_head: int = 8,
        n_layers: int = 9,
        connect_list: Sequence[str] = ("32", "64", "128", "256"),
    ) -> None:
        super().__init__()
        unknown = set(connect_list) - set(ENCODER_SKIP_BLOCK)
        if unknown:
            raise ValueError(f"connect_list entries must be among {sorted(ENCODER_SKIP_BLOCK)}; got {sorted(unknown)}")
        self.connect_list = tuple(connect_list)
        stack_args = (NF, CH_MULT, RES_BLOCKS, IMG_SIZE, ATTN_RESOLUTIONS, EMB_DIM)

        self.position_emb = nn.Parameter(torch.zeros(GRID * GRID, dim_embd))
        self.encoder = BlockStack(encoder_blocks(*stack_args))
        self.quantize = VectorQuantizer(codebook_size, EMB_DIM)
        self.generator = BlockStack(generator_blocks(*stack_args))
        self.feat_emb = nn.Linear(EMB_DIM, dim_embd)
        self.ft_layers = nn.ModuleList(TransformerLayer(dim_embd, n_head, 2 * dim_embd) for _ in range(n_layers))
        self.idx_pred_layer = nn.Sequential(Float32LayerNorm(dim_embd), nn.Linear(dim_embd, codebook_size, bias=False))
        self.fuse_convs_dict = nn.ModuleDict({size: FuseSFT(FUSE_CHANNELS[size]) for size in self.connect_list})

    def forward(
        self, x: torch.Tensor, w: float = 0.5, adain: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B,3,512,512) RGB in [-1,1] -> (restored image, code logits (B,256,codebook), lq_feat (B,256,16,16)).

        `w` is the fidelity weight: 0 decodes from the codebook prior alone, larger values
        fuse in more of the input's own features. The image is returned unclamped.
        """
        skip_at = {ENCODER_SKIP_BLOCK[size]: size for size in self.connect_list}
        skips: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i in skip_at:
                skips[skip_at[i]] = x
        lq_feat = x

        tokens = self.feat_emb(lq_feat.flatten(2).transpose(1, 2))
        for layer in self.ft_layers:
            tokens = layer(tokens, self.position_emb)
        logits = self.idx_pred_layer(tokens)

        quant_feat = self.quantize.lookup(logits.argmax(dim=2), GRID)
        if adain:
            quant_feat = adaptive_instance_norm(quant_feat, lq_feat)

        fuse_at = {GENERATOR_FUSE_BLOCK[size]: size for size in self.connect_list}
        x = quant_feat
        for i, block in enumerate(self.generator.blocks):
            x = block(x)
            if i in fuse_at and w > 0:
                size = fuse_at[i]
                x = self.fuse_convs_dict[size](skips[size], x, w)
        return x, logits, lq_feat
