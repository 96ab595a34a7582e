"""`ray start --head` and `ray job submit`, as the cluster README tells users to run the job."""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import pyarrow.parquet as pq
import pytest

from codeformer_core.samples import synthetic_face
from tests.jobs.conftest import ROOT, free_port, job_env

RAY = str(Path(sys.executable).parent / "ray")


def processes_under(temp_dir: str) -> list[int]:
    """Ids of the processes whose command line names `temp_dir`: the Ray cluster started there."""
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
        try:
            if temp_dir.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def stop_cluster(temp_dir: str) -> None:
    """End only this test's cluster (`ray stop` would end every Ray process on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_under(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        while processes_under(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)


@pytest.fixture()
def ray_head(tmp_path):
    """A one-node Ray cluster with token auth in a temp dir of its own, stopped afterwards."""
    dashboard = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: Ray's socket paths live under it
    env = job_env(tmp_path, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)})
    start = [RAY, "start", "--head", f"--port={free_port()}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
             "--include-dashboard=true", "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    try:
        started = subprocess.run(start, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield env, f"http://127.0.0.1:{dashboard}"
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_runs_through_ray_job_submit(ray_head, tmp_path):
    env, address = ray_head
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        cv2.imwrite(str(inputs / f"face{i}.jpg"), cv2.cvtColor(synthetic_face(40 + i), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    submit = [RAY, "job", "submit", "--address", address, "--", sys.executable, "-m", "jobs.restore",
              "--input", str(inputs), "--output", str(out), "--aligned", "--synthetic-weights", "--batch-size", "2", "--shared-output"]

    for _ in range(30):  # the head's job agent may take a while to come up after `ray start`
        result = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in result.stderr:
            break
        time.sleep(2)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "inputs 2: ok 2" in result.stdout
    images = pq.read_table(out / "images").to_pandas()
    assert sorted(images.status) == ["ok", "ok"] and len(pq.read_table(out / "faces")) == 2
