"""The pairs job end to end on a moto S3 server: schema, shards, and byte-identical reruns."""

import io
import json
import os
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

import schemas
import schemas.pair_images
import schemas.pairs
from codeformer_core import codec, degrade, storage
from codeformer_core.degrade import PRESETS, DegradeParams
from codeformer_core.samples import synthetic_face
from tests.helpers import decode_png, matches
from tests.jobs.conftest import job_env, run_job, s3_client

FACES = 6
PAIRS = 2


@pytest.fixture(scope="module")
def runs(s3_env, tmp_path_factory):
    """One run on S3 (1 worker, batch 8, webdataset), one local (2 workers, batch 1, shards of 3), and a rerun of the first."""
    client = s3_client(s3_env)
    client.create_bucket(Bucket="pairs")
    for i in range(FACES):
        ok, data = cv2.imencode(".png", cv2.cvtColor(synthetic_face(i, degrade=False), cv2.COLOR_RGB2BGR))
        client.put_object(Bucket="pairs", Key=f"in/face_{i}.png", Body=data.tobytes())
    client.put_object(Bucket="pairs", Key="in/broken.jpg", Body=b"not a jpeg")
    tmp = tmp_path_factory.mktemp("pairs")
    env = job_env(tmp, s3_env)
    common = ["--input", "s3://pairs/in", "--aligned", "--seed", "42", "--pairs-per-image", str(PAIRS), "--preset", "gfpgan-v1"]
    results, logs = {}, {}
    for name, output, extra in (
        ("s3", "s3://pairs/out", ["--workers", "1", "--batch-size", "8", "--format", "webdataset"]),
        ("local", str(tmp / "local"), ["--workers", "2", "--batch-size", "1", "--shard-size", "3"]),
        ("again", str(tmp / "again"), ["--workers", "1", "--batch-size", "8"]),
    ):
        result = run_job("jobs.pairs", [*common, "--output", output, *extra], env)
        assert result.returncode == 0, result.stderr[-3000:]
        results[name], logs[name] = output, result.stderr
    return {"outputs": results, "logs": logs, "env": s3_env}


def load(output: str, table: str, env: dict):
    os.environ.update(env)  # the moto server's address and keys, as the restore job tests do
    filesystem, path = storage.filesystem_and_path(f"{output}/{table}")
    return pq.read_table(path, filesystem=filesystem).to_pandas()


def test_every_input_has_a_row_and_every_face_its_pairs(runs):
    images = load(runs["outputs"]["s3"], "images", runs["env"]).set_index("source_uri")
    assert images.status.to_dict() == {**{f"s3://pairs/in/face_{i}.png": "ok" for i in range(FACES)}, "s3://pairs/in/broken.jpg": "decode_error"}
    assert images.num_pairs.sum() == FACES * PAIRS
    pairs = load(runs["outputs"]["s3"], "pairs", runs["env"])
    assert len(pairs) == FACES * PAIRS and pairs.key.is_unique
    assert sorted(pairs.pair_index.unique()) == list(range(PAIRS)) and (pairs.face_index == 0).all()
    assert (pairs.preset == "gfpgan-v1").all() and (pairs.seed == 42).all()
    low, high = PRESETS["gfpgan-v1"].scale
    assert pairs.scale.between(low, high).all()


def test_tables_match_their_schemas(runs):
    os.environ.update(runs["env"])
    filesystem, _ = storage.filesystem_and_path("s3://pairs/out")
    for table, schema in (("images", schemas.pair_images.SCHEMA), ("pairs", schemas.pairs.SCHEMA)):
        uris = storage.list_files(f"s3://pairs/out/{table}", suffix=".parquet")
        assert uris
        for uri in uris:
            assert matches(pq.read_schema(uri.removeprefix("s3://"), filesystem=filesystem), schema), uri


def test_pairs_are_identical_on_other_worker_counts_batch_sizes_shards_and_reruns(runs):
    assert "7 inputs in 3 shards" in runs["logs"]["local"] and "7 inputs in 1 shards" in runs["logs"]["s3"]
    local = Path(runs["outputs"]["local"])
    assert sorted(p.name for p in (local / "images").iterdir()) == [f"shard-0000000{k}-000.parquet" for k in range(3)]
    tables = {name: load(out, "pairs", runs["env"]).sort_values("key").reset_index(drop=True) for name, out in runs["outputs"].items()}
    reference = tables["s3"]
    for name in ("local", "again"):
        other = tables[name]
        assert other.key.tolist() == reference.key.tolist(), name
        assert [r["bytes"] for r in other.lq] == [r["bytes"] for r in reference.lq], name
        assert [r["bytes"] for r in other.hq] == [r["bytes"] for r in reference.hq], name
        for column in ("sigma_x", "sigma_y", "theta", "scale", "noise_sigma", "jpeg_quality", "noise_seed", "pair_seed"):
            assert other[column].tolist() == reference[column].tolist(), (name, column)


def test_a_row_alone_rebuilds_its_lq_image(runs):
    pairs = load(runs["outputs"]["s3"], "pairs", runs["env"])
    for row in pairs.head(4).to_dict("records"):
        hq = decode_png(row["hq"]["bytes"])
        rebuilt = degrade.apply(hq, DegradeParams.from_row(row))
        assert codec.encode(rebuilt) == row["lq"]["bytes"]
        again = degrade.sample_params(np.random.default_rng(row["pair_seed"]), PRESETS[row["preset"]])
        assert again == DegradeParams.from_row(row)


def test_webdataset_shards_open_with_tarfile_and_match_the_rows(runs):
    os.environ.update(runs["env"])
    pairs = load(runs["outputs"]["s3"], "pairs", runs["env"]).set_index("key")
    seen = set()
    for uri in storage.list_files("s3://pairs/out/shards", suffix=".tar"):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(uri))) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = {name.split(".", 1)[0] for name in members}
        for key in keys:
            row = pairs.loc[key]
            assert members[f"{key}.hq.png"] == row.hq["bytes"] and members[f"{key}.lq.png"] == row.lq["bytes"]
            meta = json.loads(members[f"{key}.json"])
            assert meta["jpeg_quality"] == row.jpeg_quality and meta["pair_seed"] == row.pair_seed
        seen |= keys
    assert seen == set(pairs.index)


def test_usage_errors_stop_before_work(tmp_path):
    env = job_env(tmp_path)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), synthetic_face(0))
    for args, message in (
        (["--sigma", "1", "2"], "need --preset custom"),
        (["--preset", "custom"], "needs --config"),
        (["--preset", "custom", "--jpeg", "90", "30"], "jpeg range"),
    ):
        result = run_job("jobs.pairs", ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--aligned", *args], env)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
