"""Callable stages for `map_batches`. Each converts columns and calls the library; none raises
for a bad row: failures become `status`/`error` values, so one bad image never stops a job.

Rows are images. Faces travel inside their image's row as lists (`landmarks`, `affine`,
`crops`, `restored`, ...) until the write stage splits them into the `faces/` table. Pixels
travel as raw RGB bytes (`pixels`, with `width` and `height`; crops are 512x512x3).
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import torch

import schemas.faces
import schemas.images
import schemas.pasted
from codeformer_core import align, codec, io, paste
from codeformer_core.arcface import load_arcface
from codeformer_core.detect import DetectConfig, Detector
from codeformer_core.measure import measure_faces
from codeformer_core.parsing import FaceParser
from codeformer_core.restore import FACE_SIZE, Restorer, Speed, as_aligned_face
from jobs import _ledger

Batch = dict[str, np.ndarray]
FACE_SHAPE = (FACE_SIZE, FACE_SIZE, 3)
TYPES = {
    "pixels": pa.large_binary(),
    "crops": pa.list_(pa.binary()),
    "restored": pa.list_(pa.binary()),
    "landmarks": pa.list_(pa.list_(pa.float64())),
    "manifest_landmarks": pa.list_(pa.list_(pa.float64())),
    "bbox": pa.list_(pa.list_(pa.float64())),
    "det_score": pa.list_(pa.float64()),
    "affine": pa.list_(pa.list_(pa.float64())),
    "measures": pa.list_(pa.string()),
    "pasted": pa.binary(),
    "width": pa.int64(),
    "height": pa.int64(),
}


def table(batch: Batch, **replaced: list) -> pa.Table:
    """`batch` with some columns replaced or added, typed explicitly so Ray keeps them as Arrow."""
    columns = {**{k: list(v) for k, v in batch.items()}, **replaced}
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


def image_of(row_pixels: bytes, width: int, height: int) -> np.ndarray:
    return np.frombuffer(row_pixels, np.uint8).reshape(int(height), int(width), 3)


def face_of(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(FACE_SHAPE)


def take_inputs(batch: Batch, inputs: pa.Table, batch_size: int) -> pa.Table:
    """The rows of `inputs` in the blocks numbered in `batch["id"]`, `batch_size` rows each."""
    return pa.concat_tables([inputs.slice(int(i) * batch_size, batch_size) for i in batch["id"]])


def read_images(batch: Batch) -> pa.Table:
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
    return pa.table({**{k: list(v) for k, v in batch.items()}, "data": pa.array(data, pa.binary()), "status": status, "error": error})


def decode_images(batch: Batch, max_pixels: int, aligned: bool) -> pa.Table:
    """Whole images keep their pixels; with `aligned`, each image is one face crop already."""
    status, error, width, height, pixels, crops, affines = [], [], [], [], [], [], []
    for data, st, err in zip(batch["data"], batch["status"], batch["error"]):
        w = h = None
        rgb = None
        if st == "ok":
            decoded = codec.decode_image(data, max_pixels)
            st, err, w, h, rgb = decoded.status, decoded.error, decoded.width, decoded.height, decoded.rgb
        status.append(st)
        error.append(clean(err))
        width.append(w)
        height.append(h)
        if aligned:
            pixels.append(None)
            crops.append([] if rgb is None else [as_aligned_face(rgb).tobytes()])
            sx, sy = (FACE_SIZE / w, FACE_SIZE / h) if rgb is not None else (0, 0)
            scale = [[sx, 0.0, 0.5 * sx - 0.5, 0.0, sy, 0.5 * sy - 0.5]] if rgb is not None else []
            affines.append(scale)
        else:
            pixels.append(None if rgb is None else rgb.tobytes())
    rest = {k: v for k, v in batch.items() if k != "data"}
    extra = {"crops": crops, "affine": affines} if aligned else {}
    return table(rest, status=status, error=error, width=width, height=height, pixels=pixels, **extra)


class DetectFaces:
    """Actor stage: RetinaFace loaded once; finds faces in every readable image that has no manifest landmarks."""

    def __init__(self, config: DetectConfig, weights: str | None, weights_dir: str | None, synthetic: bool, device: str, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.detector = Detector.from_weights(config, torch.device(device), weights, weights_dir, 1 if synthetic else None)

    def __call__(self, batch: Batch) -> pa.Table:
        n = len(batch["status"])
        given = batch.get("manifest_landmarks")
        todo = [i for i in range(n) if batch["status"][i] == "ok" and (given is None or given[i] is None)]
        landmarks: list = [clean(given[i]) if given is not None and given[i] is not None else [] for i in range(n)]
        bbox: list = [[] for _ in range(n)]
        score: list = [[] for _ in range(n)]
        status, error = [str(s) for s in batch["status"]], [clean(e) for e in batch["error"]]
        if todo:
            images = [image_of(batch["pixels"][i], batch["width"][i], batch["height"][i]) for i in todo]
            try:
                found = self.detector.detect(images)
            except Exception as exc:  # e.g. out of memory: these rows fail, the job goes on
                found = [[] for _ in todo]
                for i in todo:
                    status[i], error[i] = "detect_error", short_error(exc)
            for i, faces in zip(todo, found):
                landmarks[i] = [f.landmarks.reshape(-1).tolist() for f in faces]
                bbox[i] = [f.box.tolist() for f in faces]
                score[i] = [f.score for f in faces]
        return table(batch, status=status, error=error, landmarks=landmarks, bbox=bbox, det_score=score)


def align_faces(batch: Batch) -> pa.Table:
    """Crop every face to 512x512; an image with unusable landmarks, or none, gets its own status."""
    status, error, crops, affines = [], [], [], []
    # Without a detector stage (every input has manifest landmarks) the manifest's are the landmarks.
    given = batch["landmarks"] if "landmarks" in batch else batch["manifest_landmarks"]
    for i, st in enumerate(batch["status"]):
        st, err = str(st), clean(batch["error"][i])
        faces, mats = [], []
        points = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in clean(given[i]) or []]
        if st == "ok" and not points:
            st, err = "no_face", None
        elif st == "ok":
            w, h = int(batch["width"][i]), int(batch["height"][i])
            problems = [p for p in (align.landmark_problem(lm, w, h) for lm in points) if p]
            if problems:
                st, err = "bad_landmarks", f"{len(problems)} of {len(points)} faces: {problems[0]}"
            else:
                image = image_of(batch["pixels"][i], w, h)
                for lm in points:
                    affine = align.estimate_affine(lm)
                    faces.append(align.warp_face(image, affine).tobytes())
                    mats.append(affine.reshape(-1).tolist())
        status.append(st)
        error.append(err)
        crops.append(faces)
        affines.append(mats)
    return table(batch, status=status, error=error, crops=crops, affine=affines, landmarks=[clean(g) for g in given])


class RestoreFaces:
    """Actor stage: the network is loaded once in __init__ and reused for every batch."""

    def __init__(
        self,
        weights: str,
        weights_dir: str | None,
        expected_sha256: str,
        device: str,
        speed: Speed,
        fidelity: float,
        threads: int | None,
        arcface: dict | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.restorer, info = Restorer.from_checkpoint(weights, device, speed, weights_dir)
        self.arcface = load_arcface(torch.device(device), **arcface) if arcface else None
        if info.sha256 != expected_sha256:
            raise RuntimeError(
                f"weights {weights} on this worker have sha256 {info.sha256}, the driver checked {expected_sha256}"
            )
        self.fidelity = fidelity

    def __call__(self, batch: Batch) -> pa.Table:
        crops = [list(c) for c in batch["crops"]]
        flat = [face_of(b) for faces in crops for b in faces]
        status, error = [str(s) for s in batch["status"]], [clean(e) for e in batch["error"]]
        measures: list[list[str]] = [[] for _ in crops]
        try:
            out = self.restorer.restore(flat, self.fidelity)
            restored = iter(out)
            nested = [[next(restored).tobytes() for _ in faces] for faces in crops]
            if self.arcface is not None:
                measured = iter(measure_faces(flat, list(out), self.arcface, self.restorer.device, self.restorer.batch_size))
                measures = [[json.dumps(next(measured)) for _ in faces] for faces in crops]
        except Exception as exc:  # a failed forward (e.g. out of memory) fails its rows, not the job
            nested = [[] for _ in crops]
            for i, faces in enumerate(crops):
                if faces:
                    status[i], error[i] = "restore_error", short_error(exc)
        return table(batch, status=status, error=error, restored=nested, **({"measures": measures} if self.arcface else {}))


class DetectAndRestoreFaces:
    """Actor stage holding both networks: detect, align and restore in one call (`--detect-layout fused`)."""

    def __init__(self, detect: dict, restore: dict) -> None:
        self.detect = DetectFaces(**detect)
        self.restore = RestoreFaces(**restore)

    def __call__(self, batch: Batch) -> pa.Table:
        return self.restore(as_batch(align_faces(as_batch(self.detect(batch)))))


class PasteFaces:
    """Actor stage: each whole image with its restored faces pasted back; ParseNet masks with `parse`."""

    def __init__(self, upscale: int, parse: bool, weights_dir: str | None, synthetic: bool) -> None:
        self.upscale = upscale
        self.parser = (
            FaceParser.from_weights(torch.device("cpu"), None, weights_dir, 1 if synthetic else None) if parse else None
        )

    def __call__(self, batch: Batch) -> pa.Table:
        pasted = []
        for i, restored in enumerate(batch["restored"]):
            if len(restored) == 0:
                pasted.append(None)
                continue
            image = image_of(batch["pixels"][i], batch["width"][i], batch["height"][i])
            faces = [face_of(f) for f in restored]
            affines = [np.asarray(a, dtype=np.float64).reshape(2, 3) for a in batch["affine"][i]]
            masks = self.parser.masks(faces) if self.parser else None
            pasted.append(codec.encode_png(paste.paste_faces(image, faces, affines, self.upscale, masks)))
        return table(batch, pasted=pasted)


def encode_png(batch: Batch) -> pa.Table:
    rest = {k: v for k, v in batch.items() if k != "pixels"}
    return table(
        rest,
        crops=[[codec.encode_png(face_of(b)) for b in c] for c in batch["crops"]],
        restored=[[codec.encode_png(face_of(b)) for b in r] for r in batch["restored"]],
    )


def face_rows(batch: Batch) -> list[dict]:
    rows = []
    for i, image_id in enumerate(str(x) for x in batch["image_id"]):
        uri = str(batch["source_uri"][i])
        bbox, score = clean(batch["bbox"][i]) if "bbox" in batch else None, clean(batch["det_score"][i]) if "det_score" in batch else None
        landmarks = clean(batch["landmarks"][i]) if "landmarks" in batch else None
        measures = [json.loads(m) for m in batch["measures"][i]] if "measures" in batch else [{} for _ in batch["restored"][i]]
        for k, (out, crop) in enumerate(zip(batch["restored"][i], batch["crops"][i])):
            rows.append(
                {
                    "image_id": image_id,
                    "source_uri": uri,
                    "face_index": k,
                    "bbox": bbox[k] if bbox else None,
                    "det_score": score[k] if score else None,
                    "landmarks": landmarks[k] if landmarks else None,
                    "affine": clean(batch["affine"][i][k]),
                    "restored": {"bytes": out, "path": f"{image_id}_{k}.png"},
                    "input_crop": {"bytes": crop, "path": f"{image_id}_{k}_input.png"},
                    **{name: None if math.isnan(v) else v for name, v in measures[k].items()},
                }
            )
    return rows


def write_part(batch: Batch, output: str, run: dict) -> Batch:
    """Write this batch's rows of every table as one committed part; return its counts."""
    image_ids = [str(i) for i in batch["image_id"]]
    n = len(image_ids)
    faces = face_rows(batch)
    images = pa.table(
        {
            "source_uri": [str(u) for u in batch["source_uri"]],
            "image_id": image_ids,
            "status": [str(s) for s in batch["status"]],
            "error": [clean(e) for e in batch["error"]],
            "width": [clean(v) for v in batch["width"]],
            "height": [clean(v) for v in batch["height"]],
            "num_faces": [len(r) for r in batch["restored"]],
            "code_version": [run["code_version"]] * n,
            "weights_sha256": [run["weights_sha256"]] * n,
            "weights_synthetic": [run["weights_synthetic"]] * n,
            "fidelity": [run["fidelity"]] * n,
        }
    )
    tables = {
        "images": schemas.conform(images, schemas.images.SCHEMA),
        "faces": pa.Table.from_pylist(faces, schema=schemas.faces.SCHEMA),
    }
    if "pasted" in batch:
        pasted = [
            {"image_id": image_ids[i], "source_uri": str(batch["source_uri"][i]), "upscale": run["upscale"],
             "pasted": {"bytes": png, "path": f"{image_ids[i]}_pasted.png"}}
            for i, png in enumerate(batch["pasted"]) if not missing(png)
        ]
        tables["pasted"] = pa.Table.from_pylist(pasted, schema=schemas.pasted.SCHEMA)
    statuses = Counter(str(s) for s in batch["status"])
    _ledger.write_part(output, _ledger.new_part_name(), tables, image_ids, dict(statuses), len(faces))
    return {"inputs": np.array([n]), "items": np.array([len(faces)]), "statuses": np.array([json.dumps(statuses)])}
