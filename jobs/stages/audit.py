"""The audit job's own stages: thumbnails for the report, face facts, keep/drop, and its writer."""

from __future__ import annotations

import functools
import json
import math
from collections import Counter

import cv2
import numpy as np
import pyarrow as pa

import schemas.audit_faces
import schemas.audit_images
from codeformer_core import align, face_metrics
from codeformer_core.statuses import OK
from codeformer_core.thresholds import Rule, failed
from jobs import ledger
from jobs.stages.batches import Batch, clean, file_stem, frame_of, table

THUMBNAIL_SIZE = 128


def thumbnail(face: np.ndarray) -> bytes:
    small = cv2.resize(face, (THUMBNAIL_SIZE, THUMBNAIL_SIZE), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("OpenCV could not encode a thumbnail")
    return data.tobytes()


def thumbnails(batch: Batch) -> pa.Table:
    """`thumbnails` (and `restored_thumbnails`) of every measured face; the crops themselves are dropped."""
    ok = [str(s) == OK for s in batch["status"]]
    small = [[thumbnail(b) for b in c] if good else [] for c, good in zip(batch["crops"], ok)]
    extra = {}
    if "restored" in batch:
        extra["restored_thumbnails"] = [[thumbnail(b) for b in r] if good else [] for r, good in zip(batch["restored"], ok)]
    return table(batch, drop=("crops", "pixels"), thumbnails=small, **extra)


def face_facts(landmarks: list | None, affine: list, det_score: float | None) -> dict:
    """Detection score, the crop's size in input pixels, and (with landmarks) eye distance and pose."""
    facts = {"det_score": det_score, "face_size": align.crop_side(np.asarray(affine))}
    if landmarks is None:
        return facts | {"interocular": None, "yaw": None, "roll": None}
    points = np.asarray(landmarks, dtype=np.float64).reshape(1, 5, 2)
    yaw, roll = face_metrics.pose(points)
    return facts | {"interocular": float(face_metrics.interocular(points)[0]), "yaw": float(yaw[0]), "roll": float(roll[0])}


def face_rows(batch: Batch, rules: tuple[Rule, ...]) -> list[dict]:
    rows = []
    for i, image_id in enumerate(str(x) for x in batch["image_id"]):
        bbox, score = clean(batch["bbox"][i]) if "bbox" in batch else None, clean(batch["det_score"][i]) if "det_score" in batch else None
        landmarks = clean(batch["landmarks"][i]) if "landmarks" in batch else None
        restored = batch["encoded_restored"][i] if "encoded_restored" in batch else None
        frame, timestamp = frame_of(batch, i)
        stem = file_stem(image_id, frame)
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
                    "thumbnail": {"bytes": batch["thumbnails"][i][k], "path": f"{stem}_{k}_thumb.jpg"},
                    "restored_thumbnail": {"bytes": batch["restored_thumbnails"][i][k], "path": f"{stem}_{k}_restored_thumb.jpg"} if restored is not None else None,
                    "restored": {"bytes": restored[k], "path": f"{stem}_{k}.png"} if restored is not None else None,
                    "frame_index": frame,
                    "timestamp": timestamp,
                    "restored_embedding": clean(batch["restored_embeddings"][i][k]) if "restored_embeddings" in batch and frame is not None else None,
                }
            )
    return rows


def write_audit(batch: Batch, output: str, run: dict, rules: tuple[Rule, ...]) -> Batch:
    """This batch's images/ and faces/ rows, staged for the commit of their shards."""
    return ledger.stage(batch, output, "faces", functools.partial(audit_tables, run=run, rules=rules))


def audit_tables(batch: Batch, run: dict, rules: tuple[Rule, ...]) -> tuple[ledger.Tables, ledger.Files]:
    faces = face_rows(batch, rules)
    kept = Counter(r["image_id"] for r in faces if r["keep"])
    images = ledger.images_table(
        batch, schemas.audit_images.SCHEMA,
        num_faces=[len(m) for m in batch["measures"]],
        num_kept=[kept[str(i)] for i in batch["image_id"]],
        code_version=[run["code_version"]] * len(batch["image_id"]),
    )
    tables = {"images": images, "faces": pa.Table.from_pylist(faces, schema=schemas.audit_faces.SCHEMA)}
    return tables, {}
