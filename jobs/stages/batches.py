"""Batch plumbing: Ray's numpy batches in, typed Arrow tables out, with pixels as raw bytes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from codeformer_core.align import FACE_SIZE

Batch = dict[str, np.ndarray]
TYPES = {
    "source_uri": pa.string(),
    "image_id": pa.string(),
    "container": pa.string(),
    "member": pa.int64(),
    "member_size": pa.int64(),
    "member_column": pa.string(),
    "kept": pa.string(),
    "data": pa.binary(),
    "status": pa.string(),
    "error": pa.string(),
    "pixels": pa.large_binary(),
    "crops": pa.list_(pa.binary()),
    "restored": pa.list_(pa.binary()),
    "landmarks": pa.list_(pa.list_(pa.float64())),
    "manifest_landmarks": pa.list_(pa.list_(pa.float64())),
    "bbox": pa.list_(pa.list_(pa.float64())),
    "det_score": pa.list_(pa.float64()),
    "affine": pa.list_(pa.list_(pa.float64())),
    "measures": pa.list_(pa.string()),
    "thumbnails": pa.list_(pa.binary()),
    "restored_thumbnails": pa.list_(pa.binary()),
    "embeddings": pa.list_(pa.list_(pa.float32())),
    "restored_embeddings": pa.list_(pa.list_(pa.float32())),
    "phashes": pa.list_(pa.uint64()),
    "sharpness": pa.list_(pa.float64()),
    "content_sha256": pa.string(),
    "pasted": pa.binary(),
    "is_gray": pa.bool_(),
    "video": pa.string(),
    "frame_index": pa.int64(),
    "timestamp": pa.float64(),
    "segment_rows": pa.int64(),
    "width": pa.int64(),
    "height": pa.int64(),
}


def table(batch: Batch, drop: tuple[str, ...] = (), **replaced: list) -> pa.Table:
    """`batch` without the columns `drop`, with some replaced or added, typed explicitly so Ray keeps them as Arrow."""
    columns = {**{k: list(v) for k, v in batch.items() if k not in drop}, **replaced}
    return pa.table({k: pa.array([clean(x) for x in v], type=TYPES.get(k)) for k, v in columns.items()})


def clean(value: object) -> object:
    """Ray hands lists back as numpy arrays and nulls as None or NaN; make them plain Python."""
    if isinstance(value, np.ndarray):
        return [clean(v) for v in value]
    if missing(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def missing(value: object) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and bool(np.isnan(value)))


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def as_batch(t: pa.Table) -> Batch:
    """The numpy batch Ray would hand the next stage, for stages chained inside one actor."""
    batch = {}
    for name in t.column_names:
        column = np.empty(t.num_rows, dtype=object)
        for i, value in enumerate(t.column(name).to_pylist()):
            column[i] = value
        batch[name] = column
    return batch


def statuses(batch: Batch) -> tuple[list[str], list[str | None]]:
    """Each row's status and error, as lists a stage may change."""
    return [str(s) for s in batch["status"]], [clean(e) for e in batch["error"]]


def image_of(row_pixels: bytes, width: int, height: int) -> np.ndarray:
    return np.frombuffer(row_pixels, np.uint8).reshape(int(height), int(width), 3)


def frame_of(batch: Batch, i: int) -> tuple[int | None, float | None]:
    """Row `i`'s frame number and time in its video; None, None for an image."""
    if "frame_index" not in batch or missing(batch["frame_index"][i]):
        return None, None
    return int(batch["frame_index"][i]), float(batch["timestamp"][i])


def file_stem(image_id: str, frame: int | None) -> str:
    """The start of the names of what is written for an image, or for one frame of a video."""
    return image_id if frame is None else f"{image_id}_f{frame:07d}"


def face_of(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(FACE_SIZE, FACE_SIZE, 3)
