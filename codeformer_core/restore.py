"""Restorer: holds a CodeFormer network and restores batches of aligned 512x512 faces.

Speed options (`Speed`): the precision (`fp32`, the official arithmetic with TF32 off; `bf16` or `fp16`, a
cast network whose norms, AdaIN statistics and code-prediction head stay in float32), Winograd
3x3 convolutions (float32 on CPUs), the channels_last memory format, torch.compile, and a batch
size chosen from free memory."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from codeformer_core.align import FACE_SIZE
from codeformer_core.arch import CodeFormer
from codeformer_core.weights import WeightsInfo, build_codeformer, codeformer_weights
from codeformer_core.winograd import use_winograd, winograd_available

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Memory of a forward per face in float32, with margin; half precisions take half. An estimate:
# a batch-1 fp32 forward peaked at 1.74 GiB of process RSS on the CPU, weights and runtime
# included (bench/restore_forward.py); GPU peaks are not measured yet.
FP32_BYTES_PER_FACE = 1 << 30
MEMORY_FRACTION = 0.8
# On CPUs a larger batch is not faster (fp32: the same faces/s at 1 and 4; Winograd: slower).
MAX_AUTO_BATCH = {"cuda": 64, "cpu": 1}


@dataclass(frozen=True)
class Speed:
    """How the network runs. `precision` "auto" is bf16 on GPUs that have it (else fp16) and on
    CPUs with AMX, else fp32; `winograd` computes the 3x3 convolutions by NNPACK's Winograd
    transform, fp32 on CPUs only; `channels_last` is the memory format; None for either is
    `choose_layout`'s choice; `batch_size` None picks it from free memory."""

    precision: str = "auto"
    channels_last: bool | None = None
    winograd: bool | None = None
    compile: bool = False
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


@contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """float32 matrix products and convolutions without TF32 on a GPU while the block runs, as the
    official arithmetic; the process's own setting comes back after it."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def fast_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 in hardware: a GPU that supports it, a CPU with AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(precision: str, device_type: str, has_fast_bf16: bool) -> str:
    """'auto': bf16 where it is fast; on a GPU without it fp16; on other CPUs fp32."""
    if precision != "auto":
        return precision
    if has_fast_bf16:
        return "bf16"
    return "fp16" if device_type == "cuda" else "fp32"


def choose_layout(speed: Speed, device_type: str, precision: str) -> tuple[bool, bool]:
    """(winograd, channels_last). Winograd (NCHW only) where asked or, by default, for fp32 on CPUs
    with NNPACK; else channels_last by default on CPUs (fp32 too: 1.14x here) and for 16 bits on GPUs."""
    winograd_fits = device_type == "cpu" and precision == "fp32" and speed.channels_last is not True
    if speed.winograd and not winograd_fits:
        raise ValueError("Winograd convolutions run in fp32 on CPUs, without channels_last")
    winograd = speed.winograd if speed.winograd is not None else winograd_fits and winograd_available()
    if speed.channels_last is not None:
        return winograd, speed.channels_last
    return winograd, not winograd and (device_type == "cpu" or precision != "fp32")


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def auto_batch_size(free_bytes: int, precision: str, device_type: str) -> int:
    """Faces per forward pass that fit MEMORY_FRACTION of `free_bytes`, at least 1, at most MAX_AUTO_BATCH."""
    per_face = FP32_BYTES_PER_FACE * PRECISIONS[precision].itemsize // 4
    return max(1, min(MAX_AUTO_BATCH[device_type], int(free_bytes * MEMORY_FRACTION) // per_face))


def cast_network(model: CodeFormer, precision: str) -> CodeFormer:
    """`model` in `precision`, except the norms and the code-prediction head (argmax over 1024 codes),
    which stay in float32."""
    model.to(PRECISIONS[precision])
    for module in model.modules():
        if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            module.float()
    model.idx_pred_layer.float()
    return model


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' is the first GPU when there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def faces_to_tensor(faces: np.ndarray, device: torch.device, pin: bool = False) -> torch.Tensor:
    """(N,512,512,3) uint8 RGB -> (N,3,512,512) float32 in [-1,1], scaled as the official script does.

    With `pin` (for GPUs) the uint8 pixels travel from pinned memory without blocking; they are scaled on `device`."""
    pixels = torch.from_numpy(faces)
    if pin:
        pixels = pixels.pin_memory()
    t = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).double().div(255.0).float()
    return (t - 0.5) / 0.5


def tensor_to_faces(t: torch.Tensor) -> np.ndarray:
    """Network output -> (N,512,512,3) uint8 RGB: clamp to [-1,1], rescale, round."""
    t = (t.float().clamp(-1, 1) + 1) / 2
    return (t * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class Restorer:
    """Restores aligned faces with CodeFormer, as `speed` says."""

    def __init__(self, model: CodeFormer, device: torch.device, speed: Speed = Speed()) -> None:
        self.device = device
        self.precision = resolve_precision(speed.precision, device.type, fast_bf16(device))
        self.batch_size = speed.batch_size or auto_batch_size(free_memory_bytes(device), self.precision, device.type)
        self.winograd, self.channels_last = choose_layout(speed, device.type, self.precision)
        model = cast_network(model.to(device).eval(), self.precision)
        if self.winograd:
            use_winograd(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.forward = torch.compile(model, dynamic=False) if speed.compile else model

    @classmethod
    def from_checkpoint(
        cls,
        spec: str = "codeformer",
        device: str = "auto",
        speed: Speed = Speed(),
        weights_dir: str | os.PathLike[str] | None = None,
    ) -> tuple[Restorer, WeightsInfo]:
        """`spec` as `codeformer_weights` takes it: a known name, path, s3:// URI or `synthetic:SEED`."""
        state_dict, info = codeformer_weights(spec, weights_dir)
        chosen = pick_device(device)
        return cls(build_codeformer(state_dict, chosen), chosen, speed), info

    def network_input(self, faces: np.ndarray) -> torch.Tensor:
        x = faces_to_tensor(faces, self.device, pin=self.device.type == "cuda").to(PRECISIONS[self.precision])
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def run(self, x: torch.Tensor, fidelity: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network on a prepared batch (`network_input`): image, code logits (float32), lq_feat."""
        with torch.inference_mode(), ieee_fp32(self.device):
            return self.forward(x, w=fidelity, adain=True)

    def restore(self, faces: Sequence[np.ndarray] | np.ndarray, fidelity: float = 0.5) -> np.ndarray:
        """(N,512,512,3) uint8 RGB aligned faces -> restored faces of the same shape.

        `fidelity` is CodeFormer's w: 0 favours quality (codebook prior), 1 favours the input.
        """
        stacked = np.ascontiguousarray(np.stack(list(faces)) if len(faces) else np.empty((0, FACE_SIZE, FACE_SIZE, 3), np.uint8))
        if stacked.ndim != 4 or stacked.shape[1:] != (FACE_SIZE, FACE_SIZE, 3) or stacked.dtype != np.uint8:
            raise ValueError(f"faces must be uint8 arrays of shape (512, 512, 3); got {stacked.dtype} {stacked.shape}")
        out = np.empty_like(stacked)
        for start in range(0, len(stacked), self.batch_size):
            restored, _, _ = self.run(self.network_input(stacked[start : start + self.batch_size]), fidelity)
            out[start : start + len(restored)] = tensor_to_faces(restored)
        return out
