"""Group synthetic 512-d face embeddings, 100k to 1M, with the library the dedup job runs as tasks.

    python bench/dedup.py [N ...]

Each size runs in its own process (so that its peak memory is its own): blobs on the sphere (100
faces per identity) with 1% planted near-duplicates, grouped by codeformer_core.grouping.group with
the job's defaults (cells of 20,000 faces on average, 3 probes). Prints one JSON line per size: seconds,
peak RSS, cells, the adjusted Rand index of the identities, the share of planted
copies grouped with their photo, and the share that share a cell with it for 1 to 6 probes.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import numpy as np

PARTITION_SIZE = 20000


def faces(n: int, seed: int = 0):
    from codeformer_core.grouping import Faces

    rng = np.random.default_rng(seed)
    base = n - n // 100
    centres = rng.standard_normal((max(base // 100, 1), 512)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.arange(base) // 100
    points = centres[labels] + rng.standard_normal((base, 512)).astype(np.float32) * (0.8 / np.sqrt(512))
    copies = rng.choice(base, n - base, replace=False)
    near = points[copies] + rng.standard_normal((n - base, 512)).astype(np.float32) * 0.01
    points = np.concatenate([points, near])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    hashes = rng.integers(0, 2**63, base, dtype=np.uint64)
    return Faces(
        face_id=np.arange(n, dtype=np.int64),
        embedding=points,
        phash=np.concatenate([hashes, hashes[copies] ^ np.uint64(0b101)]),
        sha256=np.array([f"{i:064x}" for i in range(n)]),
        keep_value=rng.uniform(100, 200, n),
        face_size=rng.uniform(100, 200, n),
        sharpness=rng.uniform(0, 50, n),
        image_id=np.array([f"{i:020x}" for i in range(n)]),
        face_index=np.zeros(n, dtype=np.int32),
    ), np.concatenate([labels, labels[copies]]), copies


def one(n: int) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from codeformer_core import grouping

    data, labels, copies = faces(n)
    cells = grouping.partition_count(n, PARTITION_SIZE)
    start = time.perf_counter()
    decisions = grouping.group(data, grouping.GroupConfig(), cells)
    seconds = time.perf_counter() - start
    found = dict(zip(decisions.column("face_id").to_pylist(), decisions.column("identity").to_pylist()))
    predicted = [found.get(i) if found.get(i) is not None else -1 - i for i in range(n)]
    dup = dict(zip(decisions.column("face_id").to_pylist(), decisions.column("dup_group_size").to_pylist()))
    # which planted copies share a cell with their photo (home of one among the other's nearest cells), per probes
    centroids = grouping.train_partitions(data.embedding[np.linspace(0, n - 1, min(n, cells * 256)).astype(int)], cells)
    original = grouping.nearest_partitions(data.embedding[copies], centroids, 6)
    copy = grouping.nearest_partitions(data.embedding[n - len(copies):], centroids, 6)
    reach = {p: round(float(((original[:, :1] == copy[:, :p]).any(1) | (copy[:, :1] == original[:, :p]).any(1)).mean()), 4) for p in range(1, 7)}
    return {
        "faces": n, "cells": cells, "seconds": round(seconds, 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "identity_ari": round(adjusted_rand_score(labels, predicted), 4),
        "planted_duplicates_found": round(float(np.mean([dup.get(int(c), 1) == 2 for c in copies])), 4),
        "copies_sharing_a_cell_by_probes": reach,
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(one(int(sys.argv[2]))), flush=True)
        sys.exit(0)
    for n in [int(a) for a in sys.argv[1:]] or [100_000, 300_000, 1_000_000]:
        subprocess.run([sys.executable, __file__, "--one", str(n)], check=True)
