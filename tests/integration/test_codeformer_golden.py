"""Our CodeFormer against outputs of the official implementation on the same synthetic weights."""

import json

import cv2
import numpy as np
import pytest
import torch

from codeformer_core.arch import CodeFormer
from tests.conftest import GOLDEN_DIR


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(GOLDEN_DIR / "expected.npz"))


@pytest.fixture(scope="module")
def golden_input() -> torch.Tensor:
    rgb = cv2.cvtColor(cv2.imread(str(GOLDEN_DIR / "input.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    t = torch.from_numpy((rgb / 255.0).astype(np.float32)).permute(2, 0, 1)[None]
    return (t - 0.5) / 0.5


def assert_close(name: str, got: torch.Tensor, want: np.ndarray, max_abs: float, mean_abs: float) -> None:
    diff = np.abs(got.numpy().astype(np.float64) - want.astype(np.float64))
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {want.shape}"
    assert diff.max() <= max_abs and diff.mean() <= mean_abs, (
        f"{name}: max abs {diff.max():.3g} (limit {max_abs}), mean abs {diff.mean():.3g} (limit {mean_abs})"
    )


def test_state_dict_layout_matches_official_keys():
    keys = json.loads((GOLDEN_DIR / "keys.json").read_text())
    with torch.device("meta"):
        shapes = [(name, tuple(t.shape)) for name, t in CodeFormer().state_dict().items()]
    assert [(name, tuple(shape)) for name, shape, _ in keys] == shapes


@pytest.mark.parametrize("w, out_key", [(0.0, "out_w0"), (0.5, "out_w05"), (1.0, "out_w1")])
def test_forward_matches_official(synthetic_model, golden_input, expected, w, out_key):
    with torch.no_grad():
        out, logits, lq_feat = synthetic_model(golden_input, w=w, adain=True)

    assert torch.equal(logits.argmax(dim=2), torch.from_numpy(expected["idx"]))
    assert_close("logits", logits, expected["logits"], 3e-5, 3e-6)
    assert_close("lq_feat", lq_feat, expected["lq_feat"], 3e-5, 3e-6)
    assert_close(out_key, out, expected[out_key], 3e-4, 6e-6)
