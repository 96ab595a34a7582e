"""The audit job end to end on a moto S3 server: mixed inputs, thresholds, the kept manifest, the
report's numbers against the Parquet tables, and the report in headless Chromium."""

import json
import math
import os
import re
from html import unescape

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import schemas
import schemas.audit_faces
import schemas.audit_images
from codeformer_core import storage
from codeformer_core.align import FFHQ_TEMPLATE_512, transform_points
from codeformer_core.samples import synthetic_face
from tests import browser
from tests.helpers import matches
from tests.jobs.conftest import job_env, run_job, s3_client

BUCKET = "audit"
SHARPNESS_MIN = 16.0  # the blurred face measures about 11, the others 21-45 (checked below)
ROLL_MAX = 12.0


def placed(canvas, face, angle, scale, center):
    m = cv2.getRotationMatrix2D((256, 256), angle, scale)
    m[:, 2] += np.array(center) - 256
    h, w = canvas.shape[:2]
    warped = cv2.warpAffine(face, m, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones((512, 512), np.uint8), m, (w, h)).astype(bool)
    canvas[mask] = warped[mask]
    return transform_points(m, FFHQ_TEMPLATE_512).reshape(-1).tolist()


def png(image):
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def load(uri, env):
    os.environ.update(env)
    filesystem, path = storage.filesystem_and_path(uri)
    return pq.read_table(path, filesystem=filesystem).to_pandas()


@pytest.fixture(scope="module")
def audit(s3_env, tmp_path_factory):
    client = s3_client(s3_env)
    client.create_bucket(Bucket=BUCKET)
    tmp = tmp_path_factory.mktemp("audit")
    rows = []

    def add(name, data, landmarks):
        client.put_object(Bucket=BUCKET, Key=f"in/{name}", Body=data)
        rows.append({"uri": name, "landmarks": "" if landmarks is None else json.dumps(landmarks)})

    group = np.full((600, 800, 3), 200, np.uint8)
    landmarks = [placed(group, synthetic_face(i, degrade=False), 0, s, c) for i, s, c in ((1, 0.5, (180, 220)), (2, 0.45, (430, 300)), (3, 0.4, (660, 420)))]
    add("group.png", png(group), landmarks)
    add("group.png", png(group), None)  # a duplicate manifest row: the first wins
    blurred = np.full((400, 400, 3), 90, np.uint8)
    landmarks = [placed(blurred, cv2.GaussianBlur(synthetic_face(4, degrade=False), (0, 0), 12), 0, 0.6, (200, 200))]
    add("blurred.png", png(blurred), landmarks)
    tilted = np.full((400, 400, 3), 60, np.uint8)
    landmarks = [placed(tilted, synthetic_face(5, degrade=False), 30, 0.6, (200, 200))]
    add("tilted.png", png(tilted), landmarks)
    add("broken.jpg", b"not a jpeg", [[1.0] * 10])
    add("outside.png", png(group), [(np.array(FFHQ_TEMPLATE_512) + 5000).reshape(-1).tolist()])
    add("undetected.png", png(np.full((256, 256, 3), 128, np.uint8)), None)  # no landmarks: the detector runs
    manifest = "uri,landmarks\n" + "".join(f'{r["uri"]},"{r["landmarks"].replace(chr(34), chr(34) * 2)}"\n' for r in rows)
    client.put_object(Bucket=BUCKET, Key="in/manifest.csv", Body=manifest.encode())
    thresholds = tmp / "thresholds.json"
    thresholds.write_text(json.dumps({"sharpness": {"min": SHARPNESS_MIN}, "roll": {"abs_max": ROLL_MAX}}))

    env = job_env(tmp, s3_env)
    out = f"s3://{BUCKET}/out"
    result = run_job(
        "jobs.audit",
        ["--input", f"s3://{BUCKET}/in/manifest.csv", "--output", out, "--thresholds", str(thresholds),
         "--synthetic-weights", "--det-threshold", "1.0", "--batch-size", "3", "--gallery-size", "3"],
        env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    again = run_job(
        "jobs.audit",
        ["--input", f"{out}/kept.parquet", "--output", str(tmp / "again"), "--synthetic-weights", "--metrics", "sharpness,brightness"],
        env,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    return {"out": out, "again": str(tmp / "again"), "env": s3_env, "tmp": tmp, "stdout": result.stdout}


def test_every_input_has_a_row_and_every_face_its_measures(audit):
    images = load(f"{audit['out']}/images", audit["env"]).set_index("source_uri")
    prefix = f"s3://{BUCKET}/in/"
    assert {k.removeprefix(prefix): v for k, v in images.status.items()} == {
        "group.png": "ok", "blurred.png": "ok", "tilted.png": "ok", "broken.jpg": "decode_error",
        "outside.png": "bad_landmarks", "undetected.png": "no_face",
    }
    faces = load(f"{audit['out']}/faces", audit["env"])
    assert len(faces) == 5 and images.num_faces.sum() == 5
    for name in schemas.audit_faces.NO_REFERENCE:
        textured = faces[name] if name != "niqe" else faces[faces.source_uri.str.endswith("group.png")].niqe
        assert textured.map(math.isfinite).all(), name
    assert faces[list(schemas.audit_faces.RESTORED)].isna().all().all()  # no --restore
    group = faces[faces.source_uri == prefix + "group.png"].sort_values("face_index")
    np.testing.assert_allclose(group.face_size, [512 * 0.5, 512 * 0.45, 512 * 0.4], rtol=1e-4)
    np.testing.assert_allclose(group.interocular, np.array([0.5, 0.45, 0.4]) * np.linalg.norm(FFHQ_TEMPLATE_512[1] - FFHQ_TEMPLATE_512[0]), rtol=1e-4)
    tilted = faces[faces.source_uri == prefix + "tilted.png"].iloc[0]
    assert abs(abs(tilted.roll) - 30) < 1.0


def test_thresholds_decide_keep_and_the_kept_manifest(audit):
    faces = load(f"{audit['out']}/faces", audit["env"])
    blurred = faces[faces.source_uri.str.endswith("blurred.png")].iloc[0]
    assert blurred.sharpness < SHARPNESS_MIN and list(blurred.dropped_by) == [f"sharpness>={SHARPNESS_MIN:g}"] and not blurred.keep
    tilted = faces[faces.source_uri.str.endswith("tilted.png")].iloc[0]
    assert list(tilted.dropped_by) == [f"|roll|<={ROLL_MAX:g}"] and not tilted.keep, faces[["source_uri", "sharpness", "roll", "face_size"]].to_string()
    group = faces[faces.source_uri.str.endswith("group.png")]
    assert group.keep.all() and (group.sharpness > SHARPNESS_MIN).all() and group.dropped_by.map(len).eq(0).all()
    images = load(f"{audit['out']}/images", audit["env"])
    assert images.num_kept.sum() == 3

    kept = load(f"{audit['out']}/kept.parquet", audit["env"])
    assert kept.source_uri.tolist() == [f"s3://{BUCKET}/in/group.png"]
    expected = group.sort_values("face_index").landmarks.map(list).tolist()
    np.testing.assert_allclose(np.array([list(f) for f in kept.landmarks[0]]), np.array(expected), atol=1e-3)
    again = load(f"{audit['again']}/faces", audit["env"]).sort_values("face_index")
    assert len(again) == 3 and again.keep.all()  # the manifest is a valid --input of the jobs
    np.testing.assert_allclose(again.sharpness, group.sort_values("face_index").sharpness, rtol=1e-6)
    np.testing.assert_allclose(again.brightness, group.sort_values("face_index").brightness, rtol=1e-9)


def test_metrics_computes_and_reports_only_the_chosen_metrics(audit):
    again = load(f"{audit['again']}/faces", audit["env"])
    skipped = [n for n in schemas.audit_faces.NO_REFERENCE if n not in ("sharpness", "brightness")]
    assert again[skipped].isna().all().all() and again[["sharpness", "brightness"]].notna().all().all()
    data = summary_data(storage.read_bytes(f"{audit['again']}/report.html").decode())
    assert {"sharpness", "brightness", "face_size"} <= set(data["metrics"]) and not set(skipped) & set(data["metrics"])


def test_thresholds_on_metrics_left_out_are_refused(tmp_path):
    thresholds = tmp_path / "t.json"
    thresholds.write_text(json.dumps({"niqe": {"max": 10}}))
    result = run_job(
        "jobs.audit",
        ["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--thresholds", str(thresholds), "--metrics", "sharpness"],
        job_env(tmp_path),
    )
    assert result.returncode == 2 and "thresholds on niqe need those metrics in --metrics" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_tables_match_their_schemas(audit):
    os.environ.update(audit["env"])
    filesystem, _ = storage.filesystem_and_path(audit["out"])
    for table, schema in (("images", schemas.audit_images.SCHEMA), ("faces", schemas.audit_faces.SCHEMA)):
        uris = storage.list_files(f"{audit['out']}/{table}", suffix=".parquet")
        assert uris
        for uri in uris:
            assert matches(pq.read_schema(uri.removeprefix("s3://"), filesystem=filesystem), schema), uri


@pytest.fixture(scope="module")
def report(audit):
    os.environ.update(audit["env"])
    path = audit["tmp"] / "report.html"
    path.write_bytes(storage.read_bytes(f"{audit['out']}/report.html"))
    return path


def summary_data(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="summary-data">(.*?)</script>', html, re.S)
    assert match, "the report has no summary-data"
    return json.loads(unescape(match.group(1)))


def test_report_numbers_equal_the_tables(audit, report):
    data = summary_data(report.read_text())
    images = load(f"{audit['out']}/images", audit["env"])
    faces = load(f"{audit['out']}/faces", audit["env"])
    totals = data["totals"]
    assert totals["images"] == len(images) and totals["faces"] == len(faces) and totals["kept"] == int(faces.keep.sum())
    assert totals["images_ok"] == int((images.status == "ok").sum())
    assert data["failures"] == images[images.status != "ok"].status.value_counts().to_dict()
    drops = pd.Series([r for rules in faces.dropped_by for r in rules]).value_counts().to_dict()
    assert data["dropped_by"] == drops
    for name in ("sharpness", "niqe", "face_size", "yaw", "det_score"):
        values = faces[name].dropna()
        stats = data["metrics"][name]
        assert stats["count"] == len(values) and stats["missing"] == len(faces) - len(values), name
        if len(values):
            assert stats["mean"] == pytest.approx(values.mean(), rel=1e-9) and stats["min"] == pytest.approx(values.min())
            assert stats["max"] == pytest.approx(values.max())


def test_report_opens_in_headless_chromium(report, tmp_path):
    chromium = browser.find_chromium()
    if chromium is None:
        pytest.skip("no headless Chromium: tests/setup-chromium.sh could not install Debian's chromium here")
    shot = tmp_path / "report.png"
    browser.screenshot(report, shot, width=1280, height=2400)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[1] == 1280 and image.std() > 10
    dom = browser.dump_dom(report)
    assert len(re.findall(r'class="histogram[^"]*"', dom)) >= 10
    assert re.search(r'class="gallery', dom) and dom.count("data:image/jpeg;base64,") >= 3


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    """Aligned faces audited with --restore: the network's output measured and compared with its input."""
    tmp = tmp_path_factory.mktemp("audit_restore")
    folder = tmp / "faces"
    folder.mkdir()
    for i in range(2):
        (folder / f"face_{i}.png").write_bytes(png(synthetic_face(10 + i)))
    out = tmp / "out"
    result = run_job(
        "jobs.audit",
        ["--input", str(folder), "--output", str(out), "--aligned", "--restore", "--synthetic-weights", "--batch-size", "2"],
        job_env(tmp),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_restore_adds_output_metrics_and_identity_similarity(restored):
    faces = pq.read_table(restored / "faces").to_pandas()
    assert len(faces) == 2
    for name in schemas.audit_faces.RESTORED:
        assert faces[name].notna().all(), name
    assert faces.ids_cosine.between(-1, 1).all()
    assert (faces.lmd.isna() | (faces.lmd >= 0)).all()
    np.testing.assert_allclose(np.degrees(np.arccos(faces.ids_cosine)), faces.ids_degrees, atol=1e-6)
    assert faces.landmarks.isna().all() and faces.yaw.isna().all()  # aligned inputs carry no landmarks
    for row in faces.itertuples():
        assert cv2.imdecode(np.frombuffer(row.restored["bytes"], np.uint8), cv2.IMREAD_COLOR).shape == (512, 512, 3)
    data = summary_data((restored / "report.html").read_text())
    assert data["metrics"]["ids_cosine"]["count"] == 2
    assert 'data-kind="worst"' in (restored / "report.html").read_text()
