"""The speed options' decisions and the 16-bit network's layout, on the CPU; the GPU path takes the same code."""

import numpy as np
import pytest
import torch
from torch import nn

from codeformer_core import restore
from codeformer_core.arch import CodeFormer
from codeformer_core.restore import (
    Speed,
    auto_batch_size,
    cast_network,
    choose_layout,
    faces_to_tensor,
    resolve_precision,
)
from codeformer_core.winograd import use_winograd, winograd_available


@pytest.mark.parametrize(
    "device_type, fast_bf16, expected",
    [("cuda", True, "bf16"), ("cuda", False, "fp16"), ("cpu", True, "bf16"), ("cpu", False, "fp32")],
)
def test_auto_precision_is_bf16_where_it_is_fast(device_type, fast_bf16, expected):
    assert resolve_precision("auto", device_type, fast_bf16) == expected
    assert resolve_precision("fp16", device_type, fast_bf16) == "fp16"


def test_auto_batch_size_follows_free_memory_within_bounds():
    gib = 1 << 30
    assert auto_batch_size(10 * gib, "fp32", "cuda") == 8  # 0.8 * 10 GiB / 1 GiB per face
    assert auto_batch_size(10 * gib, "bf16", "cuda") == 16  # half the bytes per face
    assert auto_batch_size(141 * gib, "bf16", "cuda") == restore.MAX_AUTO_BATCH["cuda"]
    assert auto_batch_size(100 * gib, "fp32", "cpu") == restore.MAX_AUTO_BATCH["cpu"]
    assert auto_batch_size(gib // 4, "fp32", "cuda") == 1  # one face is always tried; too little memory fails that batch


@pytest.mark.parametrize(
    "speed, device_type, precision, expected",
    [
        (Speed(), "cpu", "fp32", (winograd_available(), not winograd_available())),
        (Speed(winograd=False), "cpu", "fp32", (False, True)),
        (Speed(channels_last=True), "cpu", "fp32", (False, True)),
        (Speed(channels_last=False, winograd=False), "cpu", "fp32", (False, False)),
        (Speed(), "cpu", "bf16", (False, True)),
        (Speed(), "cuda", "bf16", (False, True)),
        (Speed(), "cuda", "fp32", (False, False)),
    ],
)
def test_layout_choice(speed, device_type, precision, expected):
    assert choose_layout(speed, device_type, precision) == expected


def test_speed_rejects_unknown_settings():
    with pytest.raises(ValueError, match="precision must be auto or one of fp32, bf16, fp16"):
        Speed(precision="int8")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        Speed(batch_size=0)


def test_cast_network_keeps_norms_and_the_code_head_in_float32():
    model = cast_network(CodeFormer(n_layers=1), "bf16")
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if not params:
            continue
        want = torch.float32 if isinstance(module, (nn.GroupNorm, nn.LayerNorm)) or name.startswith("idx_pred_layer") else torch.bfloat16
        assert {p.dtype for p in params} == {want}, name


def test_pixels_go_through_pinned_memory_when_asked(monkeypatch):
    pinned = []

    def pin_memory(self):
        pinned.append(self.shape)
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    faces = np.random.default_rng(0).integers(0, 256, (2, 512, 512, 3), dtype=np.uint8)
    with_pin = faces_to_tensor(faces, torch.device("cpu"), pin=True)
    assert pinned == [(2, 512, 512, 3)]  # the uint8 pixels, before they are scaled on the device
    assert torch.equal(with_pin, faces_to_tensor(faces, torch.device("cpu")))
    assert with_pin.dtype == torch.float32 and with_pin.shape == (2, 3, 512, 512)


def test_winograd_swaps_only_3x3_stride_1_convolutions_and_computes_the_same():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.Conv2d(16, 8, 3, padding=1))
    x = torch.randn(2, 8, 40, 40)
    with torch.no_grad():
        want = model(x)
        assert use_winograd(model) == 2
        got = model(x)
    assert [type(m).__name__ for m in model] == ["WinogradConv3x3", "Conv2d", "Conv2d", "WinogradConv3x3"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert set(model.state_dict()) == {f"{i}.{p}" for i in range(4) for p in ("weight", "bias")}


def test_winograd_needs_fp32_on_the_cpu():
    for speed in (Speed(precision="bf16", winograd=True), Speed(precision="fp32", winograd=True, channels_last=True)):
        with pytest.raises(ValueError, match="Winograd convolutions run in fp32 on CPUs"):
            restore.Restorer(CodeFormer(n_layers=1), torch.device("cpu"), speed)
