"""The jobs write the same rows and the same image bytes as the commit before the shards change.

tests/data/outputs_before_shards.json was recorded first on that commit (dd28402, the one-pipeline
code) by running this module there with RECORD_OUTPUTS=1. OpenCV's warps and resizes, and torch's
CPU kernels, differ in the last bits between releases and CPUs, and the synthetic networks turn
those bits into other numbers and pixels; so the record names the machine it was made on, and is
made again, on the commit before the change it guards, when the pinned libraries change. It was
last made on c5d94d4 (an Intel Xeon with AVX-512, torch 2.14.1, opencv-python 5.1.0.95), with a
PNG's digest taken of its pixels, so that the PNG compression level may change. On the machine of
the record every table's rows are compared: strings, integers and image digests exactly, floats
to 1e-6 (the metrics are sums in torch, whose order may follow the thread count). On another
machine, the rows, their keys, strings and integers only. Inputs live on moto S3 under fixed URIs,
so image ids and paths are the same in every run.

Intended differences: none in rows or bytes; only the file names (shard files, not parts) and
how WebDataset samples are grouped into tars, which this comparison does not see. Since the record,
the no-reference metrics of the jobs' float32 faces are computed in float32 where that keeps the
four digits the report prints (codeformer_core/metrics.py), so on the record's machine they are
compared to 1e-5 relative, a tenth of a unit of that fourth digit or less.
"""

import hashlib
import json
import math
import os
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import schemas
from codeformer_core.metrics import NO_REFERENCE
from codeformer_core.align import FFHQ_TEMPLATE_512, transform_points
from codeformer_core.samples import synthetic_face
from tests.jobs.conftest import job_env, run_job, s3_client

BUCKET = "unchanged"
RECORD = Path(__file__).resolve().parents[1] / "data" / "outputs_before_shards.json"
TABLES = ("images", "faces", "pasted", "pairs")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRICS = {*NO_REFERENCE, *(f"restored_{name}" for name in NO_REFERENCE)}
# Columns added since the record, by design; their own tests are where they were added.
ADDED_SINCE = {
    "images": ("is_gray", "kept", *(f.name for f in schemas.VIDEO_ROW)),
    "faces": ("image_format", *(f.name for f in schemas.FACE_FRAME_FIELDS)),
    "pasted": ("image_format", *(f.name for f in schemas.FRAME_FIELDS)),
    "pairs": tuple(f.name for f in schemas.FRAME_FIELDS),
}


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def placed(canvas: np.ndarray, seed: int, angle: float, scale: float, center: tuple[int, int]) -> list[float]:
    m = cv2.getRotationMatrix2D((256, 256), angle, scale)
    m[:, 2] += np.array(center) - 256
    h, w = canvas.shape[:2]
    face = synthetic_face(seed, degrade=False)
    mask = cv2.warpAffine(np.ones((512, 512), np.uint8), m, (w, h)).astype(bool)
    canvas[mask] = cv2.warpAffine(face, m, (w, h), flags=cv2.INTER_LINEAR)[mask]
    return transform_points(m, FFHQ_TEMPLATE_512).reshape(-1).tolist()


def put_inputs(client) -> None:
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="aligned/a.png", Body=png(synthetic_face(0, 128)))
    client.put_object(Bucket=BUCKET, Key="aligned/b.jpg", Body=cv2.imencode(".jpg", synthetic_face(1, 96))[1].tobytes())
    client.put_object(Bucket=BUCKET, Key="aligned/broken.png", Body=b"not a png")
    scene = np.full((300, 400, 3), 120, np.uint8)
    landmarks = placed(scene, 2, 8, 0.4, (150, 160))
    client.put_object(Bucket=BUCKET, Key="whole/scene.png", Body=png(scene))
    client.put_object(Bucket=BUCKET, Key="whole/plain.png", Body=png(np.full((160, 200, 3), 70, np.uint8)))
    manifest = "uri,landmarks\n" + f'scene.png,"{json.dumps([landmarks])}"\n' + "plain.png,\n"
    client.put_object(Bucket=BUCKET, Key="whole/manifest.csv", Body=manifest.encode())
    client.put_object(Bucket=BUCKET, Key="whole/landmarked.csv", Body=("uri,landmarks\n" + f'scene.png,"{json.dumps([landmarks])}"\n').encode())


ALIGNED, WHOLE, LANDMARKED = f"s3://{BUCKET}/aligned", f"s3://{BUCKET}/whole/manifest.csv", f"s3://{BUCKET}/whole/landmarked.csv"
RUNS = {
    "restore_aligned": ("jobs.restore", ["--input", ALIGNED, "--aligned", "--synthetic-weights", "--batch-size", "2", "--precision", "fp32"]),
    "restore_paste": ("jobs.restore", ["--input", LANDMARKED, "--synthetic-weights", "--batch-size", "1", "--precision", "fp32", "--paste"]),
    "pairs_parquet": ("jobs.pairs", ["--input", ALIGNED, "--aligned", "--seed", "3", "--pairs-per-image", "2", "--batch-size", "2"]),
    "pairs_webdataset": ("jobs.pairs", ["--input", WHOLE, "--synthetic-weights", "--det-threshold", "0.5", "--max-faces", "2", "--seed", "5", "--format", "webdataset"]),
    "audit": ("jobs.audit", ["--input", WHOLE, "--synthetic-weights", "--det-threshold", "0.5", "--max-faces", "2", "--batch-size", "2"]),
    "audit_restore": ("jobs.audit", ["--input", ALIGNED, "--aligned", "--restore", "--synthetic-weights", "--precision", "fp32", "--batch-size", "2", "--metrics", "sharpness,niqe"]),
}


def digest(data: bytes) -> str:
    """sha256 of a PNG's pixels (its compression level is not its content), of other bytes as they are."""
    if data.startswith(PNG_SIGNATURE):
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        return "pixels:" + hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()
    return hashlib.sha256(data).hexdigest()


def plain(value: object) -> object:
    """A cell as JSON: image structs and bytes by their digest, lists and dicts item by item."""
    if isinstance(value, dict) and set(value) == {"bytes", "path"}:
        return {"sha256": digest(value["bytes"]) if value["bytes"] is not None else None, "path": value["path"]}
    if isinstance(value, bytes):
        return {"sha256": digest(value)}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def row_key(row: dict) -> tuple:
    return tuple(str(row.get(k)) for k in ("source_uri", "image_id", "face_index", "pair_index"))


def read_output(root: Path) -> dict:
    """Every table's rows in a fixed order, the kept manifest, and each webdataset member's digest."""
    out: dict = {}
    for table in TABLES:
        files = sorted((root / table).glob("*.parquet"))
        if files:
            tables = [pq.read_table(f) for f in files]
            rows = [r for t in tables for r in t.drop_columns([c for c in ADDED_SINCE.get(table, ()) if c in t.column_names]).to_pylist()]
            out[table] = sorted((plain(r) for r in rows), key=row_key)
    if (root / "kept.parquet").exists():
        out["kept"] = sorted((plain(r) for r in pq.read_table(root / "kept.parquet").to_pylist()), key=row_key)
    members = {}
    for shard in sorted((root / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members |= {m.name: digest(tar.extractfile(m).read()) for m in tar.getmembers()}
    if members:
        out["shards"] = dict(sorted(members.items()))
    return out


def download(client, prefix: str, dest: Path) -> None:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    for obj in (o for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")):
        target = dest / obj["Key"].removeprefix(prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())


@pytest.fixture(scope="module")
def outputs(s3_env, tmp_path_factory):
    client = s3_client(s3_env)
    put_inputs(client)
    tmp = tmp_path_factory.mktemp("unchanged")
    env = job_env(tmp, s3_env)
    found = {}
    for name, (module, args) in RUNS.items():
        result = run_job(module, [*args, "--output", f"s3://{BUCKET}/out/{name}"], env)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        download(client, f"out/{name}/", tmp / name)
        found[name] = read_output(tmp / name)
    if os.environ.get("RECORD_OUTPUTS"):
        RECORD.write_text(json.dumps({**found, "machine": machine()}, indent=1, sort_keys=True) + "\n")
    return found


def machine() -> str:
    """The CPU and the kernels torch picks on it: what the last bits of the networks' outputs follow."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "unknown")
    return f"{model}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def same(found: object, expected: object, where: str, exact: bool) -> None:
    """`exact`: on the machine of the record, floats to 1e-6 (metrics 1e-5) and every digest; elsewhere (synthetic networks
    turn another CPU's last bits into different numbers and pixels) the rows, keys, strings and integers only."""
    if isinstance(expected, float) or isinstance(found, float):
        assert isinstance(found, (int, float)), f"{where}: {found!r} is not a number"
        tolerance = 1e-5 if where.rsplit(".", 1)[-1] in METRICS else 1e-6
        assert not exact or math.isclose(found, expected, rel_tol=tolerance, abs_tol=1e-9), f"{where}: {found} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(found, dict) and sorted(found) == sorted(expected), f"{where}: keys {sorted(found)} != {sorted(expected)}"
        for k in expected:
            if exact or not (k == "sha256" or where.endswith(".shards")):
                same(found[k], expected[k], f"{where}.{k}", exact)
    elif isinstance(expected, list):
        assert isinstance(found, list) and len(found) == len(expected), f"{where}: {len(found)} items, expected {len(expected)}"
        for i, (a, b) in enumerate(zip(found, expected)):
            same(a, b, f"{where}[{i}]", exact)
    else:
        assert found == expected, f"{where}: {found!r} != {expected!r}"


@pytest.mark.parametrize("run", list(RUNS))
def test_rows_and_image_bytes_are_those_recorded_before_the_change(outputs, run):
    record = json.loads(RECORD.read_text())
    expected = record[run]
    assert expected, f"nothing was recorded for {run}"
    same(outputs[run], expected, run, exact=record["machine"] == machine())
