"""The inputs of a run: a folder, prefix or manifest listed once, in sorted order, with manifest landmarks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from codeformer_core import storage
from jobs.cli import UsageError

LANDMARKS_COLUMN = "landmarks"
LISTING_CHUNK = 8192


def image_id(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:20]


def parse_landmarks(value: object) -> list[list[float]] | None:
    """A manifest cell -> a list of faces of 10 numbers each; a JSON string (CSV) or nested lists.

    An empty cell means: no landmarks given, detect."""
    if value is None or value == "":
        return None
    faces = json.loads(value) if isinstance(value, str) else value
    return [[float(v) for v in np.asarray(face, dtype=np.float64).reshape(-1)] for face in faces]


def list_inputs(source: str, uri_column: str | None, limit: int | None) -> pa.Table:
    """`source_uri` and `image_id` (and `manifest_landmarks` when the manifest has them), each input
    once, sorted, cut to --limit.

    Arrow does the sorting and de-duplication (a sort, not a hash group-by, whose memory the driver
    would keep), and the per-row Python work goes LISTING_CHUNK rows at a time, so that listing a
    large corpus costs the driver little more than the table it returns."""
    try:
        if storage.is_manifest(source):
            manifest = storage.read_manifest(source, uri_column)
        else:
            manifest = pa.table({"source_uri": pa.array(storage.list_images(source), pa.string())})
    except FileNotFoundError:
        raise UsageError(f"input {source} does not exist") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read input {source}: {exc}") from None
    if not manifest.num_rows:
        raise UsageError(f"no images (jpg, jpeg, png, webp, bmp) found under {source}")
    order = pc.sort_indices(manifest.column("source_uri"))  # a stable sort: a repeated URI's first row comes first
    ordered = manifest.column("source_uri").take(order)
    firsts = pa.concat_arrays([pa.array([True]), pc.not_equal(ordered[1:], ordered[:-1]).combine_chunks()])
    rows = order.filter(firsts)[:limit]
    uris = manifest.column("source_uri").take(rows)
    inputs = pa.table({"source_uri": uris, "image_id": in_chunks(uris, image_id, pa.string())})
    if LANDMARKS_COLUMN not in manifest.column_names:
        return inputs
    try:
        faces = in_chunks(manifest.column(LANDMARKS_COLUMN).take(rows), parse_landmarks, pa.list_(pa.list_(pa.float64())))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"manifest column {LANDMARKS_COLUMN!r} must hold lists of 10 numbers per face: {exc}") from None
    return inputs.append_column("manifest_landmarks", faces)


def in_chunks(values: pa.ChunkedArray, fn: Callable[[object], object], type: pa.DataType) -> pa.ChunkedArray:
    """`fn` of each value, converted through Python LISTING_CHUNK values at a time."""
    return pa.chunked_array(
        [pa.array([fn(v) for v in values.slice(i, LISTING_CHUNK).to_pylist()], type) for i in range(0, len(values), LISTING_CHUNK)], type
    )


def needs_detector(aligned: bool, inputs: pa.Table) -> bool:
    """Whole images some of which have no manifest landmarks."""
    if aligned:
        return False
    if "manifest_landmarks" not in inputs.column_names:
        return True
    return inputs.column("manifest_landmarks").null_count > 0
