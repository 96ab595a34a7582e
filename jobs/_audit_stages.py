"""The audit job's own stages for `map_batches`, and the end-of-run pass that summarises what
was written. Reading, decoding, detection, alignment and restoration are the restore job's
(jobs/_udf.py). Faces arrive as `crops` lists in their image's row."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import schemas
import schemas.audit_faces
import schemas.audit_images
from codeformer_core import codec, io, metrics
from codeformer_core.arcface import load_arcface
from codeformer_core.detect import Detector
from codeformer_core.measure import landmark_distances, measure_faces
from codeformer_core.thresholds import Rule, failed
from jobs import _ledger
from jobs._udf import TYPES, Batch, RestoreFaces, as_batch, clean, face_of, short_error

THUMBNAIL_SIZE = 128
COLUMN_TYPES = {
    **TYPES,
    "measures": pa.list_(pa.string()),
    "thumbnails": pa.list_(pa.binary()),
    "restored_thumbnails": pa.list_(pa.binary()),
}


def thumbnail(face: np.ndarray) -> bytes:
    small = cv2.resize(face, (THUMBNAIL_SIZE, THUMBNAIL_SIZE), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("OpenCV could not encode a thumbnail")
    return data.tobytes()


class MeasureFaces:
    """Actor stage: the no-reference metrics `metrics` of every aligned face; with `restore`, CodeFormer
    restores each face and ArcFace compares it with its input (identity similarity)."""

    def __init__(
        self,
        metrics: tuple[str, ...],
        restore: dict | None,
        arcface: dict | None,
        detect: dict | None,
        device: str,
        batch_size: int,
        threads: int | None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.metrics = metrics
        self.restore = RestoreFaces(**restore) if restore else None
        self.arcface = load_arcface(self.device, **arcface) if arcface else None
        self.detector = Detector.from_weights(device=self.device, **detect) if detect else None

    def __call__(self, batch: Batch) -> pa.Table:
        if self.restore:
            batch = as_batch(self.restore(batch))
        status, error = [str(s) for s in batch["status"]], [clean(e) for e in batch["error"]]
        todo = [(i, k) for i, crops in enumerate(batch["crops"]) if status[i] == "ok" for k in range(len(crops))]
        faces = [face_of(batch["crops"][i][k]) for i, k in todo]
        restored = [face_of(batch["restored"][i][k]) for i, k in todo] if self.restore else []
        measures: list[list[str]] = [[] for _ in status]
        thumbs: list[list[bytes]] = [[] for _ in status]
        restored_thumbs: list[list[bytes]] = [[] for _ in status]
        try:
            measured = measure_faces(faces, restored if self.restore else None, self.arcface, self.device, self.batch_size, self.metrics)
            if self.detector:
                for values, lmd in zip(measured, landmark_distances(self.detector, faces, restored)):
                    values["lmd"] = lmd
            for (i, k), values, face in zip(todo, measured, faces):
                measures[i].append(json.dumps(values))
                thumbs[i].append(thumbnail(face))
                if restored:
                    restored_thumbs[i].append(thumbnail(face_of(batch["restored"][i][k])))
        except Exception as exc:  # e.g. out of device memory: these images fail, the job goes on
            for i in {i for i, _ in todo}:
                status[i], error[i], measures[i], thumbs[i], restored_thumbs[i] = "measure_error", short_error(exc), [], [], []
        rest = {k: v for k, v in batch.items() if k not in ("pixels", "crops", "restored")}
        columns = {**{k: [clean(x) for x in v] for k, v in rest.items()}, "status": status, "error": error}
        columns |= {"measures": measures, "thumbnails": thumbs, "restored_thumbnails": restored_thumbs}
        if self.restore:
            columns["restored"] = [[codec.encode_png(face_of(b)) for b in r] if status[i] == "ok" else [] for i, r in enumerate(batch["restored"])]
        return pa.table({k: pa.array(v, type=COLUMN_TYPES.get(k)) for k, v in columns.items()})


def face_facts(landmarks: list | None, affine: list, det_score: float | None) -> dict:
    """Detection score, the crop's size in input pixels, and (with landmarks) eye distance and pose."""
    a = np.asarray(affine, dtype=np.float64).reshape(2, 3)
    facts = {"det_score": det_score, "face_size": 512.0 / float(np.sqrt(abs(np.linalg.det(a[:, :2]))))}
    if landmarks is None:
        return facts | {"interocular": None, "yaw": None, "roll": None}
    points = np.asarray(landmarks, dtype=np.float64).reshape(1, 5, 2)
    yaw, roll = metrics.pose(points)
    return facts | {"interocular": float(metrics.interocular(points)[0]), "yaw": float(yaw[0]), "roll": float(roll[0])}


def face_rows(batch: Batch, rules: tuple[Rule, ...]) -> list[dict]:
    rows = []
    for i, image_id in enumerate(str(x) for x in batch["image_id"]):
        bbox, score = clean(batch["bbox"][i]) if "bbox" in batch else None, clean(batch["det_score"][i]) if "det_score" in batch else None
        landmarks = clean(batch["landmarks"][i]) if "landmarks" in batch else None
        restored = batch["restored"][i] if "restored" in batch else None
        for k, text in enumerate(batch["measures"][i]):
            values = face_facts(landmarks[k] if landmarks else None, clean(batch["affine"][i][k]), score[k] if score else None)
            values |= {k: None if v is None or math.isnan(v) else v for k, v in json.loads(text).items()}
            dropped = failed(rules, values)
            rows.append(
                {
                    **{name: values.get(name) for name in schemas.audit_faces.MEASURES},
                    "image_id": image_id,
                    "source_uri": str(batch["source_uri"][i]),
                    "face_index": k,
                    "bbox": bbox[k] if bbox else None,
                    "landmarks": landmarks[k] if landmarks else None,
                    "affine": clean(batch["affine"][i][k]),
                    "keep": not dropped,
                    "dropped_by": dropped,
                    "thumbnail": {"bytes": batch["thumbnails"][i][k], "path": f"{image_id}_{k}_thumb.jpg"},
                    "restored_thumbnail": {"bytes": batch["restored_thumbnails"][i][k], "path": f"{image_id}_{k}_restored_thumb.jpg"} if restored is not None else None,
                    "restored": {"bytes": restored[k], "path": f"{image_id}_{k}.png"} if restored is not None else None,
                }
            )
    return rows


def write_audit(batch: Batch, output: str, run: dict, rules: tuple[Rule, ...]) -> Batch:
    """Write this batch's images/ and faces/ rows as one committed part."""
    image_ids = [str(i) for i in batch["image_id"]]
    n = len(image_ids)
    faces = face_rows(batch, rules)
    kept = Counter(r["image_id"] for r in faces if r["keep"])
    images = pa.table(
        {
            "source_uri": [str(u) for u in batch["source_uri"]],
            "image_id": image_ids,
            "status": [str(s) for s in batch["status"]],
            "error": [clean(e) for e in batch["error"]],
            "width": [clean(v) for v in batch["width"]],
            "height": [clean(v) for v in batch["height"]],
            "num_faces": [len(m) for m in batch["measures"]],
            "num_kept": [kept[i] for i in image_ids],
            "code_version": [run["code_version"]] * n,
        }
    )
    tables = {
        "images": schemas.conform(images, schemas.audit_images.SCHEMA),
        "faces": pa.Table.from_pylist(faces, schema=schemas.audit_faces.SCHEMA),
    }
    statuses = Counter(str(s) for s in batch["status"])
    _ledger.write_part(output, _ledger.new_part_name(), tables, image_ids, dict(statuses), len(faces))
    return {"inputs": np.array([n]), "items": np.array([len(faces)]), "statuses": np.array([json.dumps(statuses)])}


def committed_tables(output: str, name: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Each committed part of table `name`, one at a time, so that memory stays flat."""
    for uri in io.list_files(io.join(output, _ledger.COMMITS), suffix=".json"):
        for rel in json.loads(io.read_bytes(uri))["files"]:
            if rel.startswith(f"{name}/"):
                filesystem, path = io.filesystem_and_path(io.join(output, rel))
                yield pq.read_table(path, filesystem=filesystem, columns=columns)
