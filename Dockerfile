# The image every node of a cluster runs (cluster/README.md: build and push): the CUDA runtime,
# Python 3.11, and this project with the versions pyproject.toml pins, run as a non-root user.
# tests/unit/test_container.py checks that the pins here are pyproject.toml's. Not built on the
# development machine, which has no Docker.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH CODEFORMER_CACHE_DIR=/home/ray/.cache/codeformer
# libgl1 and libglib2.0-0: OpenCV's; rsync and openssh-client: `ray up`'s; wget: KubeRay's health probes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgl1 libglib2.0-0 rsync openssh-client wget \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash ray \
    && python3.11 -m venv /opt/venv && chown -R ray:ray /opt/venv

USER ray
WORKDIR /home/ray/codeformer-data
# torch and torchvision first, in a layer of their own: the largest download changes least often.
# PyPI's Linux wheels of this torch carry the CUDA libraries.
RUN pip install "torch==2.14.1" "torchvision==0.29.2"
COPY --chown=ray:ray pyproject.toml README.md ./
COPY --chown=ray:ray codeformer_core codeformer_core
COPY --chown=ray:ray jobs jobs
COPY --chown=ray:ray schemas schemas
RUN pip install . && python -c "import torchvision.ops, cv2, av, ray, jobs.restore"
