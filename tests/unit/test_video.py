"""Video through PyAV: probing, frame numbers after a seek, sampling, and encoding with audio."""

import math
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from codeformer_core.video import Sampling, decode, encode, is_video, open_video, probe

FPS, FRAMES, W, H = 25, 40, 96, 64


def frame_of(i: int) -> np.ndarray:
    """A frame that says its own number: its grey level, and a bar at a place that moves."""
    rgb = np.full((H, W, 3), 5 * i, np.uint8)
    rgb[:, (2 * i) % W : (2 * i) % W + 4] = 255
    return rgb


def number_of(rgb: np.ndarray) -> int:
    return round(float(np.median(rgb[:, :, 1])) / 5)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """An OpenCV-written MPEG-4 clip with a keyframe every 12 frames (OpenCV's default GOP)."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    for i in range(FRAMES):
        writer.write(cv2.cvtColor(frame_of(i), cv2.COLOR_RGB2BGR))
    writer.release()
    return str(path)


@pytest.fixture(scope="module")
def clip_with_audio(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("video") / "talk.mkv")
    with av.open(path, mode="w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for i in range(FRAMES):
            out.mux(video.encode(av.VideoFrame.from_ndarray(frame_of(i), format="rgb24")))
        out.mux(video.encode(None))
        t = np.arange(int(16000 * FRAMES / FPS)) / 16000
        samples = (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, 0, Fraction(1, 16000)
        out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return path


def test_probe_reads_the_container(clip, clip_with_audio):
    assert is_video(clip) and is_video("s3://b/x.WEBM") and not is_video("a.png")
    with open_video(clip) as container:
        info = probe(container)
    assert (info.width, info.height, info.frames, info.codec, info.audio_codec) == (W, H, FRAMES, "mpeg4", None)
    assert info.fps == FPS and info.duration == pytest.approx(FRAMES / FPS, abs=0.05)
    with open_video(clip_with_audio) as container:
        assert probe(container).audio_codec == "aac"


def test_every_frame_in_order_with_its_number_and_time(clip):
    with open_video(clip) as container:
        frames = list(decode(container, Sampling()))
    assert [f.index for f in frames] == list(range(FRAMES))
    assert [number_of(f.rgb) for f in frames] == list(range(FRAMES))
    assert [f.timestamp for f in frames] == pytest.approx([i / FPS for i in range(FRAMES)])


@pytest.mark.parametrize("start, stop", [(0, 7), (13, 29), (30, None), (12, 13)])
def test_a_segment_after_a_seek_has_the_numbers_of_a_whole_pass(clip, start, stop):
    with open_video(clip) as container:
        frames = list(decode(container, Sampling(), start, stop))
    expected = list(range(start, FRAMES if stop is None else stop))
    assert [f.index for f in frames] == expected and [number_of(f.rgb) for f in frames] == expected


@pytest.mark.parametrize(
    "sampling, expected",
    [(Sampling(every_n=5), [0, 5, 10, 15, 20, 25, 30, 35]), (Sampling(fps=2), [0, 13, 25, 38]), (Sampling(fps=30), list(range(FRAMES)))],
)
def test_sampling_is_decided_by_frame_number(clip, sampling, expected):
    with open_video(clip) as container:
        whole = [f.index for f in decode(container, sampling)]
    with open_video(clip) as container:
        parts = [f.index for f in decode(container, sampling, 0, 17)] + [f.index for f in decode(container, sampling, 17)]
    assert whole == parts == expected


def test_encoded_video_keeps_size_rate_count_and_audio(clip_with_audio, tmp_path):
    out = str(tmp_path / "restored.mp4")
    with open_video(clip_with_audio) as source:
        frames = [255 - f.rgb for f in decode(source, Sampling())]
        written = encode(frames, FPS, out, audio_from=source)
    assert written == FRAMES
    with open_video(out) as container:
        info = probe(container)
        again = list(decode(container, Sampling()))
    assert (info.width, info.height, info.fps, info.codec, info.audio_codec) == (W, H, FPS, "h264", "aac")
    assert len(again) == FRAMES and np.abs(again[7].rgb.astype(int) - frames[7].astype(int)).mean() < 3


def test_odd_sizes_are_padded_to_even(tmp_path):
    out = str(tmp_path / "odd.mp4")
    encode([np.zeros((33, 51, 3), np.uint8)] * 3, 10, out)
    with open_video(out) as container:
        info = probe(container)
    assert (info.width, info.height, info.frames) == (52, 34, 3)
