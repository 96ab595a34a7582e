"""Restored videos (--write-video): each video's pasted frames, in order, encoded with its audio.

A task per group of shards (jobs.per_video) streams its videos' pasted/ rows in frame order into
H.264 (codeformer_core.video.encode) with the source's first audio stream copied, then uploads
`videos/<image_id>.mp4`: a rerun overwrites it.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from codeformer_core import storage, video
from jobs import listing
from jobs.per_video import committed_files, frames_of, run_groups

FOLDER = "videos"
RECORD = "_videos.json"


@dataclass(frozen=True)
class VideoOut:
    fps: float | None  # None: the source's
    crf: int


def write_group(output: str, shards: list[int], out: VideoOut) -> dict:
    """Encode the videos of `shards`; {"videos", "frames"} written."""
    found = {"videos": 0, "frames": 0}
    rows = frames_of(committed_files(output, shards, "pasted"), ["image_id", "source_uri", "frame_index", "pasted"])
    for image_id, frames in itertools.groupby(rows, key=lambda frame: frame[0]["image_id"]):
        first = next(frames)
        pictures = (cv2.cvtColor(cv2.imdecode(np.frombuffer(f[0]["pasted"]["bytes"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                    for f in itertools.chain([first], frames))
        with tempfile.TemporaryDirectory() as scratch, video.open_video(first[0]["source_uri"]) as source:
            path = Path(scratch) / "restored.mp4"
            found["frames"] += video.encode(pictures, out.fps or video.probe(source).fps, str(path), audio_from=source, crf=out.crf)
            with open(path, "rb") as data, storage.output_stream(storage.join(output, FOLDER, f"{image_id}.mp4")) as stream:
                shutil.copyfileobj(data, stream, 8 << 20)
        found["videos"] += 1
    return found


def write_videos(output: str, inputs: listing.Listing, out: VideoOut, changed: bool, start_ray: Callable[[], None]) -> list[str]:
    """Write every video of the output (again, when the run `changed` it); summary lines."""
    record = storage.join(output, RECORD)
    if changed or storage.file_size(record) is None:
        if storage.file_size(record) is not None:
            storage.delete(record)
        storage.delete_dir(storage.join(output, FOLDER))
        print("encoding the restored videos", file=sys.stderr)
        total = {"videos": 0, "frames": 0}
        for found in run_groups(output, inputs, write_group, (out,), start_ray, "writing the restored videos"):
            total = {k: total[k] + found[k] for k in total}
        storage.write_bytes(record, json.dumps(total).encode())
    total = json.loads(storage.read_bytes(record))
    return [f"videos {total['videos']} ({total['frames']} frames): {output}/{FOLDER}/<image_id>.mp4"]
