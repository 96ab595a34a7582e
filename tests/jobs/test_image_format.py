"""--image-format, --image-quality and --no-input-crop: what the restore job stores, and that the
faces tables of every format read back as their users read them (Hugging Face datasets, DuckDB)."""

import json

import cv2
import datasets
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import schemas.faces
from codeformer_core.codec import FORMATS, Encoding
from codeformer_core.samples import synthetic_face
from jobs.stages.batches import Block, table
from jobs.stages.restore import restored_tables
from tests.jobs.conftest import job_env, run_job

RUN = {"code_version": "test", "weights_sha256": "0" * 64, "weights_synthetic": True, "fidelity": 0.5}


def one_face_batch(encoding: Encoding, input_crop: bool) -> dict:
    """The writer's input for one image with one face, its crops encoded as `encoding` says."""
    restored, crop = synthetic_face(1, degrade=False), synthetic_face(1)
    encoded = {"encoded_restored": [[cv2.imencode(f".{encoding.suffix}", cv2.cvtColor(restored, cv2.COLOR_RGB2BGR))[1].tobytes()]]}
    if input_crop:
        encoded["encoded_crops"] = [[cv2.imencode(f".{encoding.suffix}", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))[1].tobytes()]]
    batch = {"image_id": ["img"], "source_uri": ["/in/img.png"], "status": ["ok"], "error": [None], "width": [512], "height": [512],
             "kept": [None], "is_gray": [False], "affine": [[[1.0, 0, 0, 0, 1.0, 0]]], **encoded}
    return Block(table(batch))


@pytest.mark.parametrize("image_format", FORMATS)
def test_faces_of_every_format_read_in_datasets_and_duckdb(tmp_path, image_format):
    encoding = Encoding(image_format, 90)
    tables, _ = restored_tables(one_face_batch(encoding, input_crop=image_format != "webp"), RUN, encoding)
    path = tmp_path / "faces.parquet"
    pq.write_table(tables["faces"], path)

    faces = datasets.Dataset.from_parquet(str(path)).cast_column("restored", datasets.Image()).cast_column("input_crop", datasets.Image())
    row = faces[0]
    decoded = np.asarray(row["restored"].convert("RGB"))
    assert decoded.shape == (512, 512, 3)
    assert np.abs(decoded.astype(int) - synthetic_face(1, degrade=False)).mean() < 3  # lossy at quality 90, but this face
    assert row["image_format"] == image_format and row["restored"].format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[image_format]
    assert (row["input_crop"] is None) == (image_format == "webp")

    found = duckdb.sql(f"select image_format, restored.path, octet_length(restored.bytes), input_crop is null from '{path}'").fetchall()
    assert found == [(image_format, f"img_0.{encoding.suffix}", len(tables["faces"].column("restored")[0]["bytes"].as_py()), image_format == "webp")]


def test_restore_job_writes_jpeg_crops_and_no_input_crop_as_asked(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(synthetic_face(2, 128), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    common = ["--input", str(folder), "--aligned", "--synthetic-weights", "--metrics", "none", "--no-identity"]
    env = job_env(tmp_path)
    done = run_job("jobs.restore", [*common, "--output", str(out), "--image-format", "jpeg", "--image-quality", "80", "--no-input-crop"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "busy fraction of the actor stages" in done.stdout and "RestoreFaces" in done.stdout

    faces = pq.read_table(out / "faces").to_pylist()
    assert [f["image_format"] for f in faces] == ["jpeg"] and faces[0]["input_crop"] is None
    assert faces[0]["restored"]["path"].endswith(".jpg") and faces[0]["restored"]["bytes"][:3] == b"\xff\xd8\xff"
    assert pq.read_schema(next((out / "faces").glob("*.parquet"))).metadata[b"schema_version"] == str(schemas.faces.VERSION).encode()
    record = json.loads((out / "_run.json").read_text())
    assert record["encoding"] == {"format": "jpeg", "quality": 80} and record["input_crop"] is False

    again = run_job("jobs.restore", [*common, "--output", str(out), "--image-format", "png"], env)
    assert again.returncode == 2 and "encoding" in again.stderr  # the output was made in another format: refused, not mixed

    usage = run_job("jobs.restore", [*common, "--output", str(tmp_path / "other"), "--image-quality", "80"], env)
    assert usage.returncode == 2 and "PNG is lossless" in usage.stderr and "Traceback" not in usage.stderr
