"""Host work per face of the restore and audit jobs, stage by stage, in core-milliseconds.

What a GPU node's CPUs must do around the networks: each job's own stages (jobs/*.py `stages`),
built as the job builds them and run one after the other in this one process, with one thread
(torch and OpenCV), on generated 512x512 aligned faces stored as JPEG q95 files. Each stage's
figure is its process CPU time per face, including the conversion of the columns it reads into
numpy (as Ray Data hands them on) and of its output into Arrow. The shard's commit (its staged
pieces merged into its files) is the last stage; the total is their sum.

The process runs with the environment the jobs give Ray's workers (jobs/resources.py WORKER_ENV).
Device work is replaced by zero-cost stand-ins, used only here: CodeFormer hands its input back,
and the measures (no-reference metrics, ArcFace) only stack the faces into the buffer a GPU
node copies to its device and give zeros; the detector's network runs once per input shape. On a
GPU node the arithmetic they skip is the GPU's; on a CPU-only node it is host work, and the
metrics' share of it is measured on its own below. Ray's scheduling is not in these figures:
bench/pipeline.py measures the whole job through Ray, and the model stage's busy fraction.

    python bench/host.py [--faces 256] [--batch-size 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import torch

from codeformer_core import align, codec, metrics, paste, video
from codeformer_core.restore import MAX_AUTO_BATCH
from codeformer_core.samples import synthetic_face
from jobs import audit, driver, ledger, resources, restore, runner
from jobs.lock import OutputLock
from jobs.pipeline import Context
from jobs.resources import Placement
from jobs.stages import front, models
from jobs.stages.batches import Block

FACES_AT = 500  # faces per second of one GPU: the target the cores are counted for


class StandInRestorer:
    def restore(self, faces, fidelity: float = 0.5) -> np.ndarray:
        return np.stack(list(faces))


class CachedNet(torch.nn.Module):
    """A detector network that runs once per input shape and then hands back that output: the
    detector's pre- and post-processing are measured on real candidates, its network costs nothing."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.cfg, self.outputs = net, net.cfg, {}

    def forward(self, x: torch.Tensor):
        if x.shape not in self.outputs:
            self.outputs[x.shape] = self.net(x)
        return self.outputs[x.shape]


def measured_on_device(faces, restored, arcface, device, batch_size, names=metrics.NO_REFERENCE, embeddings=False) -> list[dict]:
    """measure_faces' host share on a GPU node: the faces stacked into the buffers copied to the
    device, and a value of every measure for each face (zeros); the arithmetic is the device's."""
    np.stack(faces)
    keys = list(names)
    if restored is not None:
        np.stack(restored)
        keys += [f"restored_{n}" for n in names] + (["ids_cosine", "ids_degrees"] if arcface is not None else [])
    return [dict.fromkeys(keys, 0.0) for _ in faces]


def device_work_replaced() -> None:
    models.measure_faces = measured_on_device


def stand_ins(call: Callable) -> Callable:
    if isinstance(call, models.RestoreFaces):
        call.restorer = StandInRestorer()
    if isinstance(call, front.DetectFaces):
        call.detector.net = CachedNet(call.detector.net)
    return call


def write_inputs(folder: Path, faces: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(faces):
        rgb = synthetic_face(seed % 16)
        (folder / f"face_{seed:05d}.jpg").write_bytes(cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())


def next_batch(out: object) -> Mapping:
    """A stage's output as the next stage gets it: a Block of a table or of the tables a generator
    yields (decode_inputs), or a writer's batch of counts as it is."""
    if isinstance(out, dict):
        return out
    return Block(out if isinstance(out, pa.Table) else pa.concat_tables(list(out)))


def stage_costs(job, argv: list[str], faces: int, batch_size: int, repeats: int) -> dict[str, float]:
    """Core-ms per face of each of `job`'s stages run with `argv` over one shard of `faces` inputs:
    the median of `repeats` passes over the shard."""
    args = driver.build_parser(job).parse_args([*argv, "--synthetic-weights", "--batch-size", str(batch_size), "--shard-size", str(faces)])
    common = driver.Common.from_args(args)
    cfg = job.configure(args, common)
    lock = OutputLock(common.output)
    lock.acquire()
    try:
        inputs, run, _ = driver.prepare(job, common, cfg, lock)
        ctx = Context(Placement("cpu", 0, 1, 1, 1.0, None, 1), batch_size, inputs.needs_detector(common.aligned), True, run)
        parts = [(fn, a) for s in job.stages(common, cfg, ctx) for fn, a in s.parts]
        calls = [stand_ins(fn(**a)) if isinstance(fn, type) else functools.partial(fn, **a) for fn, a in parts]
        names = [fn.__name__ for fn, _ in parts]
        (table,) = runner.read_shard(common.output, 0, False)
        passes = []
        for attempt in range(repeats):
            spent, written = dict.fromkeys([*names, "commit"], 0.0), []
            for start in range(0, table.num_rows, batch_size):
                batch = Block(table.slice(start, batch_size))
                for name, call in zip(names, calls):
                    t = time.process_time()
                    batch = next_batch(call(batch))
                    spent[name] += time.process_time() - t
                written.append(batch)
            t = time.process_time()
            commit_staged(common.output, written, f"pass {attempt}")
            spent["commit"] = time.process_time() - t
            passes.append(spent)
    finally:
        lock.release()
    return {name: 1000 * statistics.median(p[name] for p in passes) / faces for name in passes[0]}


def commit_staged(output: str, written: list[Mapping], digest: str) -> None:
    """The shard's commit, as the runner starts it from the writer's counts: its staged pieces into
    its files. Each pass commits under a digest of its own, so that its commit is done again."""
    shard = runner.OpenShard()
    for batch in written:
        for first, *piece in zip(batch["first"], *(batch[k] for k in runner.PIECE)):
            shard.add(tuple(json.loads(first)), *piece)
    ledger.commit_shard(output, 0, digest, *shard.commit_args())


def per_call_ms(fn: Callable[[], object], repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return 1000 * statistics.median(times)


def single_steps() -> dict[str, float]:
    """Core-ms of the steps the stand-ins replace and of the image codecs, one face (or frame) each."""
    face = synthetic_face(3)
    x = torch.from_numpy(np.stack([face] * 8)).permute(0, 3, 1, 2).float().div(255)
    found: dict[str, float] = {}
    for name in metrics.NO_REFERENCE:
        found[f"metric {name} (device work on a GPU node)"] = per_call_ms(lambda: metrics.no_reference(x, (name,)), 2) / 8
    bgr = cv2.cvtColor(face, cv2.COLOR_RGB2BGR)
    level3 = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])[1]
    found[f"encode png level 3, the earlier default ({len(level3) // 1024} KiB)"] = per_call_ms(lambda: cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3]))
    for encoding in (codec.PNG, codec.Encoding("jpeg", 95), codec.Encoding("webp", 95)):
        label = f"png level {codec.PNG_COMPRESSION}" if encoding.format == "png" else f"{encoding.format} q{encoding.quality}"
        data = codec.encode(face, encoding)
        found[f"encode {label} ({len(data) // 1024} KiB)"] = per_call_ms(lambda: codec.encode(face, encoding))
    jpeg, png = codec.encode(face, codec.Encoding("jpeg", 95)), codec.encode(face)
    found["decode jpeg q95"] = per_call_ms(lambda: codec.decode_image(jpeg))
    found["decode png"] = per_call_ms(lambda: codec.decode_image(png))
    frame = cv2.resize(synthetic_face(5, degrade=False), (1280, 720))
    affine = align.estimate_affine(align.FFHQ_TEMPLATE_512 * 0.5 + [400, 100])
    found["align: warp a face out of a 1280x720 frame"] = per_call_ms(lambda: align.warp_face(frame, affine))
    found["paste one face into a 1280x720 frame"] = per_call_ms(lambda: paste.paste_faces(frame, [face], [affine]))
    with tempfile.TemporaryDirectory() as tmp:
        frames = [frame] * 25
        out = str(Path(tmp) / "out.mp4")
        found["video encode a 1280x720 frame (H.264 CRF 18)"] = per_call_ms(lambda: video.encode(frames, 25, out), 1) / len(frames)
    return found


RUNS = {
    "restore, default flags (PNG)": (restore.JOB, ["--aligned"]),
    "restore --image-format jpeg": (restore.JOB, ["--aligned", "--image-format", "jpeg"]),
    "restore --image-format jpeg --no-input-crop": (restore.JOB, ["--aligned", "--image-format", "jpeg", "--no-input-crop"]),
    "audit, seven metrics": (audit.JOB, ["--aligned"]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=int, default=256, help="faces per job run (default 256)")
    p.add_argument(
        "--batch-size", type=int, default=MAX_AUTO_BATCH["cuda"],
        help=f"rows per batch, as --batch-size (default {MAX_AUTO_BATCH['cuda']}, the jobs' batch on a GPU node)",
    )
    p.add_argument("--repeats", type=int, default=5, help="passes over the faces; each stage's figure is their median (default 5)")
    args = p.parse_args()
    if any(os.environ.get(k) != v for k, v in resources.WORKER_ENV.items()):  # malloc reads it at start: run again with it
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **resources.WORKER_ENV})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    os.environ.setdefault("RAY_ADDRESS", "")
    steps = single_steps()
    device_work_replaced()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        write_inputs(folder, args.faces)
        runs = {label: stage_costs(job, [*argv, "--input", str(folder), "--output", str(Path(tmp) / f"out{i}")], args.faces, args.batch_size, args.repeats)
                for i, (label, (job, argv)) in enumerate(RUNS.items())}
    print(f"{args.faces} aligned 512x512 faces (JPEG q95 inputs), batches of {args.batch_size}, median of {args.repeats} passes, one core; torch {torch.__version__}, OpenCV {cv2.__version__}")
    for label, costs in runs.items():
        total = sum(costs.values())
        print(f"\n{label}: {total:.1f} core-ms per face, {total * FACES_AT / 1000:.1f} cores for {FACES_AT} faces/s")
        print("| stage | core-ms per face |\n|---|---|")
        for name, ms in costs.items():
            print(f"| {name} | {ms:.2f} |")
    print("\n| single step | core-ms |\n|---|---|")
    for name, ms in steps.items():
        print(f"| {name} | {ms:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
