"""The CodeFormer network, written from the paper and the architecture notes."""

from codeformer_core.arch.codeformer import CodeFormer

__all__ = ["CodeFormer"]
