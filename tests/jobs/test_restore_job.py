"""The restore job end to end: local Ray, images on a moto S3 server over HTTP."""

import glob
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import schemas
import schemas.faces
import schemas.images
from codeformer_core import codec, storage
from codeformer_core.align import as_aligned_face
from codeformer_core.restore import Restorer, Speed
from codeformer_core.samples import synthetic_face
from jobs import restore
from jobs.driver import main
from tests.helpers import decode_png, matches
from tests.jobs.conftest import ROOT, free_port, job_env, run_job, s3_client

MAX_PIXELS = 1_000_000


def encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return data.tobytes()


def twelve_inputs() -> dict[str, tuple[bytes, str]]:
    """key -> (bytes, expected status)."""
    face = synthetic_face
    rgba = np.dstack([face(7), np.full((512, 512), 128, np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    grey16 = cv2.cvtColor(face(8), cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    return {
        "in/a/f00.png": (encode(face(0), ".png"), "ok"),
        "in/a/f01.JPG": (encode(face(1, 400), ".jpg"), "ok"),
        "in/a/b/f02.webp": (encode(face(2), ".webp"), "ok"),
        "in/f03.bmp": (encode(face(3, 256), ".bmp"), "ok"),
        "in/f04.jpeg": (encode(face(4), ".jpeg"), "ok"),
        "in/f05.PNG": (encode(face(5), ".png"), "ok"),
        "in/grey.png": (cv2.imencode(".png", cv2.cvtColor(face(6), cv2.COLOR_RGB2GRAY))[1].tobytes(), "ok"),
        "in/rgba.png": (buf.getvalue(), "ok"),
        "in/deep16.png": (cv2.imencode(".png", grey16)[1].tobytes(), "ok"),
        "in/corrupt.jpg": (encode(face(9), ".jpg")[:40] + b"\x00" * 300, "decode_error"),
        "in/zero.png": (b"", "empty"),
        "in/huge.png": (encode(np.zeros((1100, 1000, 3), np.uint8), ".png"), "too_large"),
    }


@pytest.fixture(scope="module")
def restored_on_s3(s3_env, tmp_path_factory):
    """Runs the job once on 12 images in s3://faces/in/ and shares the result with the tests below."""
    client = s3_client(s3_env)
    client.create_bucket(Bucket="faces")
    inputs = twelve_inputs()
    for key, (data, _) in inputs.items():
        client.put_object(Bucket="faces", Key=key, Body=data)
    client.put_object(Bucket="faces", Key="in/notes.txt", Body=b"not an image")
    tmp = tmp_path_factory.mktemp("restore_s3")
    env = job_env(tmp, s3_env)
    args = [
        "--input", "s3://faces/in", "--output", "s3://faces/out", "--aligned", "--synthetic-weights",
        "--batch-size", "4", "--precision", "fp32", "--max-pixels", str(MAX_PIXELS),
    ]
    first = run_job("jobs.restore", args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_job("jobs.restore", args, env)
    return {"inputs": inputs, "first": first, "second": second, "env": s3_env}


def read_table(uri: str, s3_env: dict):
    os.environ.update(s3_env)
    filesystem, path = storage.filesystem_and_path(uri)
    return pq.read_table(path, filesystem=filesystem)


def test_images_table_has_one_row_per_input_with_its_status(restored_on_s3):
    images = read_table("s3://faces/out/images", restored_on_s3["env"]).to_pandas()
    expected = {f"s3://faces/{k}": status for k, (_, status) in restored_on_s3["inputs"].items()}

    assert len(images) == 12 and images.image_id.is_unique
    assert dict(zip(images.source_uri, images.status)) == expected
    ok = images[images.status == "ok"]
    assert ok.error.isna().all() and (ok.num_faces == 1).all()
    assert images[images.status != "ok"].error.notna().all() and (images[images.status != "ok"].num_faces == 0).all()
    assert images.weights_synthetic.all() and (images.fidelity == 0.5).all()
    huge = images.set_index("source_uri").loc["s3://faces/in/huge.png"]
    assert (huge.width, huge.height) == (1000, 1100)
    grey = {"s3://faces/in/grey.png", "s3://faces/in/deep16.png"}
    assert dict(zip(ok.source_uri, ok.is_gray)) == {uri: uri in grey for uri in ok.source_uri}
    assert images[images.status != "ok"].is_gray.isna().sum() >= 2  # what was never decoded has no answer


def test_faces_table_has_a_512_png_per_good_image(restored_on_s3):
    faces = read_table("s3://faces/out/faces", restored_on_s3["env"]).to_pandas()
    good = {f"s3://faces/{k}" for k, (_, status) in restored_on_s3["inputs"].items() if status == "ok"}

    assert set(faces.source_uri) == good and len(faces) == len(good)
    for column in ("restored", "input_crop"):
        for cell in faces[column]:
            assert cell["path"].endswith(".png")
            assert decode_png(cell["bytes"]).shape == (512, 512, 3)


def test_faces_carry_quality_metrics_and_identity_similarity(restored_on_s3):
    """Each row's metrics equal the library's on the row's own crops, and IDS is a cosine."""
    from codeformer_core import metrics
    from codeformer_core.measure import as_tensor

    faces = read_table("s3://faces/out/faces", restored_on_s3["env"]).to_pandas()
    assert faces.ids_cosine.between(-1, 1).all() and faces.ids_cosine.notna().all()
    np.testing.assert_allclose(np.degrees(np.arccos(faces.ids_cosine)), faces.ids_degrees, atol=1e-6)
    row = faces.iloc[0]
    for column, prefix in (("input_crop", ""), ("restored", "restored_")):
        face = as_tensor([decode_png(row[column]["bytes"])], torch.device("cpu"))
        assert row[f"{prefix}sharpness"] == pytest.approx(float(metrics.sharpness(face)[0]), rel=1e-9)
        assert row[f"{prefix}colourfulness"] == pytest.approx(float(metrics.colourfulness(face)[0]), rel=1e-9)


def test_every_written_file_matches_its_schema(restored_on_s3):
    os.environ.update(restored_on_s3["env"])
    filesystem, _ = storage.filesystem_and_path("s3://faces/out")
    for table, schema in (("images", schemas.images.SCHEMA), ("faces", schemas.faces.SCHEMA)):
        parts = storage.list_files(f"s3://faces/out/{table}", suffix=".parquet")
        assert parts
        for uri in parts:
            assert matches(pq.read_schema(uri.removeprefix("s3://"), filesystem=filesystem), schema), uri


def test_job_output_equals_the_library_on_the_same_crops(restored_on_s3, synthetic_state_dict):
    """The job's faces equal `Restorer.restore` on the same crops in the same forward pass.

    Sorted inputs go to the model 4 rows at a time; the third batch is grey, huge (too large),
    rgba and zero (empty), so one forward saw [grey, rgba]. The direct call makes that forward
    again: any gather/scatter, padding or ordering slip in the job shows as a difference. (With
    random weights, float noise from a different batch size can flip a code index, so the
    comparison is made at the same batch composition and is exact.) The grey input's face is made
    grey from its input crop, as the official inference does.
    """
    from codeformer_core.gray import gray_restored
    from codeformer_core.weights import build_codeformer

    faces = read_table("s3://faces/out/faces", restored_on_s3["env"]).to_pandas().set_index("source_uri")
    sample = faces.loc[["s3://faces/in/grey.png", "s3://faces/in/rgba.png"]]
    crops = np.stack([decode_png(c["bytes"]) for c in sample.input_crop])
    restorer = Restorer(build_codeformer(synthetic_state_dict), torch.device("cpu"), Speed(precision="fp32", batch_size=4))

    direct = restorer.restore(crops, fidelity=0.5)
    direct[0] = gray_restored(direct[0], crops[0])

    from_job = np.stack([decode_png(c["bytes"]) for c in sample.restored])
    assert np.array_equal(direct, from_job)
    assert np.abs(direct[0].astype(int) - direct[1].astype(int)).mean() > 1  # distinct faces: order is checked
    assert (from_job[0] == from_job[0][..., :1]).all() and not (from_job[1] == from_job[1][..., :1]).all()


def test_input_crop_is_the_decoded_input_resized_to_512(restored_on_s3):
    faces = read_table("s3://faces/out/faces", restored_on_s3["env"]).to_pandas().set_index("source_uri")
    crop = decode_png(faces.loc["s3://faces/in/a/f01.JPG"].input_crop["bytes"])
    source = codec.decode_image(restored_on_s3["inputs"]["in/a/f01.JPG"][0]).rgb
    assert source.shape == (400, 400, 3) and np.array_equal(crop, as_aligned_face(source))


def test_summary_and_rerun(restored_on_s3):
    first, second = restored_on_s3["first"], restored_on_s3["second"]
    assert "inputs 12: ok 9; failures: decode_error 1, empty 1, too_large 1" in first.stdout
    assert "faces 9" in first.stdout and "SYNTHETIC WEIGHTS" in first.stdout
    assert second.returncode == 0
    assert "12 already done, 0 to process" in second.stderr
    assert "no faces restored this run" in second.stdout and "inputs 12: ok 9" in second.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "{tmp}/nowhere", "--output", "{tmp}/out", "--aligned", "--synthetic-weights"], "does not exist"),
        (["--input", "{tmp}/in", "--output", "{tmp}/out", "--aligned", "--paste", "--synthetic-weights"], "--paste needs whole images"),
        (["--input", "{tmp}/in", "--output", "{tmp}/out", "--weights-dir", "{tmp}/empty"], "cannot find codeformer.pth"),
        (["--input", "{tmp}/in", "--output", "{tmp}/out", "--aligned", "--weights", "{tmp}/missing.pth"], "missing.pth"),
        (["--input", "{tmp}/in", "--output", "{tmp}/out", "--aligned"], "cannot find codeformer.pth"),
        (["--input", "{tmp}/empty", "--output", "{tmp}/out", "--aligned", "--synthetic-weights"], "no images"),
        (["--input", "s3://no-such-bucket/x", "--output", "{tmp}/out", "--aligned", "--synthetic-weights"], "no-such-bucket"),
        (["--input", "{tmp}/in", "--output", "s3://no-such-out/x", "--aligned", "--synthetic-weights"], "cannot write to output s3://no-such-out/x: the bucket no-such-out does not exist\n"),
    ],
)
def test_configuration_errors_stop_before_work(tmp_path, s3, monkeypatch, capsys, args, message):
    monkeypatch.setenv("CODEFORMER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CODEFORMER_NO_DOWNLOAD", "1")
    (tmp_path / "in").mkdir()
    (tmp_path / "empty").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), synthetic_face(0, 64))

    code = main(restore.JOB, [a.format(tmp=tmp_path) for a in args])

    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "images").exists()


def test_unreachable_endpoint_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")

    code = main(restore.JOB, ["--input", "s3://bucket/in", "--output", str(tmp_path / "out"), "--aligned", "--synthetic-weights"])

    err = capsys.readouterr().err
    assert code == 2 and "cannot read input s3://bucket/in" in err


def test_bad_flag_value_is_explained(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(restore.JOB, ["--input", "x", "--output", "y", "--aligned", "--fidelity", "1.5"])
    assert exit_info.value.code == 2 and "must be between 0 and 1" in capsys.readouterr().err


def test_killed_job_resumes_without_loss_or_duplicates(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        cv2.imwrite(str(inputs / f"f{i}.png"), cv2.cvtColor(synthetic_face(20 + i), cv2.COLOR_RGB2BGR))
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "jobs.restore", "--input", str(inputs), "--output", str(out), "--aligned",
            "--synthetic-weights", "--batch-size", "1", "--shard-size", "1"]
    env = job_env(tmp_path)

    log = tmp_path / "killed_run.log"
    with open(log, "w") as sink:
        driver = subprocess.Popen(args, cwd=ROOT, env=env, stdout=sink, stderr=sink, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(glob.glob(str(out / "_shards" / "*.json"))) < 2:
        assert driver.poll() is None, f"the job ended before it was killed:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    committed_before_kill = len(glob.glob(str(out / "_shards" / "*.json")))
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    kill_leftovers(driver.pid)

    rerun = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    done_before = int(re.search(r"(\d+) already done", rerun.stderr).group(1))
    assert committed_before_kill >= 2 and committed_before_kill <= done_before < 5, rerun.stderr
    images = pq.read_table(out / "images").to_pandas()
    faces = pq.read_table(out / "faces").to_pandas()
    assert sorted(images.source_uri) == sorted(str(p) for p in inputs.iterdir())
    assert images.image_id.is_unique and faces.image_id.is_unique
    assert len(faces) == 4 and set(faces.image_id) == set(images[images.status == "ok"].image_id)
    markers = [json.loads(p.read_text()) for p in (out / "_shards").iterdir()]
    assert sum(m["inputs"] for m in markers) == len(images) and sorted(f for m in markers for f in m["files"]) == sorted(
        f"{t}/{p.name}" for t in ("images", "faces") for p in (out / t).iterdir()
    )


def kill_leftovers(pgid: int) -> None:
    """The driver is dead; end the local Ray processes it started so they cannot race the rerun."""
    time.sleep(2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(2)


def test_with_only_codeformer_pth_the_error_names_no_identity_and_then_the_job_runs(tmp_path):
    """Trained-looking weights (no synthetic marker) and no ArcFace file: the job says which flag skips identity."""
    from codeformer_core.weights import synthetic_codeformer_state_dict

    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    torch.save({"params_ema": synthetic_codeformer_state_dict(2)}, weights_dir / "codeformer.pth")
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "face.png"), cv2.cvtColor(synthetic_face(5, 128), cv2.COLOR_RGB2BGR))
    args = ["--input", str(inputs), "--output", str(tmp_path / "out"), "--aligned", "--weights-dir", str(weights_dir), "--precision", "fp32"]
    env = job_env(tmp_path)

    refused = run_job("jobs.restore", args, env)
    ran = run_job("jobs.restore", [*args, "--no-identity"], env)

    assert refused.returncode == 2 and "recognition_arcface_ir_se50.pth" in refused.stderr and "--no-identity" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert ran.returncode == 0, ran.stderr[-3000:]
    images = pq.read_table(tmp_path / "out" / "images").to_pandas()
    faces = pq.read_table(tmp_path / "out" / "faces").to_pandas()
    assert list(images.status) == ["ok"] and not images.weights_synthetic.any()
    assert len(faces) == 1 and decode_png(faces.restored[0]["bytes"]).shape == (512, 512, 3)
    assert faces.ids_cosine.isna().all() and faces.sharpness.notna().all() and faces.restored_sharpness.notna().all()
