"""The fast modes of the Restorer against the official fp32 output on the golden input and weights.

docs/BENCHMARKS.md records what each mode measures; the limits leave a margin under it. The golden
weights are random: a random network amplifies rounding far more than the trained one, and a
flipped code index changes a whole 32x32 region, so the 16-bit limits are loose on purpose and
guard against breakage (a norm computed in 16 bits, a wrong cast), not against rounding."""

import cv2
import numpy as np
import pytest
import torch

from codeformer_core import restore
from codeformer_core.agreement import agreement
from codeformer_core.restore import Restorer, Speed
from codeformer_core.weights import build_codeformer
from codeformer_core.winograd import WinogradConv3x3, winograd_available
from tests.conftest import GOLDEN_DIR

# (speed, minimum index agreement, minimum PSNR dB when every code index agrees)
LIMITS = {
    "fp32": (Speed(precision="fp32", channels_last=False, winograd=False), 1.0, 75.0),
    "fp32+cl": (Speed(precision="fp32", channels_last=True, winograd=False), 1.0, 75.0),
    "fp32+wino": (Speed(precision="fp32", channels_last=False, winograd=True), 0.99, 60.0),
    "bf16+cl": (Speed(precision="bf16", channels_last=True), 0.98, 17.0),
    "fp16+cl": (Speed(precision="fp16", channels_last=True), 0.99, 45.0),
}
# A flipped code index changes a whole 32x32 region of the output: where the agreement limit lets
# some flip (fp16 on CPUs with AVX512-FP16 flips one code in 256 and falls to 24 dB), the PSNR
# limit is bf16's, which always flips some.
FLIPPED_PSNR = 17.0


@pytest.fixture(scope="module")
def golden():
    rgb = cv2.cvtColor(cv2.imread(str(GOLDEN_DIR / "input.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    expected = np.load(GOLDEN_DIR / "expected.npz")
    return rgb[None], torch.from_numpy(expected["out_w05"]), torch.from_numpy(expected["idx"])


@pytest.mark.parametrize("mode", list(LIMITS))
def test_mode_agrees_with_the_official_fp32_output(synthetic_state_dict, golden, mode):
    speed, min_agreement, min_psnr = LIMITS[mode]
    rgb, out_w05, idx = golden
    restorer = Restorer(build_codeformer(synthetic_state_dict), torch.device("cpu"), speed)
    out, logits, _ = restorer.run(restorer.network_input(rgb), 0.5)
    assert out.dtype == torch.float32 if speed.precision == "fp32" else out.dtype != torch.float32
    assert logits.dtype == torch.float32  # the code-prediction head stays in float32
    result = agreement(out, logits, out_w05, idx)
    floor = min_psnr if result.index_agreement == 1.0 else min(min_psnr, FLIPPED_PSNR)
    assert result.index_agreement >= min_agreement and result.psnr_db >= floor, result


def test_auto_on_this_cpu_is_fp32_winograd_where_there_is_no_amx(synthetic_state_dict):
    restorer = Restorer(build_codeformer(synthetic_state_dict), torch.device("cpu"), Speed())
    if restore.fast_bf16(torch.device("cpu")):
        assert restorer.precision == "bf16" and restorer.channels_last
    else:
        assert restorer.precision == "fp32" and restorer.channels_last != winograd_available()
        assert isinstance(restorer.model.encoder.blocks[0], WinogradConv3x3) == winograd_available()
    assert restorer.batch_size == 1


def test_fp32_mode_is_the_network_itself(synthetic_state_dict, synthetic_model, golden):
    """fp32 is bit-faithful: the Restorer's forward is the plain network's, nothing cast or reordered."""
    rgb, _, _ = golden
    restorer = Restorer(build_codeformer(synthetic_state_dict), torch.device("cpu"), Speed(precision="fp32", channels_last=False, winograd=False))
    x = restorer.network_input(rgb)
    with torch.no_grad():
        want = synthetic_model(x, w=0.5, adain=True)
    for got, expected in zip(restorer.run(x, 0.5), want):
        assert torch.equal(got, expected)
