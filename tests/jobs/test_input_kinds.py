"""Every kind of input through the audit and restore jobs, from moto S3 and a local HTTP server:
Parquet files of inline bytes and of {bytes, path} structs, a WebDataset tar, this project's own
faces/ output, and http URLs (200, 404, 429 then 200, too slow, opted out); the audit is killed
with SIGKILL mid-run, and its rerun is exact for all of them. A gs:// prefix on an emulator."""

import json
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codeformer_core import storage
from tests.helpers import ImageServer, encoded, webdataset_tar
from tests.jobs.conftest import ROOT, free_port, job_env, run_job, s3_client
from tests.jobs.test_restore_job import kill_leftovers
from tests.jobs.test_video_job import read

BUCKET = "kinds"
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
FAST = ["--aligned", "--synthetic-weights", "--batch-size", "2", "--read-attempts", "2", "--http-timeout", "1"]
AUDIT = [*FAST, "--metrics", "sharpness"]
HTTP = {"ok.png": ("ok", None), "gone.png": ("http_404", None), "busy.png": ("ok", None), "slow.png": ("http_timeout", None), "noai.png": ("optout", None)}


@pytest.fixture(scope="module")
def server():
    with ImageServer(encoded(9, ".png", 128), slow=3.0) as running:
        yield running


@pytest.fixture(scope="module")
def corpus(s3_env, server, tmp_path_factory):
    """src/ on S3 (two Parquet files and a tar), audited once into first/; then a manifest naming
    them, first/'s faces/ file and the server's URLs. Returns the manifest's URI and what each of
    its inputs must give: source_uri -> (status, kept)."""
    client = s3_client(s3_env)
    client.create_bucket(Bucket=BUCKET)
    tmp = tmp_path_factory.mktemp("kinds")
    pq.write_table(pa.table({"caption": ["a face", "no bytes"], "jpg": pa.array([encoded(1, ".jpg", 128), None], pa.binary())}), tmp / "a.parquet")
    pq.write_table(pa.table({"image": pa.array([{"bytes": encoded(2, ".png", 128), "path": "face2.png"}], IMAGE), "licence": ["cc-by"]}), tmp / "b.parquet")
    webdataset_tar(tmp / "c.tar", [("s0", {"jpg": encoded(3, ".jpg", 128), "json": b'{"url": "http://e/3", "licence": "cc0"}'}), ("s1", {"json": b"{}"})])
    for name in ("a.parquet", "b.parquet", "c.tar"):
        client.upload_file(str(tmp / name), BUCKET, f"src/{name}")
    env = job_env(tmp, s3_env)
    first = run_job("jobs.audit", ["--input", f"s3://{BUCKET}/src", "--output", f"s3://{BUCKET}/first", *AUDIT, "--keep-columns", "caption,licence"], env)
    assert first.returncode == 0, first.stderr[-3000:]
    faces = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="first/faces/")["Contents"]]
    assert len(faces) == 1
    src = f"s3://{BUCKET}/src"
    given = [f"{src}/a.parquet", f"{src}/b.parquet", f"{src}/c.tar", f"s3://{BUCKET}/{faces[0]}", *(f"{server.url}/{p}" for p in HTTP)]
    client.put_object(Bucket=BUCKET, Key="list.csv", Body=("uri\n" + "\n".join(given) + "\n").encode())
    # For the restore job, whose every face costs a CodeFormer forward: one row of faces/, named as a kept.parquet names it.
    client.put_object(Bucket=BUCKET, Key="one-face.csv", Body=("uri\n" + "\n".join([*given[:3], f"{given[3]}#0", *given[4:]]) + "\n").encode())
    expected = {
        f"{src}/a.parquet#0": ("ok", {"caption": "a face"}),
        f"{src}/a.parquet#1": ("read_error", {"caption": "no bytes"}),
        f"{src}/b.parquet#0": ("ok", {"licence": "cc-by"}),
        f"{src}/c.tar#s0": ("ok", {"licence": "cc0"}),
        **{f"s3://{BUCKET}/{faces[0]}#{i}": ("ok", None) for i in range(3)},
        **{f"{server.url}/{p}": want for p, want in HTTP.items()},
    }
    first_images = read(f"s3://{BUCKET}/first/images", s3_env)
    return {"manifest": f"s3://{BUCKET}/list.csv", "one_face": f"s3://{BUCKET}/one-face.csv", "expected": expected, "env": env, "s3_env": s3_env, "first": first_images, "tmp": tmp}


def rows(uri, s3_env):
    images = read(f"{uri}/images", s3_env) if uri.startswith("s3://") else read(f"{uri}/images")
    return {r.source_uri: (r.status, json.loads(r.kept) if isinstance(r.kept, str) else None) for r in images.itertuples()}, images


def test_a_prefix_of_parquet_files_and_a_tar_is_read_as_the_images_inside_them(corpus):
    """The first audit, of src/: each Parquet row and tar sample is an input, its columns kept."""
    first = {r.source_uri: (r.status, r.kept) for r in corpus["first"].itertuples()}
    src = f"s3://{BUCKET}/src"
    assert first == {f"{src}/a.parquet#0": ("ok", '{"caption": "a face"}'), f"{src}/a.parquet#1": ("read_error", '{"caption": "no bytes"}'),
                     f"{src}/b.parquet#0": ("ok", '{"licence": "cc-by"}'), f"{src}/c.tar#s0": ("ok", '{"licence": "cc0"}')}


def test_every_kind_of_input_gives_its_row_in_the_restore_job(corpus):
    out = f"s3://{BUCKET}/restore"
    args = ["--input", corpus["one_face"], "--output", out, *FAST, "--no-identity", "--metrics", "none", "--keep-columns", "caption,licence"]
    done = run_job("jobs.restore", args, corpus["env"])
    assert done.returncode == 0, done.stderr[-3000:]
    found, images = rows(out, corpus["s3_env"])
    face = next(u for u in corpus["expected"] if u.endswith("#0") and "/first/faces/" in u)
    assert found == {u: want for u, want in corpus["expected"].items() if "/first/faces/" not in u or u == face}
    assert_faces_and_errors(images, read(f"{out}/faces", corpus["s3_env"]))


def assert_faces_and_errors(images, faces):
    assert images.image_id.is_unique and sorted(faces.image_id) == sorted(images[images.status == "ok"].image_id)
    assert "X-Robots-Tag noai" in images[images.status == "optout"].error.iloc[0] and "HTTP 404" in images[images.status == "http_404"].error.iloc[0]
    assert "timed out" in images[images.status == "http_timeout"].error.iloc[0]


def test_the_audit_killed_with_sigkill_reruns_to_exactly_one_row_per_input_of_every_kind(corpus, tmp_path):
    """Every row's source_uri, status and kept columns after the rerun are those each kind must give."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "jobs.audit", "--input", corpus["manifest"], "--output", str(out), *AUDIT, "--shard-size", "2",
            "--keep-columns", "caption,licence"]
    log = tmp_path / "killed.log"
    with open(log, "w") as sink:
        driver = subprocess.Popen(args, cwd=ROOT, env=corpus["env"], stdout=sink, stderr=sink, start_new_session=True)
    deadline = time.monotonic() + 600
    while len(list((out / "_shards").glob("*.json"))) < 2:
        assert driver.poll() is None, f"the job ended before it was killed:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no two shards were committed in time"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    kill_leftovers(driver.pid)

    rerun = subprocess.run(args, cwd=ROOT, env=corpus["env"], capture_output=True, text=True, timeout=900)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    found, images = rows(str(out), None)
    assert found == corpus["expected"] and len(images) == len(corpus["expected"])
    assert_faces_and_errors(images, read(str(out / "faces")))


@pytest.fixture(scope="module")
def gcs():
    """A GCS emulator on 127.0.0.1 (in memory), as STORAGE_EMULATOR_HOST."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="faces")
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_a_gs_prefix_is_listed_page_by_page_and_read(gcs, tmp_path, monkeypatch):
    """The emulator answers listings and whole-object reads; it hangs on pyarrow's ranged reads, so
    Parquet and tar files on gs:// and a gs:// output are not exercised here (README: Inputs)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs)
    for name, data in (("a.png", encoded(1, ".png", 128)), ("sub/b.jpg", encoded(2, ".jpg", 128)), ("broken.jpg", b"\xff\xd8 no")):
        storage.write_bytes(f"gs://faces/in/{name}", data)
    out = tmp_path / "out"
    done = run_job("jobs.audit", ["--input", "gs://faces/in", "--output", str(out), *AUDIT], job_env(tmp_path, {"STORAGE_EMULATOR_HOST": gcs}))
    assert done.returncode == 0, done.stderr[-3000:]
    found, _ = rows(str(out), None)
    assert found == {"gs://faces/in/a.png": ("ok", None), "gs://faces/in/broken.jpg": ("decode_error", None), "gs://faces/in/sub/b.jpg": ("ok", None)}
