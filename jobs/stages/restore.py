"""The restore job's writer: images/, faces/ (restored and input crops, lineage, measures) and pasted/."""

from __future__ import annotations

import functools
import json
import math

import pyarrow as pa

import schemas.faces
import schemas.images
import schemas.pasted
from codeformer_core.codec import Encoding
from jobs import ledger
from jobs.stages.batches import Batch, clean, file_stem, frame_of, missing


def face_rows(batch: Batch, encoding: Encoding) -> list[dict]:
    """With `encoded_crops` in the batch, `input_crop` is written; else it is null (--no-input-crop)."""
    rows = []
    for i, image_id in enumerate(str(x) for x in batch["image_id"]):
        uri = str(batch["source_uri"][i])
        bbox, score = clean(batch["bbox"][i]) if "bbox" in batch else None, clean(batch["det_score"][i]) if "det_score" in batch else None
        landmarks = clean(batch["landmarks"][i]) if "landmarks" in batch else None
        measures = [json.loads(m) for m in batch["measures"][i]] if "measures" in batch else [{} for _ in batch["encoded_restored"][i]]
        frame, timestamp = frame_of(batch, i)
        stem = file_stem(image_id, frame)
        crops = batch["encoded_crops"][i] if "encoded_crops" in batch else None
        for k, out in enumerate(batch["encoded_restored"][i]):
            rows.append(
                {
                    "image_id": image_id,
                    "source_uri": uri,
                    "face_index": k,
                    "bbox": bbox[k] if bbox else None,
                    "det_score": score[k] if score else None,
                    "landmarks": landmarks[k] if landmarks else None,
                    "affine": clean(batch["affine"][i][k]),
                    "restored": {"bytes": out, "path": f"{stem}_{k}.{encoding.suffix}"},
                    "input_crop": {"bytes": crops[k], "path": f"{stem}_{k}_input.{encoding.suffix}"} if crops is not None else None,
                    "image_format": encoding.format,
                    "frame_index": frame,
                    "timestamp": timestamp,
                    "restored_embedding": clean(batch["restored_embeddings"][i][k]) if "restored_embeddings" in batch and frame is not None else None,
                    **{name: None if math.isnan(v) else v for name, v in measures[k].items()},
                }
            )
    return rows


def write_restored(batch: Batch, output: str, run: dict, encoding: Encoding) -> Batch:
    """This batch's rows of every table, staged for the commit of their shards."""
    return ledger.stage(batch, output, "faces", functools.partial(restored_tables, run=run, encoding=encoding))


def restored_tables(batch: Batch, run: dict, encoding: Encoding) -> tuple[ledger.Tables, ledger.Files]:
    n = len(batch["image_id"])
    faces = face_rows(batch, encoding)
    lineage = {"code_version": [run["code_version"]] * n, "weights_sha256": [run["weights_sha256"]] * n}
    lineage |= {"weights_synthetic": [run["weights_synthetic"]] * n, "fidelity": [run["fidelity"]] * n}
    tables = {
        "images": ledger.images_table(
            batch, schemas.images.SCHEMA, num_faces=[len(r) for r in batch["encoded_restored"]], is_gray=[clean(g) for g in batch["is_gray"]], **lineage
        ),
        "faces": pa.Table.from_pylist(faces, schema=schemas.faces.SCHEMA),
    }
    if "pasted" in batch:
        pasted = [
            {"image_id": str(batch["image_id"][i]), "source_uri": str(batch["source_uri"][i]), "upscale": run["upscale"],
             "pasted": {"bytes": data, "path": f"{file_stem(str(batch['image_id'][i]), frame)}_pasted.{encoding.suffix}"},
             "image_format": encoding.format, "frame_index": frame, "timestamp": timestamp}
            for i, data in enumerate(batch["pasted"]) if not missing(data)
            for frame, timestamp in [frame_of(batch, i)]
        ]
        tables["pasted"] = pa.Table.from_pylist(pasted, schema=schemas.pasted.SCHEMA)
    return tables, {}
