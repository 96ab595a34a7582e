"""The crop job (the README's example of a job of one's own) on moto S3: aligned crops and landmarks, nothing else."""

import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

import schemas.crop_images
import schemas.crops
from codeformer_core import storage
from codeformer_core.align import FFHQ_TEMPLATE_512, estimate_affine, transform_points, warp_face
from codeformer_core.samples import synthetic_face
from tests.helpers import decode_png, matches
from tests.jobs.conftest import job_env, run_job, s3_client

BUCKET = "crops"


def png(rgb):
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def cropped(s3_env, tmp_path_factory):
    client = s3_client(s3_env)
    client.create_bucket(Bucket=BUCKET)
    scene = np.full((400, 500, 3), 80, np.uint8)
    m = cv2.getRotationMatrix2D((256, 256), 12, 0.5)
    m[:, 2] += np.array((250, 200)) - 256
    mask = cv2.warpAffine(np.ones((512, 512), np.uint8), m, (500, 400)).astype(bool)
    scene[mask] = cv2.warpAffine(synthetic_face(4, degrade=False), m, (500, 400))[mask]
    landmarks = transform_points(m, FFHQ_TEMPLATE_512).reshape(-1).tolist()
    client.put_object(Bucket=BUCKET, Key="in/scene.png", Body=png(scene))
    client.put_object(Bucket=BUCKET, Key="in/plain.png", Body=png(np.full((200, 200, 3), 50, np.uint8)))
    client.put_object(Bucket=BUCKET, Key="in/broken.jpg", Body=b"not a jpeg")
    manifest = f'uri,landmarks\nscene.png,"{json.dumps([landmarks])}"\nplain.png,\nbroken.jpg,\n'
    client.put_object(Bucket=BUCKET, Key="in/manifest.csv", Body=manifest.encode())
    env = job_env(tmp_path_factory.mktemp("crop"), s3_env)
    args = ["--input", f"s3://{BUCKET}/in/manifest.csv", "--output", f"s3://{BUCKET}/out", "--synthetic-weights", "--det-threshold", "1.0"]
    first = run_job("jobs.crop", args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_job("jobs.crop", args, env)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"env": s3_env, "scene": scene, "landmarks": landmarks, "first": first, "second": second}


def read(table, env):
    import os

    os.environ.update(env)
    filesystem, path = storage.filesystem_and_path(f"s3://{BUCKET}/out/{table}")
    return pq.read_table(path, filesystem=filesystem)


def test_every_input_has_a_row_and_the_landmarked_face_its_crop(cropped):
    images = read("images", cropped["env"]).to_pandas().set_index("source_uri")
    crops = read("crops", cropped["env"]).to_pandas()

    assert dict(images.status) == {f"s3://{BUCKET}/in/scene.png": "ok", f"s3://{BUCKET}/in/plain.png": "no_face", f"s3://{BUCKET}/in/broken.jpg": "decode_error"}
    assert list(crops.source_uri) == [f"s3://{BUCKET}/in/scene.png"] and images.num_faces.sum() == 1
    row = crops.iloc[0]
    np.testing.assert_allclose(row.landmarks, cropped["landmarks"], atol=1e-3)
    affine = estimate_affine(np.asarray(cropped["landmarks"]).reshape(5, 2))
    np.testing.assert_allclose(np.asarray(row.affine).reshape(2, 3), affine, atol=1e-9)
    assert np.array_equal(decode_png(row.crop["bytes"]), warp_face(cropped["scene"], affine))


def test_tables_match_their_schemas_and_a_rerun_does_nothing(cropped):
    assert matches(read("images", cropped["env"]).schema, schemas.crop_images.SCHEMA)
    assert matches(read("crops", cropped["env"]).schema, schemas.crops.SCHEMA)
    assert "3 already done, 0 to process" in cropped["second"].stderr
    assert "inputs 3: ok 1; failures: decode_error 1, no_face 1" in cropped["second"].stdout
