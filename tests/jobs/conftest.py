"""A real S3-protocol server (moto) on 127.0.0.1, and a way to run a job as users do."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_env():
    """Environment variables that point boto3, pyarrow and the jobs at a moto server on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    yield env
    server.stop()


def s3_client(s3_env: dict):
    return boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=s3_env["AWS_DEFAULT_REGION"],
    )


@pytest.fixture()
def s3(s3_env, monkeypatch):
    """A boto3 client of the moto server, with this test's environment pointed at it."""
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    return s3_client(s3_env)


def job_env(tmp_path: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(
        CODEFORMER_CACHE_DIR=str(tmp_path / "cache"),
        CODEFORMER_NO_DOWNLOAD="1",
        PYTHONPATH=str(ROOT),
        RAY_TMPDIR="/tmp",
    )
    env.update(extra or {})
    return env


def run_job(module: str, args: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
