"""Callable stages for `map_batches`. Each converts columns and calls the library; none raises
for a bad row: failures become `status`/`error` values, so one bad image never stops a job.

Rows are images. Faces travel inside their image's row as lists (`crops`, `restored`) of raw
512x512x3 RGB bytes until the encode stage turns them into PNG.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import torch

import schemas.faces
import schemas.images
from codeformer_core import codec, io
from codeformer_core.restore import FACE_SIZE, Restorer, as_aligned_face
from jobs import _ledger

Batch = dict[str, np.ndarray]
FACES_TYPE = pa.list_(pa.binary())
FACE_SHAPE = (FACE_SIZE, FACE_SIZE, 3)


def objects(values: list) -> np.ndarray:
    """A 1-D object array, even when the values are themselves lists or arrays."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def with_faces(batch: Batch, **faces: list[list[bytes]]) -> pa.Table:
    """`batch` plus list-of-bytes columns, typed explicitly so Ray keeps them as Arrow, not pickles."""
    columns = {k: pa.array(list(v)) for k, v in batch.items() if k not in faces}
    columns.update({k: pa.array(v, type=FACES_TYPE) for k, v in faces.items()})
    return pa.table(columns)


def missing(value: object) -> bool:
    """Ray may hand back a null as None or as NaN, depending on the column's other values."""
    return value is None or (isinstance(value, (float, np.floating)) and bool(np.isnan(value)))


def optional_int(value: object) -> int | None:
    return None if missing(value) else int(value)


def optional_str(value: object) -> str | None:
    return None if missing(value) else str(value)


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def read_images(batch: Batch) -> Batch:
    data, status, error = [], [], []
    for uri in batch["source_uri"]:
        try:
            data.append(io.read_bytes(str(uri)))
            status.append("ok")
            error.append(None)
        except OSError as exc:
            data.append(b"")
            status.append("read_error")
            error.append(short_error(exc))
    return {**batch, "data": objects(data), "status": np.array(status), "error": objects(error)}


def decode_aligned(batch: Batch, max_pixels: int) -> Batch:
    """Each readable image is taken as one aligned face (resized to 512x512 when it is not)."""
    status, error, width, height, crops = [], [], [], [], []
    for data, st, err in zip(batch["data"], batch["status"], batch["error"]):
        faces: list[bytes] = []
        w = h = None
        if st == "ok":
            decoded = codec.decode_image(data, max_pixels)
            st, err, w, h = decoded.status, decoded.error, decoded.width, decoded.height
            if decoded.rgb is not None:
                faces.append(as_aligned_face(decoded.rgb).tobytes())
        status.append(st)
        error.append(err)
        width.append(w)
        height.append(h)
        crops.append(faces)
    rest = {k: v for k, v in batch.items() if k != "data"}
    rest.update(
        status=np.array(status),
        error=objects(error),
        width=np.array(width, dtype=object),
        height=np.array(height, dtype=object),
    )
    return with_faces(rest, crops=crops)


class RestoreFaces:
    """Actor stage: the network is loaded once in __init__ and reused for every batch."""

    def __init__(
        self,
        weights: str,
        weights_dir: str | None,
        expected_sha256: str,
        device: str,
        batch_size: int,
        fidelity: float,
        threads: int | None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.restorer, info = Restorer.from_checkpoint(weights, device, batch_size, weights_dir)
        if info.sha256 != expected_sha256:
            raise RuntimeError(
                f"weights {weights} on this worker have sha256 {info.sha256}, the driver checked {expected_sha256}"
            )
        self.fidelity = fidelity

    def __call__(self, batch: Batch) -> pa.Table:
        crops = [list(c) for c in batch["crops"]]
        flat = [np.frombuffer(b, np.uint8).reshape(FACE_SHAPE) for faces in crops for b in faces]
        status, error = batch["status"].copy().astype(object), batch["error"].copy()
        try:
            restored = iter(self.restorer.restore(flat, self.fidelity))
            nested = [[next(restored).tobytes() for _ in faces] for faces in crops]
        except Exception as exc:  # a failed forward (e.g. out of memory) fails its rows, not the job
            nested = [[] for _ in crops]
            for i, faces in enumerate(crops):
                if faces:
                    status[i], error[i] = "restore_error", short_error(exc)
        return with_faces({**batch, "status": status, "error": error}, crops=crops, restored=nested)


def encode_png(batch: Batch) -> pa.Table:
    def png(faces: np.ndarray) -> list[bytes]:
        return [codec.encode_png(np.frombuffer(b, np.uint8).reshape(FACE_SHAPE)) for b in faces]

    return with_faces(
        batch,
        crops=[png(c) for c in batch["crops"]],
        restored=[png(r) for r in batch["restored"]],
    )


def write_part(batch: Batch, output: str, run: dict) -> Batch:
    """Write this batch's `images/` and `faces/` rows as one committed part; return its counts."""
    image_ids = [str(i) for i in batch["image_id"]]
    uris = [str(u) for u in batch["source_uri"]]
    restored = [list(r) for r in batch["restored"]]
    crops = [list(c) for c in batch["crops"]]
    n = len(image_ids)

    images = pa.table(
        {
            "source_uri": uris,
            "image_id": image_ids,
            "status": [str(s) for s in batch["status"]],
            "error": [optional_str(e) for e in batch["error"]],
            "width": [optional_int(v) for v in batch["width"]],
            "height": [optional_int(v) for v in batch["height"]],
            "num_faces": [len(r) for r in restored],
            "code_version": [run["code_version"]] * n,
            "weights_sha256": [run["weights_sha256"]] * n,
            "weights_synthetic": [run["weights_synthetic"]] * n,
            "fidelity": [run["fidelity"]] * n,
        }
    )
    face_rows = [
        {
            "image_id": image_id,
            "source_uri": uri,
            "face_index": k,
            "restored": {"bytes": out, "path": f"{image_id}_{k}.png"},
            "input_crop": {"bytes": crop, "path": f"{image_id}_{k}_input.png"},
        }
        for image_id, uri, outs, ins in zip(image_ids, uris, restored, crops)
        for k, (out, crop) in enumerate(zip(outs, ins))
    ]
    faces = pa.Table.from_pylist(face_rows, schema=schemas.faces.SCHEMA)
    tables = {
        "images": schemas.conform(images, schemas.images.SCHEMA),
        "faces": schemas.conform(faces, schemas.faces.SCHEMA),
    }
    statuses = Counter(str(s) for s in batch["status"])
    _ledger.write_part(output, _ledger.new_part_name(), tables, image_ids, dict(statuses), len(face_rows))
    return {"inputs": np.array([n]), "faces": np.array([len(face_rows)]), "statuses": np.array([json.dumps(statuses)])}
