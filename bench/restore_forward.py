"""CodeFormer restoration speed per mode and batch size, against a per-face loop like the official script.

Everything runs in one process on the same synthetic weights (golden rule, seed 1; speed does
not depend on the weight values) and the same generated faces, so the ratios are comparable.

Baseline: the official inference_codeformer.py's loop: one face at a time, fp32, torch's default
TF32 settings, `torch.no_grad()`, its img2tensor/normalize/tensor2img conversions, and
`torch.cuda.empty_cache()` after every face (on GPUs).
Modes (`Restorer.restore`, the path the jobs take): PRECISION[+cl|+wino][+compile], e.g. fp32,
fp32+wino, bf16+cl, fp16+cl+compile: 16-bit precisions, channels_last, Winograd 3x3
convolutions (fp32 on CPUs), torch.compile.

faces/s = --faces / median time of --repeats runs over them, after a warm-up run whose time is
printed on its own (for +compile it includes the compilation). Each figure is printed with the
mode's code-index agreement and output PSNR (clamped to [-1,1]) against the official fp32 output
on the golden input (tests/data/golden/codeformer), and with the share of the device's arithmetic
ceiling it reaches (--peak-tflops, known for some GPUs).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from codeformer_core.agreement import Agreement, agreement
from codeformer_core.arch import CodeFormer
from codeformer_core.restore import PRECISIONS, Restorer, Speed, pick_device
from codeformer_core.samples import synthetic_face
from codeformer_core.weights import build_codeformer, synthetic_codeformer_state_dict

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden" / "codeformer"
# Dense tensor-core peaks (bf16/fp16) and plain fp32 peaks, TFLOP/s, from the vendors' data sheets.
KNOWN_PEAKS = {"H200": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0}, "H100": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0}}


def parse_mode(text: str, batch_size: int) -> Speed:
    precision, *flags = text.split("+")
    unknown = set(flags) - {"cl", "wino", "compile"}
    if precision not in PRECISIONS or unknown:
        raise argparse.ArgumentTypeError(f"mode {text!r}: PRECISION[+cl|+wino][+compile] with PRECISION one of {', '.join(PRECISIONS)}")
    return Speed(precision=precision, channels_last="cl" in flags, winograd="wino" in flags, compile="compile" in flags, batch_size=batch_size)


def official_loop(model: CodeFormer, device: torch.device, fidelity: float) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The official script's per-face restoration, on RGB uint8 faces."""

    def restore(faces: np.ndarray) -> list[np.ndarray]:
        out = []
        for face in faces:
            bgr = face[..., ::-1]
            img = cv2.cvtColor((bgr / 255.0).astype(np.float32), cv2.COLOR_BGR2RGB)  # basicsr img2tensor
            t = torch.from_numpy(img.transpose(2, 0, 1)).float()
            t = ((t - 0.5) / 0.5).unsqueeze(0).to(device)  # torchvision normalize
            with torch.no_grad():
                output = model(t, w=fidelity, adain=True)[0]
                img = output.squeeze(0).float().detach().cpu().clamp_(-1, 1)  # basicsr tensor2img
                img = cv2.cvtColor(((img + 1) / 2).numpy().transpose(1, 2, 0), cv2.COLOR_RGB2BGR)
                out.append((img * 255.0).round().astype(np.uint8))
            del output
            if device.type == "cuda":
                torch.cuda.empty_cache()
        return out

    return restore


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(restore: Callable[[np.ndarray], object], faces: np.ndarray, repeats: int, device: torch.device) -> tuple[float, float]:
    """(warm-up seconds, median seconds) of restoring `faces`."""
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        restore(faces)
        sync(device)
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def golden() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rgb = cv2.cvtColor(cv2.imread(str(GOLDEN / "input.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return rgb, dict(np.load(GOLDEN / "expected.npz"))


def golden_agreement(run: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]) -> Agreement:
    rgb, expected = golden()
    out, logits = run(rgb[None])
    return agreement(out, logits, torch.from_numpy(expected["out_w05"]), torch.from_numpy(expected["idx"]))


def flops_per_face(fidelity: float) -> float:
    with torch.device("meta"):
        model = CodeFormer().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, 3, 512, 512, device="meta"), w=fidelity)
    return float(counter.get_total_flops())


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated"
    return f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["fp32", "fp32+wino", "fp32+cl", "bf16+cl"], help="modes to time (default: fp32 fp32+wino fp32+cl bf16+cl)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="faces per forward pass, for every mode (default: 1)")
    parser.add_argument("--faces", type=int, default=2, help="faces restored per timed run (default: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after the warm-up (default: 2)")
    parser.add_argument("--fidelity", type=float, default=0.5, help="fidelity weight w (default: 0.5)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads (default: all)")
    parser.add_argument("--peak-tflops", type=float, nargs=3, metavar=("FP32", "BF16", "FP16"), default=None, help="the device's arithmetic peaks, for the share of the ceiling (default: known GPUs only)")
    args = parser.parse_args()
    specs = [(m, parse_mode(m, b)) for m in args.modes for b in args.batch_sizes]

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    peaks = dict(zip(PRECISIONS, args.peak_tflops)) if args.peak_tflops else next((v for k, v in KNOWN_PEAKS.items() if k in name), None)
    flops = flops_per_face(args.fidelity)
    state_dict = synthetic_codeformer_state_dict(seed=1)
    faces = np.stack([synthetic_face(i) for i in range(args.faces)])
    print(f"{name}, torch {torch.__version__}, {args.threads} CPU threads, w={args.fidelity}, {flops / 1e9:.1f} GFLOP per face")
    print(f"{args.faces} faces per run, median of {args.repeats} runs after a warm-up run")

    def report(label: str, warm: float, median: float, precision: str, agree: Agreement, base: float | None) -> float:
        rate = args.faces / median
        ceiling = f", {100 * rate * flops / (peaks[precision] * 1e12):.1f}% of the {precision} ceiling" if peaks else ""
        ratio = f", {rate / base:.2f}x baseline" if base else ""
        print(
            f"{label:<28} {rate:9.3f} faces/s{ratio}{ceiling}; warm-up {warm:.1f} s; index agreement {agree.index_agreement:.4f}, "
            f"PSNR {agree.psnr_db:.1f} dB; {peak_memory(device)}",
            flush=True,
        )
        return rate

    torch.backends.cuda.matmul.allow_tf32 = False  # torch's defaults, which the official script runs with
    torch.backends.cudnn.allow_tf32 = True
    reset_peak(device)
    model = build_codeformer(state_dict, device).eval()
    loop = official_loop(model, device, args.fidelity)
    warm, median = timed(loop, faces, args.repeats, device)

    def baseline_run(rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy((rgb[0] / 255.0).astype(np.float32)).permute(2, 0, 1)[None].to(device)
        with torch.no_grad():
            out, logits, _ = model((t - 0.5) / 0.5, w=args.fidelity, adain=True)
        return out, logits

    base = report("official-like loop, batch 1", warm, median, "fp32", golden_agreement(baseline_run), None)

    for mode, speed in specs:
        reset_peak(device)
        restorer = Restorer(build_codeformer(state_dict, device), device, speed)
        warm, median = timed(lambda f: restorer.restore(f, args.fidelity), faces, args.repeats, device)

        def mode_run(rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            out, logits, _ = restorer.run(restorer.network_input(rgb), args.fidelity)
            return out, logits

        report(f"{mode}, batch {speed.batch_size}", warm, median, restorer.precision, golden_agreement(mode_run), base)


if __name__ == "__main__":
    main()
