"""The commit design under the faults and sizes of a cluster: a worker node lost mid-run, two jobs on
one output, and the number of files a thousand inputs make."""

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
from tests.jobs.conftest import ROOT, free_port, job_env, run_job


def small_faces(folder: Path, count: int, size: int = 64) -> Path:
    """`count` small JPEGs of a face-like blob on noise, taken as aligned faces."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for i in range(count):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        cv2.ellipse(image, (size // 2, size // 2), (size // 3, size * 2 // 5), 0, 0, 360, tuple(int(v) for v in rng.integers(80, 220, 3)), -1)
        cv2.imwrite(str(folder / f"face_{i:05d}.jpg"), image)
    return folder


def audit_args(inputs: Path, out: Path, *extra: str) -> list[str]:
    return ["--input", str(inputs), "--output", str(out), "--aligned", "--metrics", "sharpness", *extra]


def digests(out: Path) -> dict[str, str]:
    """Every file of the output but the report (rendered afresh only when something changed) and the lock."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "_lock.json"
    }


def test_a_worker_node_lost_mid_run_leaves_exactly_one_row_per_input_and_face(tmp_path):
    """Head with no CPUs and two 1-CPU workers (ray.cluster_utils); one worker is killed once two
    shards are committed, and a fresh one joins, as an autoscaler would add it."""
    from ray.cluster_utils import Cluster

    inputs = small_faces(tmp_path / "in", 200)
    out = tmp_path / "out"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        env = job_env(tmp_path, {"RAY_ADDRESS": cluster.address})
        args = audit_args(inputs, out, "--shard-size", "20", "--batch-size", "4")

        refused = run_job("jobs.audit", args, env)
        assert refused.returncode == 2 and "--shared-output" in refused.stderr and "Traceback" not in refused.stderr

        log = tmp_path / "run.log"
        with open(log, "w") as sink:
            job = subprocess.Popen([sys.executable, "-m", "jobs.audit", *args, "--shared-output"], cwd=ROOT, env=env, stdout=sink, stderr=sink)
        deadline = time.monotonic() + 600
        while len(list((out / "_shards").glob("*.json"))) < 2 and time.monotonic() < deadline:
            assert job.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        committed_at_kill = len(list((out / "_shards").glob("*.json")))
        cluster.remove_node(workers[0], allow_graceful=False)
        cluster.add_node(num_cpus=1)
        assert job.wait(timeout=900) == 0, log.read_text()[-3000:]

        images = pq.read_table(out / "images").to_pandas()
        faces = pq.read_table(out / "faces").to_pandas()
        assert committed_at_kill < 10, "the node was killed after the run had ended"
        assert len(images) == 200 and images.image_id.is_unique and set(images.status) == {"ok"}
        assert len(faces) == 200 and faces.image_id.is_unique and set(faces.image_id) == set(images.image_id)
        before = digests(out)

        rerun = run_job("jobs.audit", [*args, "--shared-output"], env)

        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "200 already done, 0 to process" in rerun.stderr
        assert digests(out) == before
    finally:
        cluster.shutdown()


def test_two_jobs_started_at_once_on_one_output_leave_one_row_per_input(tmp_path):
    inputs = small_faces(tmp_path / "in", 12)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "jobs.audit", *audit_args(inputs, out)]
    env = job_env(tmp_path)

    jobs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(job.wait(timeout=900), job.stderr.read()) for job in jobs]

    codes = sorted(code for code, _ in results)
    loser = next(err for code, err in results if code == 2)
    assert codes == [0, 2], results
    assert "error: " in loser and ("in use by a running job" in loser or "taken by a job that started at the same time" in loser)
    assert "Traceback" not in loser
    images = pq.read_table(out / "images").to_pandas()
    assert len(images) == 12 and images.image_id.is_unique
    assert not (out / "_lock.json").exists()


def test_a_thousand_inputs_make_one_file_per_table(tmp_path):
    inputs = small_faces(tmp_path / "in", 1000)
    out = tmp_path / "out"

    result = run_job("jobs.audit", audit_args(inputs, out, "--batch-size", "50"), job_env(tmp_path))

    assert result.returncode == 0, result.stderr[-3000:]
    for table in ("images", "faces"):
        files = sorted((out / table).iterdir())
        assert [f.name for f in files] == ["shard-00000000-000.parquet"]
        assert pq.read_metadata(files[0]).num_rows == 1000
    marker = json.loads((out / "_shards" / "shard-00000000.json").read_text())
    assert marker["inputs"] == 1000 and marker["statuses"] == {"ok": 1000}
    assert not (out / "_staging").exists()


def test_an_unreachable_cluster_is_a_clear_error_within_a_minute(tmp_path):
    inputs = small_faces(tmp_path / "in", 1)
    start = time.monotonic()

    result = run_job("jobs.audit", audit_args(inputs, tmp_path / "out", "--ray-address", f"127.0.0.1:{free_port()}"), job_env(tmp_path), timeout=120)

    assert result.returncode == 2 and "cannot reach the Ray cluster" in result.stderr, result.stderr[-2000:]
    assert time.monotonic() - start < 60
