"""Frames per second of the video restore path, step by step, in one process on this machine.

A clip of one moving face (--size, --frames at 25 fps, H.264) is written once; then each frame
goes through what the restore job does to it with --write-video: decode (PyAV), detect
(RetinaFace ResNet-50, synthetic weights: its cost does not depend on the weight values), align
(the face's known landmarks, since synthetic detections are arbitrary), restore (CodeFormer,
synthetic weights, the job's default speed settings for this device), paste back, and encode
(H.264 CRF 18). Each step's median milliseconds per frame over the frames, and frames per
second of the whole path. Ray's own overhead is not in it; bench/pipeline.py measures that.
Decode throughput alone, at larger sizes, is bench/video.py.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from codeformer_core import align, paste, video
from codeformer_core.detect import DetectConfig, Detector
from codeformer_core.restore import Restorer, Speed, pick_device
from codeformer_core.samples import synthetic_face

FACE = 160  # pixels of the face's side in the frame


def frames_with_a_face(count: int, width: int, height: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames of one face moving across a grey background, and its 5 landmarks in each."""
    face = cv2.resize(synthetic_face(4, degrade=False), (FACE, FACE), interpolation=cv2.INTER_AREA)
    frames, landmarks = [], []
    for i in range(count):
        x, y = 20 + (width - FACE - 40) * i // max(count - 1, 1), (height - FACE) // 2
        frame = np.full((height, width, 3), 90, np.uint8)
        frame[y : y + FACE, x : x + FACE] = face
        frames.append(frame)
        landmarks.append(align.FFHQ_TEMPLATE_512 * (FACE / 512) + [x, y])
    return frames, landmarks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--size", default="640x360")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    width, height = map(int, args.size.split("x"))
    device = pick_device(args.device)
    frames, landmarks = frames_with_a_face(args.frames, width, height)
    detector = Detector.from_weights(DetectConfig(), device, synthetic_seed=1)
    restorer, _ = Restorer.from_checkpoint("synthetic:1", str(device), Speed(batch_size=1))
    steps: dict[str, list[float]] = {name: [] for name in ("decode", "detect", "align", "restore", "paste", "encode")}

    def timed(name: str, fn):
        start = time.perf_counter()
        out = fn()
        steps[name].append(time.perf_counter() - start)
        return out

    with tempfile.TemporaryDirectory() as tmp:
        clip, out = str(Path(tmp) / "clip.mp4"), str(Path(tmp) / "out.mp4")
        video.encode(frames, 25, clip)
        restorer.restore(np.stack([align.warp_face(frames[0], align.estimate_affine(landmarks[0]))]))  # warm-up
        pasted = []
        with video.open_video(clip) as container:
            decoded = video.decode(container, video.Sampling())
            for points in landmarks:
                frame = timed("decode", lambda: next(decoded)).rgb
                timed("detect", lambda: detector.detect([frame]))
                affine = align.estimate_affine(points)
                crop = timed("align", lambda: align.warp_face(frame, affine))
                restored = timed("restore", lambda: restorer.restore(crop[None])[0])
                pasted.append(timed("paste", lambda: paste.paste_faces(frame, [restored], [affine])))
        timed("encode", lambda: video.encode(pasted, 25, out))
        steps["encode"] = [steps["encode"][0] / len(pasted)]
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.frames} frames of {width}x{height}, one face each")
    print("| step | median ms/frame |")
    print("|---|---|")
    total = 0.0
    for name, times in steps.items():
        ms = statistics.median(times) * 1000
        total += ms
        print(f"| {name} | {ms:.1f} |")
    print(f"| whole path | {total:.1f} ({1000 / total:.3f} frames/s) |")


if __name__ == "__main__":
    main()
