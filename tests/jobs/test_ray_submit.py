"""`ray start --head` and `ray job submit`, as the cluster README tells users to run the job."""

import secrets
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pyarrow.parquet as pq
import pytest

from codeformer_core.samples import synthetic_face
from tests.jobs.conftest import ROOT, free_port, job_env

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture()
def ray_head(tmp_path):
    """A one-node Ray cluster with token auth, stopped afterwards."""
    dashboard = free_port()
    env = job_env(tmp_path, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)})
    start = [RAY, "start", "--head", f"--port={free_port()}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
             "--include-dashboard=true", "--num-cpus=2", "--disable-usage-stats"]
    started = subprocess.run(start, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    yield env, f"http://127.0.0.1:{dashboard}"
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_job_runs_through_ray_job_submit(ray_head, tmp_path):
    env, address = ray_head
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        cv2.imwrite(str(inputs / f"face{i}.jpg"), cv2.cvtColor(synthetic_face(40 + i), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    submit = [RAY, "job", "submit", "--address", address, "--", sys.executable, "-m", "jobs.restore",
              "--input", str(inputs), "--output", str(out), "--aligned", "--synthetic-weights", "--batch-size", "2"]

    for _ in range(30):  # the head's job agent may take a while to come up after `ray start`
        result = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in result.stderr:
            break
        time.sleep(2)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "inputs 2: ok 2" in result.stdout
    images = pq.read_table(out / "images").to_pandas()
    assert sorted(images.status) == ["ok", "ok"] and len(pq.read_table(out / "faces")) == 2
