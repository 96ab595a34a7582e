"""The container image's recipe against pyproject.toml, and the cluster files against the image that
cluster/README.md builds (Docker is not available here, so the image itself is never built)."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins(requirements: list[str]) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;,#\"]+)", requirement)
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def test_the_dockerfile_installs_the_versions_pyproject_pins_and_the_project_itself():
    wanted = pins(PROJECT["dependencies"])
    given = pins(re.findall(r'"([^"]+==[^"]+)"', DOCKERFILE))
    assert given and {name: wanted.get(name) for name in given} == given  # every pin it names first is pyproject's
    assert re.search(r"^RUN pip install \. ", DOCKERFILE, re.M)  # then the project, with the rest of its pins
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (p.rstrip("*") for p in packages):
        assert re.search(rf"^COPY .*\b{package} {package}$", DOCKERFILE, re.M), package


def test_the_image_is_a_cuda_runtime_with_the_python_pyproject_allows_run_by_a_user_that_is_not_root():
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu[\d.]+$", DOCKERFILE, re.M)
    python = re.search(r"python3\.(\d+)-venv", DOCKERFILE).group(1)
    assert PROJECT["requires-python"] == ">=3.10" and int(python) >= 10
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")


def test_both_cluster_files_run_the_image_the_cluster_readme_builds():
    built = re.search(r"^docker build -t (\S+) \.$", (ROOT / "cluster/README.md").read_text(), re.M).group(1)
    rayjob = yaml.safe_load((ROOT / "cluster/rayjob.yaml").read_text())
    images = re.findall(r"image: (\S+)", yaml.safe_dump(rayjob))
    assert images and set(images) == {built}
    assert yaml.safe_load((ROOT / "cluster/ray-up.yaml").read_text())["docker"]["image"] == built
