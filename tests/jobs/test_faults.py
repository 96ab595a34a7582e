"""Faults a job meets at scale: storage that throttles, resets and stalls (moto behind tests/faults.py),
Ray worker processes killed mid-run, Ctrl-C, and folders with links, GIFs, TIFFs and odd names.
The contract: one row per input, with a reason, nothing lost and nothing doubled."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from tests.faults import FaultProxy, object_reads
from tests.jobs.conftest import ROOT, job_env, run_job
from tests.jobs.test_scale import audit_args, small_faces

BUCKET = "faults"


@pytest.fixture()
def s3_faces(s3, s3_env, tmp_path):
    """Ten small aligned faces in s3://faults/in/, and a fault proxy in front of the moto server."""
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted(small_faces(tmp_path / "faces", 10).iterdir()):
        s3.put_object(Bucket=BUCKET, Key=f"in/{path.name}", Body=path.read_bytes())
    with FaultProxy(s3_env["AWS_ENDPOINT_URL"], seed=17) as proxy:
        yield proxy


def through(proxy: FaultProxy, tmp_path: Path, s3_env: dict) -> dict:
    return job_env(tmp_path, {**s3_env, "AWS_ENDPOINT_URL": proxy.url})


def rows(out: Path, table: str = "images") -> pd.DataFrame:
    return pd.read_parquet(out / table)


def test_throttling_and_resets_on_every_request_are_retried_within_the_run(s3_faces, s3_env, tmp_path):
    """Half the requests fail (listing included); only the check of the bucket, which is to fail
    fast, is spared. 14 tries leave an object unread with odds 0.51^14, below 1e-4."""
    s3_faces.applies = lambda method, path: not (method == "HEAD" and "/" not in path.strip("/"))
    s3_faces.set(slow_down=0.3, reset=0.3)
    out = tmp_path / "out"
    args = ["--input", f"s3://{BUCKET}/in", "--output", str(out), "--aligned", "--metrics", "sharpness", "--read-attempts", "14"]

    result = run_job("jobs.audit", args, through(s3_faces, tmp_path, s3_env))

    assert result.returncode == 0, result.stderr[-3000:]
    images = rows(out)
    assert len(images) == 10 and images.image_id.is_unique and set(images.status) == {"ok"}
    assert s3_faces.counts["slow_down"] + s3_faces.counts["reset"] >= 3, s3_faces.counts  # about half of some 20 requests
    assert "constructor arguments in the object store" not in result.stderr  # Ray's known-harmless error line is dropped


def test_reads_that_fail_every_try_are_retried_by_the_rerun_and_only_they(s3_faces, s3_env, tmp_path):
    s3_faces.applies = object_reads
    s3_faces.set(slow_down=0.85)
    out = tmp_path / "out"
    args = ["--input", f"s3://{BUCKET}/in", "--output", str(out), "--aligned", "--metrics", "sharpness", "--read-attempts", "2", "--shard-size", "4"]
    env = through(s3_faces, tmp_path, s3_env)

    first = run_job("jobs.audit", args, env)

    assert first.returncode == 0, first.stderr[-3000:]
    images = rows(out)
    failed = images[images.status == "unavailable"]
    assert len(images) == 10 and set(images.status) <= {"ok", "unavailable"} and len(failed) >= 1
    assert all(e.startswith(f"S3 GetObject s3://{BUCKET}/in/") and "HTTP 503 SlowDown" in e and "after 2 attempts" in e for e in failed.error)
    assert f"{len(failed)} inputs failed in a way that may pass" in first.stdout and "run the same command again" in first.stdout
    kept = images[images.status == "ok"].set_index("image_id")
    faces_before = rows(out, "faces").set_index("image_id")

    s3_faces.set()
    reads_before = s3_faces.counts["requests"]
    second = run_job("jobs.audit", args, env)

    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{10 - len(failed)} already done, {len(failed)} to retry" in second.stderr
    images = rows(out)
    faces = rows(out, "faces")
    assert len(images) == 10 and images.image_id.is_unique and set(images.status) == {"ok"}
    assert list(images.source_uri) == sorted(images.source_uri)  # each shard's rows stay in listing order
    assert len(faces) == 10 and faces.image_id.is_unique and set(faces.image_id) == set(images.image_id)
    again = images.set_index("image_id").loc[kept.index]
    assert (again.width == kept.width).all()
    assert np.allclose(faces.set_index("image_id").loc[faces_before.index, "sharpness"], faces_before.sharpness)
    assert s3_faces.counts["requests"] - reads_before < 10 + 10  # only the failed inputs were read again, with a few listing requests

    third = run_job("jobs.audit", args, env)
    assert third.returncode == 0 and "10 already done, 0 to process" in third.stderr


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process under `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found.append((child, (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except OSError:
                continue
            todo.append(child)
    return found


def hit_mid_run(tmp_path: Path, act) -> tuple[list[str], Path, int, str, float]:
    """Start the audit of 60 inputs in shards of 10, `act` on its process once a shard is
    committed; its arguments, output, exit code, output text, and seconds from `act` to its end."""
    inputs = small_faces(tmp_path / "in", 60)
    out, log = tmp_path / "out", tmp_path / "run.log"
    args = audit_args(inputs, out, "--shard-size", "10", "--batch-size", "4")
    with open(log, "w") as sink:
        # SIGINT as a terminal leaves it: a suite started in the background (`cmd &`) ignores it, and so would the job
        job = subprocess.Popen([sys.executable, "-m", "jobs.audit", *args], cwd=ROOT, env=job_env(tmp_path), stdout=sink, stderr=sink,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 600
        while not list((out / "_shards").glob("*.json")):
            assert job.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no shard was committed in time"
            time.sleep(0.1)
        act(job)
        acted = time.monotonic()
        code = job.wait(timeout=900)
        return args, out, code, log.read_text(), time.monotonic() - acted
    finally:
        if job.poll() is None:
            job.kill()


def kill_workers(job: subprocess.Popen, runner_only: bool) -> None:
    """SIGKILL the Ray worker processes under `job` (not Ray's agents, which a node fate-shares)."""
    workers = [pid for pid, cmd in descendants(job.pid) if cmd.startswith("ray::") and not cmd.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))
               and (cmd.startswith("ray::run_shards") or not runner_only)]
    assert len(workers) >= (1 if runner_only else 3)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def exactly_once(out: Path, count: int) -> None:
    images, faces = rows(out), rows(out, "faces")
    assert len(images) == count and images.image_id.is_unique and set(images.status) == {"ok"}
    assert len(faces) == count and faces.image_id.is_unique and set(faces.image_id) == set(images.image_id)


@pytest.mark.parametrize("runner_only", [True, False], ids=["runner", "all-workers"])
def test_killed_ray_workers_mid_run_leave_exactly_one_row_per_input(tmp_path, runner_only):
    """The process that runs the pipeline, or every Ray worker process at once (actors, tasks, that
    process), is killed once a shard is committed."""
    args, out, code, text, _ = hit_mid_run(tmp_path, lambda job: kill_workers(job, runner_only))

    assert "Traceback" not in text, text[-3000:]
    if code == 1:  # allowed: one line that says to rerun, and a rerun that completes
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].endswith("run the same command again"), text[-3000:]
        rerun = run_job("jobs.audit", args, job_env(tmp_path))
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    else:
        assert code == 0 and "a new run takes the" in text, text[-3000:]
    exactly_once(out, 60)
    assert len(list((out / "_shards").glob("*.json"))) == 6 and not (out / "_staging").exists()


def test_ctrl_c_stops_within_seconds_with_one_line_and_the_rerun_completes(tmp_path):
    args, out, code, text, took = hit_mid_run(tmp_path, lambda job: job.send_signal(signal.SIGINT))

    assert code == 130 and took < 20, (code, took, text[-3000:])
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "run the same command again" in last
    assert not (out / "_lock.json").exists()

    rerun = run_job("jobs.audit", args, job_env(tmp_path))

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    done, todo = (int(n) for n in re.search(r"(\d+) already done, (\d+) to process", rerun.stderr).groups())
    assert done + todo == 60 and int(last.split()[1]) <= done and done >= 10  # a commit under way at the interrupt may end after it
    exactly_once(out, 60)


def test_every_file_with_an_image_extension_is_one_row_and_a_manifest_gives_the_same(tmp_path):
    """A broken link, a GIF and a TIFF each give a row; a directory named x.jpg, and a link back up the tree, none."""
    folder = tmp_path / "in"
    folder.mkdir()
    face = cv2.imread(str(next(small_faces(tmp_path / "faces", 1).iterdir())))
    cv2.imwrite(str(folder / "a.gif"), face)
    cv2.imwrite(str(folder / "b.tiff"), face)
    (folder / "c.jpg").symlink_to(tmp_path / "nothing.jpg")
    (folder / "x.jpg").mkdir()
    (folder / "x.jpg" / "loop").symlink_to(folder)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("uri\n" + "\n".join(str(folder / n) for n in ("a.gif", "b.tiff", "c.jpg")) + "\n")

    statuses = {}
    for source in (folder, manifest):
        out = tmp_path / f"out-{source.name}"
        result = run_job("jobs.audit", audit_args(source, out), job_env(tmp_path))
        assert result.returncode == 0, result.stderr[-3000:]
        images = rows(out)
        statuses[source.name] = dict(zip(images.source_uri.map(lambda u: Path(u).name), images.status))
        broken = images[images.status == "read_error"]
        assert list(broken.error) == [f"broken link: {folder / 'c.jpg'} -> {tmp_path / 'nothing.jpg'}"]

    assert statuses["in"] == statuses["manifest.csv"] == {"a.gif": "ok", "b.tiff": "ok", "c.jpg": "read_error"}

