"""The stages every job starts with: read bytes, decode, detect faces, align them to 512x512."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import torch

from codeformer_core import align, codec, gray, inputs, storage, video
from codeformer_core.http import HttpConfig, fetch_all
from codeformer_core.detect import DetectConfig, Detector
from codeformer_core.statuses import BAD_LANDMARKS, DECODE_ERROR, DETECT_ERROR, NO_FACE, OK, READ_ERROR, SEGMENT_DONE, TOO_LARGE, UNAVAILABLE
from jobs.stages.batches import Batch, clean, image_of, rows_of, short_error, statuses, table


READ_THREADS = 16  # reads of one batch in flight at once: object stores answer each in tens of ms or more
_READERS = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="read")  # one per worker process: its threads serve every batch


def read_images(batch: Batch, attempts: int, http: HttpConfig) -> pa.Table:
    """Each input's bytes: a file or object, a tar member by its range, an http(s) URL; a failure
    that may pass is tried `attempts` times before it is `unavailable`. Rows read already (images
    inside Parquet files, read with their shard) keep what they have; a video segment's row is left
    to decode_inputs, which streams the file."""
    # the columns the reading threads use, made numpy here once rather than by each thread
    uris, containers, members, sizes = (batch[k] for k in ("source_uri", "container", "member", "member_size"))

    def read(i: int) -> tuple[bytes, str, str | None]:
        uri, container = str(uris[i]), clean(containers[i])
        try:
            if container is not None:
                return inputs.read_member(container, int(members[i]), int(sizes[i]), attempts), OK, None
            return storage.read_bytes(uri, attempts), OK, None
        except storage.ReadError as exc:
            return b"", UNAVAILABLE if exc.transient else READ_ERROR, str(exc)
        except Exception as exc:  # anything else a client may raise is this input's row, not the job's end
            return b"", READ_ERROR, short_error(exc)

    n = len(batch["source_uri"])
    given = [clean(s) for s in batch["status"]]
    data = [b"" if v is None else v for v in (clean(d) for d in batch["data"])]
    status = [s if s is not None else OK for s in given]
    error = [clean(e) for e in batch["error"]]
    segments = [clean(v) for v in batch["video"]] if "video" in batch else [None] * n
    todo = [i for i in range(n) if given[i] is None and segments[i] is None]
    web = [i for i in todo if inputs.is_http(str(batch["source_uri"][i]))]
    files = [i for i in todo if not inputs.is_http(str(batch["source_uri"][i]))]
    for i, (d, st, err) in zip(files, _READERS.map(read, files)):
        data[i], status[i], error[i] = d, st, err
    for i, got in zip(web, fetch_all([str(batch["source_uri"][i]) for i in web], http)):
        data[i], status[i], error[i] = got.data, got.status, got.error
    return table(batch, drop=LOCATION, data=data, status=status, error=error)


LOCATION = ("container", "member", "member_size", "member_column")  # where a row's bytes are: not needed once read


def decode_images(batch: Batch, max_pixels: int, aligned: bool, gray_test: bool = False) -> pa.Table:
    """Whole images keep their pixels; with `aligned`, each image is one face crop already. With
    `gray_test`, `is_gray` says which images are grey (their restored faces are made grey)."""
    status, error, width, height, columns = [], [], [], [], []
    for data, st, err in zip(batch["data"], batch["status"], batch["error"]):
        w = h = rgb = None
        if st == OK:
            decoded = codec.decode_image(data, max_pixels)
            st, err, w, h, rgb = decoded.status, decoded.error, decoded.width, decoded.height, decoded.rgb
        status.append(st)
        error.append(clean(err))
        width.append(w)
        height.append(h)
        columns.append(pixel_columns(rgb, aligned, gray_test))
    return table(batch, drop=("data",), status=status, error=error, width=width, height=height, **transposed(columns))


def pixel_columns(rgb: np.ndarray | None, aligned: bool, gray_test: bool) -> dict:
    """A decoded image's (or frame's) pixel columns: the whole image, or with `aligned` its one face."""
    h, w = (None, None) if rgb is None else rgb.shape[:2]
    if aligned:
        columns = {"pixels": None, "crops": [] if rgb is None else align.as_aligned_face(rgb)[None],
                   "affine": [] if rgb is None else [align.resize_affine(w, h).reshape(-1).tolist()]}
    else:
        columns = {"pixels": None if rgb is None else rgb.tobytes()}
    return columns | ({"is_gray": None if rgb is None else gray.is_gray(rgb)} if gray_test else {})


def transposed(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


def decode_inputs(batch: Batch, max_pixels: int, aligned: bool, sampling: video.Sampling, frames_per_batch: int, gray_test: bool = False) -> Iterator[pa.Table]:
    """decode_images for the images; each video segment's kept frames as rows of their own (with
    `frame_index` and `timestamp`), `frames_per_batch` at a time, so that a segment is never whole in memory,
    then the segment's closing row (`segment_rows`: how many rows the segment gave, this one included)."""
    cells = [clean(c) for c in batch["video"]]
    images = [i for i, c in enumerate(cells) if c is None]
    if images:
        decoded = decode_images(batch if len(images) == len(cells) else rows_of(batch, images), max_pixels, aligned, gray_test)
        yield decoded.append_column("frame_index", pa.nulls(decoded.num_rows, pa.int64())).append_column(
            "timestamp", pa.nulls(decoded.num_rows, pa.float64())).append_column("segment_rows", pa.nulls(decoded.num_rows, pa.int64()))
    for i, cell in enumerate(cells):
        if cell is not None:
            row = {k: None if k == "manifest_landmarks" else v[i] for k, v in batch.items()}
            yield from segment_frames(row, json.loads(cell), max_pixels, aligned, sampling, frames_per_batch, gray_test)


def segment_frames(row: dict, cell: dict, max_pixels: int, aligned: bool, sampling: video.Sampling, rows: int, gray_test: bool) -> Iterator[pa.Table]:
    """The rows of one segment (decode_inputs). Only a segment that gave no frame can end
    `unavailable`: a rerun makes all its rows again, and rows already written are never made twice."""
    width, height = cell.get("width"), cell.get("height")
    status, error, made, pending = SEGMENT_DONE, None, 0, []

    def frame_rows(chunk: list[dict]) -> pa.Table:
        return table({k: [v] * len(chunk) for k, v in row.items()}, drop=("data",), **transposed(chunk))

    try:
        with video.open_video(str(row["source_uri"])) as container:
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > max_pixels:
                raise OverflowError(f"{width}x{height} = {width * height} pixels a frame exceeds the limit of {max_pixels}")
            for frame in video.decode(container, sampling, cell["start"], cell["stop"]):
                pending.append({"status": OK, "error": None, "width": width, "height": height, **pixel_columns(frame.rgb, aligned, gray_test),
                                "frame_index": frame.index, "timestamp": frame.timestamp, "segment_rows": None})
                if len(pending) == rows:
                    made += rows
                    yield frame_rows(pending)
                    pending = []
    except OverflowError as exc:
        status, error = TOO_LARGE, str(exc)
    except Exception as exc:  # any failure of this file is its rows' status, not the job's end
        described = video.failure(str(row["source_uri"]), exc)
        status, error = (described["status"] if not made and not pending else DECODE_ERROR), described["error"]
    closing = {"status": status, "error": error, "width": width, "height": height, **pixel_columns(None, aligned, gray_test),
               "frame_index": None, "timestamp": None, "segment_rows": made + len(pending) + 1}
    yield frame_rows([*pending, closing])


class DetectFaces:
    """RetinaFace loaded once; finds faces in every readable image that has no manifest landmarks."""

    def __init__(self, config: DetectConfig, weights: str | None, weights_dir: str | None, synthetic: bool, device: str) -> None:
        self.detector = Detector.from_weights(config, torch.device(device), weights, weights_dir, 1 if synthetic else None)

    def __call__(self, batch: Batch) -> pa.Table:
        n = len(batch["status"])
        given = batch.get("manifest_landmarks")
        todo = [i for i in range(n) if batch["status"][i] == OK and (given is None or given[i] is None)]
        landmarks: list = [clean(given[i]) if given is not None and given[i] is not None else [] for i in range(n)]
        bbox: list = [[] for _ in range(n)]
        score: list = [[] for _ in range(n)]
        status, error = statuses(batch)
        if todo:
            images = [image_of(batch["pixels"][i], batch["width"][i], batch["height"][i]) for i in todo]
            try:
                found = self.detector.detect(images)
            except Exception as exc:  # e.g. out of memory: these rows fail, the job goes on
                found = [[] for _ in todo]
                for i in todo:
                    status[i], error[i] = DETECT_ERROR, short_error(exc)
            for i, faces in zip(todo, found):
                landmarks[i] = [f.landmarks.reshape(-1).tolist() for f in faces]
                bbox[i] = [f.box.tolist() for f in faces]
                score[i] = [f.score for f in faces]
        return table(batch, status=status, error=error, landmarks=landmarks, bbox=bbox, det_score=score)


def align_faces(batch: Batch) -> pa.Table:
    """Crop every face to 512x512; an image with unusable landmarks, or none, gets its own status."""
    status, error = statuses(batch)
    crops, affines = [], []
    # Without a detector stage (every input has manifest landmarks) the manifest's are the landmarks.
    given = batch["landmarks"] if "landmarks" in batch else batch["manifest_landmarks"]
    for i, st in enumerate(status):
        faces, mats = [], []
        points = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in clean(given[i]) or []]
        if st == OK and not points:
            status[i], error[i] = NO_FACE, None
        elif st == OK:
            w, h = int(batch["width"][i]), int(batch["height"][i])
            problems = [p for p in (align.landmark_problem(lm, w, h) for lm in points) if p]
            if problems:
                status[i], error[i] = BAD_LANDMARKS, f"{len(problems)} of {len(points)} faces: {problems[0]}"
            else:
                image = image_of(batch["pixels"][i], w, h)
                for lm in points:
                    affine = align.estimate_affine(lm)
                    faces.append(align.warp_face(image, affine))
                    mats.append(affine.reshape(-1).tolist())
        crops.append(faces)
        affines.append(mats)
    return table(batch, status=status, error=error, crops=crops, affine=affines, landmarks=[clean(g) for g in given])
