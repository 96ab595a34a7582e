"""Video files through PyAV, whose wheels ship FFmpeg: what a file holds, its frames sampled and
cut into segments, and frames encoded back into a video with the source's audio.

Frames are numbered by presentation time at the stream's average rate (exact for constant frame
rates), so a segment `[start, stop)` decoded after a seek has the same numbers as a pass from the
start. On S3 the file is read through pyarrow's random-access file: FFmpeg seeks with ranged
reads instead of a download of the whole object.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from fractions import Fraction

import av
import numpy as np

from codeformer_core import storage
from codeformer_core.statuses import DECODE_ERROR, READ_ERROR, UNAVAILABLE

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
VIDEO_CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float  # average frame rate
    frames: int  # the container's count, else duration x fps
    duration: float  # seconds
    codec: str
    audio_codec: str | None  # of the first audio stream; None without one


@dataclass(frozen=True)
class Sampling:
    """Which frames are kept: every `every_n`th, or `fps` per second (the first frame of each
    1/fps interval), from frame 0. Decided by frame number alone, so segments agree."""

    every_n: int = 1
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.every_n < 1 or (self.fps is not None and self.fps <= 0):
            raise ValueError(f"every_n must be at least 1 and fps positive, got {self.every_n} and {self.fps}")

    def keeps(self, index: int, source_fps: float) -> bool:
        if self.fps is None or self.fps >= source_fps:
            return index % self.every_n == 0
        step = source_fps / self.fps
        return index == 0 or math.floor(index / step) != math.floor((index - 1) / step)


@dataclass(frozen=True)
class Frame:
    index: int
    timestamp: float  # seconds from the stream's start
    rgb: np.ndarray  # (H, W, 3) uint8


def segments(frames: int, size: int) -> list[tuple[int, int | None]]:
    """Frame ranges [start, stop) of `size` frames covering a video of about `frames` frames; the
    last runs to the end (stop None), so that a count that is short of the truth loses nothing."""
    count = max(1, -(-frames // size))
    return [(k * size, (k + 1) * size if k + 1 < count else None) for k in range(count)]


def is_video(uri: str) -> bool:
    return uri.lower().endswith(VIDEO_SUFFIXES)


@contextmanager
def open_video(uri: str) -> Iterator[av.container.InputContainer]:
    """The container of a local path, an s3:// or gs:// URI (read through pyarrow), or an http(s) URL (by FFmpeg), open for reading."""
    if storage.is_remote(uri):
        filesystem, path = storage.filesystem_and_path(uri)
        with filesystem.open_input_file(path) as f, av.open(f, mode="r") as container:
            yield _threaded(container)
    else:
        with av.open(uri, mode="r") as container:
            yield _threaded(container)


def _threaded(container: av.container.InputContainer) -> av.container.InputContainer:
    for stream in container.streams.video:
        stream.thread_type = "AUTO"  # frame and slice threads, as many as FFmpeg picks
    return container


def probe(container: av.container.InputContainer) -> VideoInfo:
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    if stream.duration is not None:
        duration = float(stream.duration * stream.time_base)
    else:
        duration = (container.duration or 0) / av.time_base
    audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
    frames = stream.frames or round(duration * fps)
    return VideoInfo(stream.codec_context.width, stream.codec_context.height, fps, frames, duration, stream.codec_context.name, audio)


def probe_uri(uri: str) -> dict:
    """`probe` of the video at `uri` as a dict, or failure's {"status", "error"}."""
    try:
        with open_video(uri) as container:
            return asdict(probe(container))
    except Exception as exc:  # whatever a file or its storage does is this video's status
        return failure(uri, exc)


def failure(uri: str, exc: Exception) -> dict:
    """{"status", "error"} of a video that could not be opened or read: read_error for a missing or
    unreadable local file, unavailable for another failure of S3 (a rerun tries again),
    decode_error for what FFmpeg cannot read."""
    text = f"{type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, FileNotFoundError):
        return {"status": READ_ERROR, "error": text}
    if isinstance(exc, av.error.FFmpegError):
        return {"status": DECODE_ERROR, "error": f"not a readable video: {text}"}
    if isinstance(exc, IndexError):
        return {"status": DECODE_ERROR, "error": "the file holds no video stream"}
    if isinstance(exc, OSError):
        return {"status": UNAVAILABLE if storage.is_remote(uri) or uri.startswith(("http://", "https://")) else READ_ERROR, "error": text}
    return {"status": DECODE_ERROR, "error": text}


def decode(container: av.container.InputContainer, sampling: Sampling, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
    """The kept frames numbered `start` to `stop` (exclusive; None: to the end), in order."""
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate)
    origin = stream.start_time or 0
    container.seek(origin + int(start / fps / stream.time_base), stream=stream, backward=True)  # the keyframe at or before
    for frame in container.decode(stream):
        pts = frame.pts if frame.pts is not None else frame.dts
        seconds = float((pts - origin) * stream.time_base)
        index = round(seconds * fps)
        if index < start:
            continue
        if stop is not None and index >= stop:
            break
        if sampling.keeps(index, fps):
            yield Frame(index, seconds, frame.to_ndarray(format="rgb24"))


def encode(frames: Iterable[np.ndarray], fps: float, path: str, audio_from: av.container.InputContainer | None = None, crf: int = 18) -> int:
    """Write RGB frames as H.264 (`crf`, yuv420p, so odd sizes get their last row or column
    repeated) at `fps` to the local `path`, with the first audio stream of `audio_from` copied as
    it is when there is one. Returns the frames written."""
    written = 0
    with av.open(path, mode="w") as out:
        video = out.add_stream(VIDEO_CODEC, rate=Fraction(fps).limit_denominator(1001000), options={"crf": str(crf)})
        video.pix_fmt = PIXEL_FORMAT
        audio_in = audio_from.streams.audio[0] if audio_from is not None and audio_from.streams.audio else None
        audio_out = out.add_stream_from_template(audio_in) if audio_in is not None else None
        for rgb in frames:
            rgb = np.pad(rgb, ((0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0)), mode="edge")
            if not written:
                video.height, video.width = rgb.shape[:2]
            out.mux(video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            written += 1
        out.mux(video.encode(None))
        if audio_in is not None:
            audio_from.seek(0)
            for packet in audio_from.demux(audio_in):
                if packet.dts is not None:
                    packet.stream = audio_out
                    out.mux(packet)
    return written
