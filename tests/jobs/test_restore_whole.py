"""The restore job on whole images: mixed sizes, several faces, landmarks from a manifest."""

import json
import math

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import schemas
import schemas.faces
import schemas.images
import schemas.pasted
from codeformer_core.align import FFHQ_TEMPLATE_512, transform_points
from codeformer_core.samples import synthetic_face
from tests.helpers import decode_png, matches
from tests.jobs.conftest import job_env, run_job


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / mse) if mse else math.inf


def placed(canvas, seed, angle, scale, center):
    """Draw face `seed` into `canvas` with a known similarity transform; return its 10 landmark numbers."""
    face = synthetic_face(seed, degrade=False)
    m = cv2.getRotationMatrix2D((256, 256), angle, scale)
    m[:, 2] += np.array(center) - 256
    h, w = canvas.shape[:2]
    warped = cv2.warpAffine(face, m, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones((512, 512), np.uint8), m, (w, h)).astype(bool)
    canvas[mask] = warped[mask]
    return transform_points(m, FFHQ_TEMPLATE_512).reshape(-1).tolist()


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    folder = tmp / "images"
    folder.mkdir()
    rows = []

    def add(name, image, landmarks):
        cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        rows.append({"uri": f"images/{name}", "landmarks": None if landmarks is None else json.dumps(landmarks)})

    big = np.full((3000, 4000, 3), 90, np.uint8)
    add("big.jpg", big, [placed(big, 1, 10, 2.0, (1000, 1200)), placed(big, 2, -15, 1.0, (3000, 2000))])
    small = np.full((64, 64, 3), 60, np.uint8)
    add("small.png", small, [placed(small, 3, 0, 0.1, (32, 32))])
    group = np.full((600, 800, 3), 200, np.uint8)
    add("group.png", group, [placed(group, 4, 5, 0.4, (150, 200)), placed(group, 5, -5, 0.5, (450, 300)), placed(group, 6, 0, 0.3, (700, 480))])
    add("empty_scene.png", np.full((200, 300, 3), 30, np.uint8), [])
    add("nan.png", group, [[float("nan")] * 10])
    add("line.png", group, [[10, 10, 20, 20, 30, 30, 40, 40, 50, 50]])
    add("outside.png", group, [(np.array(FFHQ_TEMPLATE_512) + 5000).reshape(-1).tolist()])
    add("undetected.png", np.full((256, 256, 3), 128, np.uint8), None)  # no landmarks: the detector runs

    manifest = tmp / "manifest.csv"
    pacsv.write_csv(pa.Table.from_pylist(rows), manifest)
    out = tmp / "out"
    result = run_job(
        "jobs.restore",
        ["--input", str(manifest), "--output", str(out), "--synthetic-weights", "--batch-size", "3",
         "--paste", "--parse", "--det-threshold", "1.0"],
        job_env(tmp),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "folder": folder, "result": result, "big": big, "group": group}


def test_statuses_and_counts(whole_run):
    images = pq.read_table(whole_run["out"] / "images").to_pandas().set_index("source_uri")
    status = {uri.rsplit("/", 1)[1]: s for uri, s in images.status.items()}
    assert status == {
        "big.jpg": "ok", "small.png": "ok", "group.png": "ok", "empty_scene.png": "no_face",
        "nan.png": "bad_landmarks", "line.png": "bad_landmarks", "outside.png": "bad_landmarks",
        "undetected.png": "no_face",
    }
    faces_per_image = {uri.rsplit("/", 1)[1]: n for uri, n in images.num_faces.items()}
    assert (faces_per_image["big.jpg"], faces_per_image["small.png"], faces_per_image["group.png"]) == (2, 1, 3)
    assert images.loc[images.status == "bad_landmarks", "error"].str.contains("NaN|collinear|outside").all()
    assert images.loc[str(whole_run["folder"] / "big.jpg"), ["width", "height"]].tolist() == [4000, 3000]


def test_faces_carry_lineage_and_match_the_schema(whole_run):
    out = whole_run["out"]
    for table, schema in (("images", schemas.images.SCHEMA), ("faces", schemas.faces.SCHEMA), ("pasted", schemas.pasted.SCHEMA)):
        for part in (out / table).glob("*.parquet"):
            assert matches(pq.read_schema(part), schema), part
    faces = pq.read_table(out / "faces").to_pandas()
    assert len(faces) == 6
    assert faces.landmarks.map(len).eq(10).all() and faces.affine.map(len).eq(6).all()
    assert faces.bbox.isna().all() and faces.det_score.isna().all()  # landmarks came from the manifest
    group = faces[faces.source_uri.str.endswith("group.png")].sort_values("face_index")
    assert group.face_index.tolist() == [0, 1, 2]


def test_alignment_in_the_job_recovers_the_placed_faces(whole_run):
    faces = pq.read_table(whole_run["out"] / "faces").to_pandas()
    big = faces[faces.source_uri.str.endswith("big.jpg")].sort_values("face_index")
    crop = decode_png(big.input_crop.iloc[1]["bytes"])
    inner = (slice(120, 440), slice(120, 400))
    assert psnr(crop[inner], synthetic_face(2, degrade=False)[inner]) >= 30


def test_pasted_images_have_the_input_size(whole_run):
    pasted = pq.read_table(whole_run["out"] / "pasted").to_pandas()
    assert sorted(u.rsplit("/", 1)[1] for u in pasted.source_uri) == ["big.jpg", "group.png", "small.png"]
    group = decode_png(pasted[pasted.source_uri.str.endswith("group.png")].pasted.iloc[0]["bytes"])
    assert group.shape == (600, 800, 3)
    far = (slice(0, 40), slice(300, 400))  # background no face covers
    assert np.array_equal(group[far], whole_run["group"][far])


def test_detected_faces_are_the_same_in_both_layouts(tmp_path):
    """The detector in its own actor pool or inside the restoration actor: same faces, same lineage."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    scene = np.full((480, 640, 3), 100, np.uint8)
    scene[:240, :240] = synthetic_face(3, 240)
    cv2.imwrite(str(folder / "scene.png"), scene)
    faces = {}
    for layout in ("separate", "fused"):
        out = tmp_path / layout
        result = run_job(
            "jobs.restore",
            ["--input", str(folder), "--output", str(out), "--synthetic-weights", "--max-faces", "1", "--detect-layout", layout],
            job_env(tmp_path),
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert pq.read_table(out / "images").column("status").to_pylist() == ["ok"]
        faces[layout] = pq.read_table(out / "faces").to_pandas()
        assert len(faces[layout]) == 1 and len(faces[layout].bbox[0]) == 4 and faces[layout].det_score[0] > 0.8
    for column in ("bbox", "det_score", "landmarks", "affine"):
        np.testing.assert_array_equal(np.stack(faces["separate"][column]), np.stack(faces["fused"][column]), err_msg=column)
    assert faces["separate"].input_crop[0]["bytes"] == faces["fused"].input_crop[0]["bytes"]


def test_realesrgan_upsamples_the_background_and_the_faces(tmp_path):
    """--bg-upsampler realesrgan --face-upsample with synthetic weights: the pasted image is the
    library's paste of the Real-ESRGAN'd restored face over the Real-ESRGAN'd background, byte for byte."""
    import torch

    from codeformer_core.paste import paste_faces
    from codeformer_core.upsample import Upsampler

    scene = np.full((100, 120, 3), 70, np.uint8)
    scene[:, :40] = np.linspace(20, 220, 40, dtype=np.uint8)[None, :, None]  # something for the upsampler to draw
    landmarks = placed(scene, 7, 5, 0.12, (85, 50))
    cv2.imwrite(str(tmp_path / "scene.png"), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    manifest = tmp_path / "manifest.csv"
    pacsv.write_csv(pa.Table.from_pylist([{"uri": "scene.png", "landmarks": json.dumps([landmarks])}]), manifest)
    out = tmp_path / "out"
    args = ["--input", str(manifest), "--output", str(out), "--synthetic-weights", "--no-identity", "--metrics", "none",
            "--paste", "--upscale", "2", "--bg-upsampler", "realesrgan", "--face-upsample"]

    result = run_job("jobs.restore", args, job_env(tmp_path))

    assert result.returncode == 0, result.stderr[-3000:]
    pasted = decode_png(pq.read_table(out / "pasted").column("pasted")[0].as_py()["bytes"])
    assert pasted.shape == (200, 240, 3)
    assert pq.read_table(out / "pasted").column("upscale").to_pylist() == [2]
    faces = pq.read_table(out / "faces").to_pylist()
    upsampler = Upsampler.from_weights(2, torch.device("cpu"), synthetic_seed=1)[0]
    background = upsampler.upsample(scene)
    face = upsampler.upsample(decode_png(faces[0]["restored"]["bytes"]))
    expected = paste_faces(scene, [face], [np.reshape(faces[0]["affine"], (2, 3))], 2, background=background, faces_upsampled=True)
    assert np.array_equal(pasted, expected)
    assert not np.array_equal(pasted, background)
