"""The dedup job end to end on a moto S3 server: planted exact copies, re-encoded, resized and cropped
copies among distinct faces, from a kept.parquet-style manifest; a byte-identical rerun; the report
in headless Chromium."""

import hashlib
import os
import re

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas.dedup_faces
import schemas.dedup_images
from codeformer_core import storage
from tests import browser
from tests.helpers import matches, varied_face
from tests.jobs.conftest import job_env, run_job, s3_client
from tests.jobs.test_audit_job import load, placed, png

BUCKET = "dedup"
# name -> the photo it copies (itself when distinct)
PLANTED = {
    "a.png": "a.png", "a-copy.png": "a.png",
    "b.png": "b.png", "b-q70.jpg": "b.png",
    "c.png": "c.png", "c-small.png": "c.png",
    "d.png": "d.png", "d-crop.png": "d.png",
    "e.png": "e.png", "f.png": "f.png", "g.png": "g.png",
}


def jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def dedup(s3_env, tmp_path_factory):
    client = s3_client(s3_env)
    client.create_bucket(Bucket=BUCKET)
    tmp = tmp_path_factory.mktemp("dedup")
    uris, landmarks = [], []

    def add(name: str, data: bytes, points: list | None) -> None:
        client.put_object(Bucket=BUCKET, Key=f"in/{name}", Body=data)
        uris.append(f"s3://{BUCKET}/in/{name}")
        landmarks.append(points)

    photos = {}
    for seed, name in enumerate("abcdefg"):
        canvas = np.full((480, 480, 3), 40 + 25 * seed, np.uint8)
        photos[name] = (canvas, [placed(canvas, varied_face(seed), 0, 0.6, (240, 240))])
        add(f"{name}.png", png(canvas), photos[name][1])
    a = png(photos["a"][0])
    add("a-copy.png", a, photos["a"][1])
    add("b-q70.jpg", jpeg(photos["b"][0], 70), photos["b"][1])
    small = cv2.resize(photos["c"][0], (384, 384), interpolation=cv2.INTER_AREA)
    add("c-small.png", png(small), [(np.asarray(photos["c"][1][0]) * 0.8).tolist()])
    cut = 12  # 5% of 480, from the top left
    add("d-crop.png", png(photos["d"][0][cut:, cut:]), [(np.asarray(photos["d"][1][0]) - cut).tolist()])
    add("broken.png", b"not a png", None)
    manifest = pa.table({"source_uri": uris, "landmarks": landmarks}, schema=pa.schema([("source_uri", pa.string()), ("landmarks", pa.list_(pa.list_(pa.float64())))]))
    sink = pa.BufferOutputStream()
    pq.write_table(manifest, sink)
    client.put_object(Bucket=BUCKET, Key="kept.parquet", Body=sink.getvalue().to_pybytes())
    out = f"s3://{BUCKET}/out"
    env = job_env(tmp, s3_env)
    args = ["--input", f"s3://{BUCKET}/kept.parquet", "--output", out, "--synthetic-weights", "--shard-size", "5", "--partition-size", "4"]
    first = run_job("jobs.dedup", args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    return {"out": out, "env": s3_env, "job_env": env, "args": args, "tmp": tmp, "stdout": first.stdout, "client": client}


def test_planted_duplicates_are_grouped_and_one_of_each_is_kept(dedup):
    faces = load(f"{dedup['out']}/faces", dedup["env"])
    faces["name"] = faces.source_uri.str.rsplit("/", n=1).str[1]
    assert sorted(faces.name) == sorted(PLANTED)
    faces["photo"] = faces.name.map(PLANTED)
    # the planted groups, exactly: every copy with its photo, no distinct photos together
    assert faces.groupby("dup_group").photo.nunique().max() == 1
    assert faces.groupby("photo").dup_group.nunique().max() == 1
    assert (faces.dup_group_size == faces.photo.map(faces.photo.value_counts())).all()
    assert faces.groupby("dup_group").keep.sum().eq(1).all()
    assert (faces[~faces.keep].dropped_by.map(list) == pd_list(["duplicate"], (~faces.keep).sum())).all()
    # the exact copy is the same bytes; the others only hash alike
    sha = faces.set_index("name").content_sha256
    assert sha["a.png"] == sha["a-copy.png"] and sha["b.png"] != sha["b-q70.jpg"]
    assert faces.embedding.map(len).eq(512).all()
    assert np.allclose([np.linalg.norm(e) for e in faces.embedding], 1.0, atol=1e-5)
    images = load(f"{dedup['out']}/images", dedup["env"])
    assert len(images) == len(PLANTED) + 1
    assert images.set_index(images.source_uri.str.rsplit("/", n=1).str[1]).status["broken.png"] == "decode_error"


def pd_list(value: list, n: int) -> list:
    return [value] * n


def test_kept_manifest_lists_the_kept_faces_with_their_landmarks(dedup):
    faces = load(f"{dedup['out']}/faces", dedup["env"])
    kept = load(f"{dedup['out']}/kept.parquet", dedup["env"])
    assert sorted(kept.source_uri) == sorted(faces[faces.keep].source_uri)
    by_uri = faces.set_index("source_uri").landmarks
    for uri, landmarks in zip(kept.source_uri, kept.landmarks):
        assert np.allclose(np.concatenate(landmarks), by_uri[uri], atol=1e-3)


def test_tables_match_their_schemas(dedup):
    os.environ.update(dedup["env"])
    filesystem, _ = storage.filesystem_and_path(dedup["out"])
    for table, schema in (("images", schemas.dedup_images.SCHEMA), ("faces", schemas.dedup_faces.SCHEMA)):
        uris = storage.list_files(f"{dedup['out']}/{table}", suffix=".parquet")
        assert uris
        for uri in uris:
            assert matches(pq.read_schema(uri.removeprefix("s3://"), filesystem=filesystem), schema), uri


def digests(client) -> dict[str, str]:
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="out/") for o in page.get("Contents", [])]
    return {k: hashlib.sha256(client.get_object(Bucket=BUCKET, Key=k)["Body"].read()).hexdigest() for k in keys if not k.endswith(("_lock.json", "/"))}


def test_rerun_is_byte_identical_and_grouping_again_gives_the_same_bytes(dedup):
    before = digests(dedup["client"])
    again = run_job("jobs.dedup", dedup["args"], dedup["job_env"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing new to group" in again.stdout
    assert digests(dedup["client"]) == before
    # without the grouping's done.json (as after a crash while grouping) the same embeddings are grouped again, to the same bytes
    dedup["client"].delete_object(Bucket=BUCKET, Key="out/_dedup/done.json")
    regrouped = run_job("jobs.dedup", dedup["args"], dedup["job_env"])
    assert regrouped.returncode == 0 and "0 to process" in regrouped.stderr and "grouping 11 faces" in regrouped.stderr, regrouped.stderr[-3000:]
    assert digests(dedup["client"]) == before


def test_report_shows_the_duplicate_groups_in_headless_chromium(dedup, tmp_path):
    os.environ.update(dedup["env"])
    report = tmp_path / "report.html"
    report.write_bytes(storage.read_bytes(f"{dedup['out']}/report.html"))
    if browser.find_chromium() is None:
        pytest.skip("no headless Chromium: tests/setup-chromium.sh could not install Debian's chromium here")
    shot = tmp_path / "report.png"
    browser.screenshot(report, shot, width=1280, height=1800)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[1] == 1280 and image.std() > 10
    dom = browser.dump_dom(report)
    groups = re.findall(r'<div class="group" data-kind="duplicate group"><h4>duplicate group \d+: (\d+) faces', dom)
    assert sorted(map(int, groups)) == [2, 2, 2, 2]
    assert dom.count("data:image/jpeg;base64,") >= 8


def test_bad_flags_are_one_line(tmp_path):
    result = run_job("jobs.dedup", ["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--dup-cosine", "2"], job_env(tmp_path))
    assert result.returncode == 2 and "a cosine is between -1 and 1" in result.stderr and "Traceback" not in result.stderr
