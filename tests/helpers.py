"""What only the tests need: reading PNGs back, checking schemas, writing synthetic checkpoint files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import torch

from codeformer_core.samples import synthetic_face
from codeformer_core.weights import SYNTHETIC_MARKER, synthetic_codeformer_state_dict


def decode_png(data: bytes) -> np.ndarray:
    """PNG (or any format cv2 reads) written by `codec.encode` -> RGB uint8."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def matches(schema: pa.Schema, expected: pa.Schema) -> bool:
    """Same fields (names, types, nullability) and the same table name and version."""
    return schema.remove_metadata().equals(expected.remove_metadata()) and all(
        (schema.metadata or {}).get(k) == v for k, v in expected.metadata.items()
    )


def save_synthetic_codeformer(path: Path, seed: int = 1) -> Path:
    """Write synthetic weights as `{'params_ema': ..., 'synthetic': ...}`; loaders report them as synthetic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    torch.save({"params_ema": synthetic_codeformer_state_dict(seed), SYNTHETIC_MARKER: f"random weights, seed {seed}"}, partial)
    os.replace(partial, path)
    return path


def varied_face(seed: int) -> np.ndarray:
    """A synthetic aligned face whose hair, background and lighting differ from those of other seeds
    at the scale a perceptual hash sees (an 8x8 random field), as two real people's photos do; the
    plain synthetic faces share one drawing and hash alike."""
    rng = np.random.default_rng(seed)
    field = cv2.resize(rng.uniform(-60, 60, (8, 8)), (512, 512), interpolation=cv2.INTER_CUBIC)
    return np.clip(synthetic_face(seed, degrade=False) + field[..., None], 0, 255).astype(np.uint8)


def clip_face_corners(i: int, frames: int) -> list[tuple[int, int]]:
    """The top-left corners of the two 96-pixel faces in frame `i` of two_face_clip."""
    return [(10 + k * 150 + int(40 * i / frames), 60 + int(20 * np.sin(i / 10 + k))) for k in range(2)]


def two_face_clip(path: Path, seconds: float = 3.0, fps: int = 25, size: tuple[int, int] = (320, 240), audio: bool = True) -> Path:
    """A clip of two synthetic faces moving across a grey background, written with OpenCV's mp4v
    encoder; with `audio`, PyAV muxes a 440 Hz AAC track beside it (OpenCV writes no audio)."""
    import av

    w, h = size
    faces = [cv2.resize(synthetic_face(seed, degrade=False), (96, 96), interpolation=cv2.INTER_AREA) for seed in (3, 8)]
    frames = round(seconds * fps)
    silent = path.with_name(f".{path.stem}.silent.mp4") if audio else path
    writer = cv2.VideoWriter(str(silent), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(frames):
        frame = np.full((h, w, 3), 96, np.uint8)
        for face, (x, y) in zip(faces, clip_face_corners(i, frames)):
            frame[y : y + 96, x : x + 96] = face
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    if not audio:
        return path
    with av.open(str(silent)) as source, av.open(str(path), mode="w") as out:
        video_in = source.streams.video[0]
        video_out = out.add_stream_from_template(video_in)
        sound = out.add_stream("aac", rate=16000)
        for packet in source.demux(video_in):
            if packet.dts is not None:
                packet.stream = video_out
                out.mux(packet)
        t = np.arange(int(seconds * 16000)) / 16000
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="fltp", layout="mono")
            chunk.sample_rate = 16000
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
    silent.unlink()
    return path


def encoded(seed: int, ext: str = ".png", size: int = 512) -> bytes:
    """A synthetic aligned face (varied_face), `size` pixels square, encoded as `ext`."""
    face = cv2.resize(varied_face(seed), (size, size), interpolation=cv2.INTER_AREA) if size != 512 else varied_face(seed)
    return cv2.imencode(ext, cv2.cvtColor(face, cv2.COLOR_RGB2BGR))[1].tobytes()


def webdataset_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A tar of WebDataset samples: (key, {extension: bytes}) each, members in that order."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


class ImageServer:
    """An HTTP server on 127.0.0.1 in a thread, serving `png` under these paths: /ok.png (200),
    /gone.png (404), /busy.png (429 with Retry-After: 1 on every other request, else 200),
    /slow.png (answers after `slow` seconds), /noai.png (200 with X-Robots-Tag: noai), /moved.png
    (301 to /ok.png).
    Each handler does one bounded thing; `requests` counts the requests of each path."""

    def __init__(self, png: bytes, slow: float = 3.0) -> None:
        import threading
        from collections import Counter
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: Counter = Counter()
        self.agents: set = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests[self.path] += 1
                server.agents.add(self.headers.get("User-Agent"))
                headers: dict = {}
                code = 200
                if self.path == "/gone.png":
                    code = 404
                elif self.path == "/busy.png" and server.requests[self.path] % 2 == 1:
                    code, headers = 429, {"Retry-After": "1"}
                elif self.path == "/slow.png":
                    time.sleep(slow)
                elif self.path == "/noai.png":
                    headers = {"X-Robots-Tag": "noai"}
                elif self.path == "/moved.png":
                    code, headers = 301, {"Location": "/ok.png"}
                body = png if code == 200 else b"no"
                try:
                    self.send_response(code)
                    for k, v in {**headers, "Content-Length": str(len(body)), "Content-Type": "image/png"}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (a timeout): nothing to answer
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
