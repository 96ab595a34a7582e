"""Videos through the jobs: listed beside images, cut into segments, a row per kept frame, resumed inside a video."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from codeformer_core import video
from tests.helpers import two_face_clip
from tests.jobs.conftest import ROOT, job_env, run_job, s3_client
from tests.jobs.test_faults import kill_workers

FPS, SECONDS = 25, 3
FRAMES = FPS * SECONDS


def read(uri: str, env: dict | None = None) -> pd.DataFrame:
    if not uri.startswith("s3://"):
        return pd.read_parquet(uri)
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    filesystem = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key=env["AWS_ACCESS_KEY_ID"],
                                   secret_key=env["AWS_SECRET_ACCESS_KEY"], region=env["AWS_DEFAULT_REGION"])
    return pq.read_table(uri.removeprefix("s3://"), filesystem=filesystem).to_pandas()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return two_face_clip(tmp_path_factory.mktemp("clip") / "talk.mp4", SECONDS, FPS)


@pytest.fixture(scope="module")
def audited_on_s3(s3_env, clip, tmp_path_factory):
    """The audit of every frame of the clip, streamed from moto S3 in segments of 30 frames, beside one image."""
    client = s3_client(s3_env)
    client.create_bucket(Bucket="clips")
    client.put_object(Bucket="clips", Key="in/talk.mp4", Body=clip.read_bytes())
    client.put_object(Bucket="clips", Key="in/still.png", Body=(ROOT / "tests/data/golden/codeformer/input.png").read_bytes())
    env = job_env(tmp_path_factory.mktemp("audit_video"), s3_env)
    args = ["--input", "s3://clips/in", "--output", "s3://clips/out", "--aligned", "--synthetic-weights", "--every-n-frames", "1",
            "--segment-frames", "30", "--shard-size", "2", "--metrics", "sharpness"]
    done = run_job("jobs.audit", args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    tables = ("images", "frames", "faces", "tracks", "face_tracks")
    report = client.get_object(Bucket="clips", Key="out/report.html")["Body"].read().decode()
    return {name: read(f"s3://clips/out/{name}", s3_env) for name in tables} | {"log": done.stdout, "report": report}


def test_every_frame_has_one_row_with_its_number_and_time(audited_on_s3):
    frames = audited_on_s3["frames"]
    assert len(frames) == FRAMES and sorted(frames.frame_index) == list(range(FRAMES))
    assert (frames.timestamp - frames.frame_index / FPS).abs().max() < 1e-6
    assert set(frames.status) == {"ok"} and set(frames.num_faces) == {1} and set(frames.width) == {320}
    assert list(frames.groupby("segment").size()) == [30, 30, 15]


def test_a_video_has_a_row_per_segment_with_what_its_container_says(audited_on_s3):
    images = audited_on_s3["images"]
    video = images[images.source_uri.str.endswith(".mp4")].sort_values("segment")
    assert list(video.segment) == [0, 1, 2] and set(video.status) == {"ok"} and video.image_id.nunique() == 1
    assert list(video.frame_start) == [0, 30, 60] and list(video.frame_stop.fillna(-1)) == [30, 60, -1]
    assert list(video.frames) == [30, 30, 15] and set(video.fps) == {FPS} and set(video.frame_count) == {FRAMES}
    assert set(video.codec) == {"mpeg4"} and set(video.audio_codec) == {"aac"} and set(video.duration) == {SECONDS}
    assert video.num_faces.isna().all()
    still = images[images.source_uri.str.endswith(".png")]
    assert len(still) == 1 and still.num_faces.iloc[0] == 1 and still.segment.isna().all() and still.fps.isna().all()


def test_faces_of_frames_say_where_they_are_and_are_named_apart(audited_on_s3):
    faces = audited_on_s3["faces"]
    video = faces[faces.frame_index.notna()]
    assert len(video) == FRAMES and sorted(video.frame_index) == list(range(FRAMES))
    assert (video.timestamp - video.frame_index / FPS).abs().max() < 1e-6
    assert faces.thumbnail.map(lambda t: t["path"]).is_unique
    assert faces[faces.frame_index.isna()].source_uri.str.endswith(".png").all()


def test_the_faces_of_a_video_are_linked_into_tracks(audited_on_s3):
    """--aligned: each frame is one face, the whole frame, so the video is one track through all its frames."""
    tracks, linked, faces = audited_on_s3["tracks"], audited_on_s3["face_tracks"], audited_on_s3["faces"]
    assert len(tracks) == 1 and tracks.faces.iloc[0] == FRAMES and (tracks.first_frame.iloc[0], tracks.last_frame.iloc[0]) == (0, FRAMES - 1)
    assert tracks.input_change.iloc[0] > 0 and tracks.restored_change.isna().all() and tracks.identity_cosine.isna().all()
    joined = faces.merge(linked, on=["image_id", "frame_index", "face_index"])
    assert len(linked) == FRAMES and len(joined) == FRAMES and set(joined.track_id) == {0}
    assert "tracks 1 in 1 videos with faces, 75 faces" in audited_on_s3["log"]
    assert '<h2>Video tracks</h2><table id="tracks">' in audited_on_s3["report"]


def test_a_job_killed_mid_video_resumes_inside_it_with_one_row_per_frame(clip, tmp_path):
    """Segments of 5 frames in shards of 3: the pipeline's process is killed once a shard is committed."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / clip.name).write_bytes(clip.read_bytes())
    out, log = tmp_path / "out", tmp_path / "run.log"
    args = ["--input", str(tmp_path / "in"), "--output", str(out), "--aligned", "--synthetic-weights", "--every-n-frames", "1",
            "--segment-frames", "5", "--shard-size", "3", "--batch-size", "4", "--metrics", "sharpness"]
    with open(log, "w") as sink:
        job = subprocess.Popen([sys.executable, "-m", "jobs.audit", *args], cwd=ROOT, env=job_env(tmp_path), stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 600
        while not list((out / "_shards").glob("*.json")):
            assert job.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no shard was committed in time"
            time.sleep(0.1)
        kill_workers(job, runner_only=True)
        code = job.wait(timeout=900)
    finally:
        if job.poll() is None:
            job.kill()
    if code != 0:
        rerun = run_job("jobs.audit", args, job_env(tmp_path))
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    again = run_job("jobs.audit", args, job_env(tmp_path))
    assert again.returncode == 0 and "15 already done, 0 to process" in again.stderr, again.stderr[-3000:]

    frames, faces, images = (read(str(out / name)) for name in ("frames", "faces", "images"))
    assert len(frames) == FRAMES and frames.frame_index.is_unique and set(frames.status) == {"ok"}
    assert len(faces) == FRAMES and faces.frame_index.is_unique
    assert len(images) == FRAMES // 5 and images.segment.is_unique and images.frames.sum() == FRAMES
    assert len(read(str(out / "face_tracks"))) == FRAMES and list(read(str(out / "tracks")).faces) == [FRAMES]
    markers = [json.loads(p.read_text()) for p in (out / "_shards").glob("*.json")]
    assert len(markers) == 5 and sum(m["inputs"] for m in markers) == 15 and not (out / "_staging").exists()


def test_the_restore_job_writes_the_restored_video_with_its_audio_on_s3(s3_env, tmp_path):
    """Every frame (the default) of a 6-frame clip with audio, one face each, pasted at --upscale 2:
    a CodeFormer forward costs seconds here, so the clip is short (the audit tests take the 3-second one)."""
    client = s3_client(s3_env)
    client.create_bucket(Bucket="reels")
    short = two_face_clip(tmp_path / "short.mp4", 6 / FPS, FPS)
    client.put_object(Bucket="reels", Key="in/short.mp4", Body=short.read_bytes())
    args = ["--input", "s3://reels/in", "--output", "s3://reels/out", "--synthetic-weights", "--precision", "fp32", "--metrics", "none",
            "--max-faces", "1", "--batch-size", "4", "--write-video", "--upscale", "2"]
    done = run_job("jobs.restore", args, job_env(tmp_path, s3_env))
    assert done.returncode == 0, done.stderr[-3000:]
    frames, faces, pasted, images = (read(f"s3://reels/out/{name}", s3_env) for name in ("frames", "faces", "pasted", "images"))
    assert sorted(frames.frame_index) == list(range(6)) and sorted(pasted.frame_index) == list(range(6))
    assert len(images) == 1 and images.frames.iloc[0] == 6 and images.status.iloc[0] == "ok"
    restored = faces[faces.frame_index.notna()]
    assert restored.restored.map(lambda r: r["path"]).is_unique and restored.restored_embedding.map(len).eq(512).all()
    assert "videos 1 (6 frames)" in done.stdout

    written = tmp_path / "restored.mp4"
    written.write_bytes(client.get_object(Bucket="reels", Key=f"out/videos/{images.image_id.iloc[0]}.mp4")["Body"].read())
    with video.open_video(str(written)) as container:
        info = video.probe(container)
        count = sum(1 for _ in video.decode(container, video.Sampling()))
    assert (count, info.width, info.height, info.fps, info.audio_codec) == (6, 640, 480, FPS, "aac")


@pytest.mark.parametrize("flags, message", [
    (["--write-video", "--fps", "1"], "--write-video needs every frame"),
    (["--write-video", "--aligned"], "--write-video needs whole images"),
    (["--video-fps", "12"], "--video-fps and --video-crf are settings of --write-video"),
])
def test_write_video_refuses_what_it_cannot_do(tmp_path, flags, message):
    result = run_job("jobs.restore", ["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--synthetic-weights", *flags], job_env(tmp_path))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_pairs_job_makes_pairs_of_one_frame_a_second(clip, tmp_path):
    """The default sampling of the pairs job: the first frame of each second, each with its own degradation."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / clip.name).write_bytes(clip.read_bytes())
    out = tmp_path / "out"
    done = run_job("jobs.pairs", ["--input", str(tmp_path / "in"), "--output", str(out), "--aligned", "--seed", "3", "--format", "webdataset"], job_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    frames, pairs = read(str(out / "frames")), read(str(out / "pairs")).sort_values("frame_index")
    assert sorted(frames.frame_index) == [0, 25, 50] and list(pairs.frame_index) == [0, 25, 50]
    assert list(pairs.key) == [f"{pairs.image_id.iloc[0]}_f{f:07d}_0_0" for f in (0, 25, 50)] and pairs.pair_seed.is_unique
    assert list(pairs.timestamp) == [0.0, 1.0, 2.0]
