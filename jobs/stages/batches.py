"""Batch plumbing: Ray's Arrow blocks in, read as numpy columns; typed Arrow tables out. A stage
converts only the columns it reads, and the columns it passes on go out as they came, uncopied.
Whole images' pixels travel as raw bytes; raw faces as Ray's tensor columns, read as numpy views."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pyarrow as pa
from ray.data.block import BlockAccessor
from ray.data.extensions import ArrowVariableShapedTensorArray, ArrowVariableShapedTensorType

from codeformer_core.align import FACE_SIZE

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
    "encoded_crops": pa.list_(pa.binary()),
    "encoded_restored": pa.list_(pa.binary()),
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


class Block(Mapping):
    """An Arrow block as the stages read it: each column the numpy array Ray's numpy batches hold,
    made when it is first read."""

    def __init__(self, arrow: pa.Table) -> None:
        self.arrow = arrow
        self._numpy: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._numpy:
            if name not in self.arrow.column_names:
                raise KeyError(name)
            self._numpy[name] = BlockAccessor.for_block(self.arrow.select([name])).to_numpy(name)
        return self._numpy[name]

    def __contains__(self, name: object) -> bool:
        return name in self.arrow.column_names

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrow.column_names)

    def __len__(self) -> int:
        return self.arrow.num_columns


Batch = Mapping[str, np.ndarray]  # a Block, or (in tests) a dict of numpy columns


def rows_of(batch: Batch, rows: list[int]) -> Batch:
    """The batch of `rows` of `batch`."""
    if isinstance(batch, Block):
        return Block(batch.arrow.take(rows))
    return {k: np.asarray(v)[rows] for k, v in batch.items()}


FACES = ("crops", "restored")  # columns of raw faces: per row an (n, 512, 512, 3) uint8 array, n >= 0
_FACES_TYPE = ArrowVariableShapedTensorType(pa.uint8(), 4)


def table(batch: Batch, drop: tuple[str, ...] = (), **replaced: list) -> pa.Table:
    """`batch` without the columns `drop`, with some replaced or added, typed explicitly so Ray keeps
    them as Arrow; a Block's columns that are kept go out as they are."""
    names = [k for k in batch if k not in drop]
    names += [k for k in replaced if k not in names]

    def out(name: str) -> pa.Array | pa.ChunkedArray:
        if name in replaced:
            return column(name, replaced[name])
        return batch.arrow.column(name) if isinstance(batch, Block) else column(name, batch[name])

    return pa.table({k: out(k) for k in names})


def column(name: str, values: list) -> pa.Array:
    return faces_array(values) if name in FACES else pa.array([clean(x) for x in values], type=TYPES.get(name))


def faces_array(rows: list) -> pa.Array:
    """Each row's faces (an array of them, or a sequence of (512, 512, 3) arrays) as one tensor column."""
    stacked = [np.asarray(r, dtype=np.uint8).reshape(-1, FACE_SIZE, FACE_SIZE, 3) for r in rows]
    if not stacked:
        return _FACES_TYPE.wrap_array(pa.array([], type=_FACES_TYPE.storage_type))
    return ArrowVariableShapedTensorArray.from_numpy(stacked)


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

