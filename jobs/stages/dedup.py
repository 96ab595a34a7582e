"""The dedup job's own stages: the source files' digests, each face's hash, embedding and keys, and its writer."""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pyarrow as pa
import torch

import schemas.dedup_embedded
import schemas.dedup_images
from codeformer_core import align, face_metrics, grouping, metrics
from codeformer_core.arcface import load_arcface
from codeformer_core.measure import as_tensor
from codeformer_core.restore import ieee_fp32
from codeformer_core.statuses import MEASURE_ERROR, OK
from jobs import ledger
from jobs.stages.audit import thumbnail
from jobs.stages.batches import Batch, clean, short_error, statuses, table

FACE_BITS, PLACE_BITS = 12, 28  # face_id = shard << 40 | position << 12 | face_index


def face_id(shard: int, position: int, face_index: int) -> int:
    if face_index >= 1 << FACE_BITS or position >= 1 << PLACE_BITS:
        raise ValueError(f"face {face_index} of input {position}: at most {1 << FACE_BITS} faces per image and {1 << PLACE_BITS} inputs per shard")
    return shard << (FACE_BITS + PLACE_BITS) | position << FACE_BITS | face_index


def hash_sources(batch: Batch) -> pa.Table:
    """`content_sha256` of each read file's bytes: the same file under two names is one photo."""
    sha = [hashlib.sha256(d).hexdigest() if s == OK else None for d, s in zip(batch["data"], batch["status"])]
    return table(batch, content_sha256=sha)


class EmbedFaces:
    """ArcFace loaded once; per face its embedding, pHash, sharpness and thumbnail; the crops are dropped."""

    def __init__(self, arcface: dict, device: str, batch_size: int) -> None:
        self.device = torch.device(device)
        self.arcface = load_arcface(self.device, **arcface)
        self.batch_size = batch_size

    def __call__(self, batch: Batch) -> pa.Table:
        status, error = statuses(batch)
        todo = [(i, k) for i, crops in enumerate(batch["crops"]) if status[i] == OK for k in range(len(crops))]
        faces = [batch["crops"][i][k] for i, k in todo]
        out = {name: [[] for _ in status] for name in ("embeddings", "phashes", "sharpness", "thumbnails")}
        try:
            embedded, sharp = [], []
            with ieee_fp32(self.device):  # ArcFace in float32 as its official code runs it
                for start in range(0, len(faces), self.batch_size):
                    x = as_tensor(faces[start : start + self.batch_size], self.device)
                    embedded += face_metrics.identity_embeddings(self.arcface, x).float().cpu().numpy().tolist()
                    sharp += metrics.sharpness(x).tolist()
            for (i, _), face, vector, s in zip(todo, faces, embedded, sharp):
                out["embeddings"][i].append(vector)
                out["phashes"][i].append(grouping.phash(face))
                out["sharpness"][i].append(s)
                out["thumbnails"][i].append(thumbnail(face))
        except Exception as exc:  # e.g. out of device memory: these images fail, the job goes on
            for i in {i for i, _ in todo}:
                status[i], error[i] = MEASURE_ERROR, short_error(exc)
                for column in out.values():
                    column[i] = []
        return table(batch, drop=("crops", "pixels"), status=status, error=error, **out)


def face_rows(batch: Batch) -> list[dict]:
    rows = []
    for i, image_id in enumerate(str(x) for x in batch["image_id"]):
        landmarks = clean(batch["landmarks"][i]) if "landmarks" in batch else None
        score = clean(batch["det_score"][i]) if "det_score" in batch else None
        for k, vector in enumerate(batch["embeddings"][i]):
            rows.append(
                {
                    "face_id": face_id(int(batch["shard"][i]), int(batch["position"][i]), k),
                    "image_id": image_id,
                    "face_index": k,
                    "source_uri": str(batch["source_uri"][i]),
                    "landmarks": landmarks[k] if landmarks else None,
                    "content_sha256": str(batch["content_sha256"][i]),
                    "phash": int(batch["phashes"][i][k]),
                    "embedding": np.asarray(vector, np.float32),
                    "face_size": align.crop_side(np.asarray(clean(batch["affine"][i][k]))),
                    "det_score": score[k] if score else None,
                    "sharpness": clean(batch["sharpness"][i][k]),
                    "thumbnail": {"bytes": batch["thumbnails"][i][k], "path": f"{image_id}_{k}_thumb.jpg"},
                }
            )
    return rows


def write_dedup(batch: Batch, output: str, run: dict) -> Batch:
    """This batch's images/ and embedded/ rows, staged for the commit of their shards."""
    return ledger.stage(batch, output, "embedded", functools.partial(dedup_tables, run=run))


def dedup_tables(batch: Batch, run: dict) -> tuple[ledger.Tables, ledger.Files]:
    faces = face_rows(batch)
    images = ledger.images_table(
        batch, schemas.dedup_images.SCHEMA,
        content_sha256=[clean(s) for s in batch["content_sha256"]],
        num_faces=[len(e) for e in batch["embeddings"]],
        code_version=[run["code_version"]] * len(batch["image_id"]),
    )
    return {"images": images, "embedded": pa.Table.from_pylist(faces, schema=schemas.dedup_embedded.SCHEMA)}, {}
