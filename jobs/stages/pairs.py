"""The pairs job's own stages: LQ images by the degradation model, WebDataset shards, its writer."""

from __future__ import annotations

import functools
import io as stdio
import json
import tarfile

import numpy as np
import pyarrow as pa
import torch

import schemas.pair_images
import schemas.pairs
from codeformer_core import codec, degrade
from codeformer_core.degrade import DegradeConfig
from codeformer_core.statuses import DEGRADE_ERROR, OK
from jobs import ledger
from jobs.stages.batches import Batch, clean, file_stem, frame_of, short_error, statuses

LQ_TYPES = {"hq_png": pa.list_(pa.binary()), "lq_png": pa.list_(pa.binary()), "pair_rows": pa.list_(pa.string())}


class MakePairs:
    """Samples each pair's parameters from (seed, image id, face, pair) and degrades in batches."""

    def __init__(self, config: DegradeConfig, seed: int, pairs_per_face: int, batch_size: int, device: str) -> None:
        torch.set_num_threads(1)  # the same arithmetic on every worker, whatever its share of the cores
        self.config = config
        self.seed = seed
        self.pairs_per_face = pairs_per_face
        self.batch_size = batch_size
        self.device = torch.device(device)

    def __call__(self, batch: Batch) -> pa.Table:
        status, error = statuses(batch)
        todo = []  # (row, face, pair, pair seed, params)
        for i, faces in enumerate(batch["crops"]):
            stem = file_stem(str(batch["image_id"][i]), frame_of(batch, i)[0])  # a video's frames each get their own parameters
            for k in range(len(faces)):
                for p in range(self.pairs_per_face):
                    s = degrade.pair_seed(self.seed, stem, k, p)
                    todo.append((i, k, p, s, degrade.sample_params(np.random.default_rng(s), self.config)))
        lq: dict[tuple[int, int, int], bytes] = {}
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            try:
                images = degrade.degrade(
                    [batch["crops"][i][k] for i, k, *_ in chunk], [t[4] for t in chunk], self.device
                )
                lq.update({(i, k, p): codec.encode(image) for (i, k, p, *_), image in zip(chunk, images)})
            except Exception as exc:  # e.g. out of device memory: these images fail, the job goes on
                for i, *_ in chunk:
                    status[i], error[i] = DEGRADE_ERROR, short_error(exc)
        hq_png, lq_png, rows = [], [], []
        for i, faces in enumerate(batch["crops"]):
            ok = status[i] == OK
            hq_png.append([codec.encode(f) for f in faces] if ok else [])
            mine = [t for t in todo if t[0] == i] if ok else []
            lq_png.append([lq[(i, k, p)] for i, k, p, *_ in mine])
            rows.append([json.dumps({"face_index": k, "pair_index": p, "pair_seed": s, **params.to_row()}) for _, k, p, s, params in mine])
        rest = {k: v for k, v in batch.items() if k not in ("crops", "pixels")}
        columns = {**{k: [clean(x) for x in v] for k, v in rest.items()}, "status": status, "error": error}
        columns |= {"hq_png": hq_png, "lq_png": lq_png, "pair_rows": rows}
        return pa.table({k: pa.array(v, type=LQ_TYPES.get(k)) for k, v in columns.items()})


def pair_rows(batch: Batch, run: dict) -> list[dict]:
    out = []
    for i, image_id in enumerate(str(x) for x in batch["image_id"]):
        hq = list(batch["hq_png"][i])
        frame, timestamp = frame_of(batch, i)
        for lq, text in zip(batch["lq_png"][i], batch["pair_rows"][i]):
            row = json.loads(text)
            key = f"{file_stem(image_id, frame)}_{row['face_index']}_{row['pair_index']}"
            out.append(
                {
                    **row,
                    "key": key,
                    "image_id": image_id,
                    "source_uri": str(batch["source_uri"][i]),
                    "hq": {"bytes": hq[row["face_index"]], "path": f"{key}.hq.png"},
                    "lq": {"bytes": lq, "path": f"{key}.lq.png"},
                    "seed": run["seed"],
                    "preset": run["preset"]["name"],
                    "code_version": run["code_version"],
                    "frame_index": frame,
                    "timestamp": timestamp,
                }
            )
    return out


def shard(rows: list[dict]) -> bytes:
    """A webdataset tar: {key}.hq.png, {key}.lq.png and {key}.json (every other column) per pair."""
    buffer = stdio.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for row in sorted(rows, key=lambda r: r["key"]):
            meta = {k: v for k, v in row.items() if k not in ("hq", "lq") and not (k in ("frame_index", "timestamp") and v is None)}  # an image's as before videos
            for name, data in (("hq.png", row["hq"]["bytes"]), ("lq.png", row["lq"]["bytes"]), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{row['key']}.{name}")
                info.size = len(data)
                tar.addfile(info, stdio.BytesIO(data))
    return buffer.getvalue()


def write_pairs(batch: Batch, output: str, run: dict) -> Batch:
    """This batch's images/ and pairs/ rows (and webdataset samples), staged for the commit of their shards."""
    return ledger.stage(batch, output, "pairs", functools.partial(pair_tables, run=run))


def pair_tables(batch: Batch, run: dict) -> tuple[ledger.Tables, ledger.Files]:
    n = len(batch["image_id"])
    rows = pair_rows(batch, run)
    images = ledger.images_table(
        batch, schemas.pair_images.SCHEMA,
        num_faces=[len(h) for h in batch["hq_png"]],
        num_pairs=[len(r) for r in batch["pair_rows"]],
        preset=[run["preset"]["name"]] * n,
        seed=[run["seed"]] * n,
        code_version=[run["code_version"]] * n,
    )
    tables = {"images": images, "pairs": pa.Table.from_pylist(rows, schema=schemas.pairs.SCHEMA)}
    return tables, ({"shards": shard(rows)} if run["format"] == "webdataset" and rows else {})
