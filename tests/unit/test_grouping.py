"""Perceptual hashes, duplicate groups and identity clusters, with known answers."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score

from codeformer_core import grouping
from codeformer_core.grouping import DUPLICATE, IDENTITY_CAP, Faces, GroupConfig
from tests.helpers import varied_face

DEFAULT = GroupConfig()


def distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(grouping.hamming(np.array([grouping.phash(a)], np.uint64), np.array([grouping.phash(b)], np.uint64))[0])


def jpeg(face: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


@pytest.mark.parametrize("seed", range(6))
def test_phash_is_stable_under_reencoding_resizing_and_light_cropping(seed):
    face = varied_face(seed)
    cut = int(0.05 * 512) // 2
    copies = {
        "jpeg q60": jpeg(face, 60),
        "jpeg q90": jpeg(face, 90),
        "0.8x resize": cv2.resize(face, (410, 410), interpolation=cv2.INTER_AREA),
        "5% crop": cv2.resize(face[cut:-cut, cut:-cut], (512, 512), interpolation=cv2.INTER_LINEAR),
    }
    assert {name: distance(face, copy) <= DEFAULT.phash_distance for name, copy in copies.items()} == dict.fromkeys(copies, True)


def test_phash_of_different_faces_is_far_apart():
    hashes = [grouping.phash(varied_face(seed)) for seed in range(20)]
    distances = [int(grouping.hamming(np.array([a], np.uint64), np.array([b], np.uint64))[0]) for a, b in itertools.combinations(hashes, 2)]
    assert min(distances) > DEFAULT.phash_distance
    assert np.median(distances) >= 20


def blobs(clusters: int, per_cluster: int, spread: float = 0.8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around `clusters` random centres on the 512-d sphere: noise of norm `spread` added to each centre."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, 512)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(clusters), per_cluster)
    points = centres[labels] + rng.standard_normal((len(labels), 512)).astype(np.float32) * (spread / np.sqrt(512))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    order = rng.permutation(len(labels))
    return points[order], labels[order]


def faces_of(embeddings: np.ndarray, seed: int = 0, phash: np.ndarray | None = None, sha: np.ndarray | None = None) -> Faces:
    n = len(embeddings)
    rng = np.random.default_rng(seed)
    return Faces(
        face_id=np.arange(n, dtype=np.int64) * 7 + 3,
        embedding=embeddings,
        phash=rng.integers(0, 2**63, n, dtype=np.uint64) if phash is None else phash,
        sha256=np.array([f"{i:064x}" for i in range(n)]) if sha is None else sha,
        keep_value=rng.uniform(100, 200, n),
        face_size=rng.uniform(100, 200, n),
        sharpness=rng.uniform(0, 50, n),
        image_id=np.array([f"{i:020x}" for i in rng.permutation(n)]),
        face_index=np.zeros(n, dtype=np.int32),
    )


def identities(faces: Faces, decisions) -> np.ndarray:
    """Each face's identity cluster, or a label of its own where it has none."""
    found = dict(zip(decisions.column("face_id").to_pylist(), decisions.column("identity").to_pylist()))
    return np.array([found.get(i) if found.get(i) is not None else -1 - k for k, i in enumerate(faces.face_id)])


def test_grouping_recovers_planted_identity_clusters():
    points, planted = blobs(1000, 100)
    faces = faces_of(points)
    decisions = grouping.group(faces, DEFAULT, cells=48)
    assert adjusted_rand_score(planted, identities(faces, decisions)) >= 0.99
    # random hashes and distinct files: no duplicates
    assert (decisions.column("dup_group_size").to_numpy() == 1).all()


def test_result_does_not_depend_on_the_number_of_partitions():
    points, _ = blobs(150, 40, seed=1)
    rng = np.random.default_rng(2)
    copies = rng.choice(len(points), 300, replace=False)
    near = points[copies] + rng.standard_normal((300, 512)).astype(np.float32) * 0.01
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    embeddings = np.concatenate([points, near])
    hashes = rng.integers(0, 2**63, len(points), dtype=np.uint64)
    faces = faces_of(embeddings, phash=np.concatenate([hashes, hashes[copies] ^ np.uint64(0b111)]))
    results = [grouping.group(faces, DEFAULT, cells=cells) for cells in (1, 5, 23)]
    assert results[0].num_rows > 0
    assert all(r.equals(results[0]) for r in results[1:])
    dup_size = dict(zip(results[0].column("face_id").to_pylist(), results[0].column("dup_group_size").to_pylist()))
    assert all(dup_size[faces.face_id[i]] == 2 for i in copies)


def test_duplicates_need_a_close_hash_and_a_high_cosine_or_the_same_bytes():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((6, 512)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)

    def toward(v: np.ndarray, cosine: float) -> np.ndarray:
        other = rng.standard_normal(512).astype(np.float32)
        other -= other.dot(v) * v
        other /= np.linalg.norm(other)
        return cosine * v + np.sqrt(1 - cosine**2) * other

    h = np.uint64(0x0123456789ABCDEF)
    embeddings = np.stack([base[0], toward(base[0], 0.95), base[1], toward(base[1], 0.95), base[2], toward(base[2], 0.8), base[3], base[4]])
    phash = np.array([h, h ^ np.uint64(0b111), h + np.uint64(1), (h + np.uint64(1)) ^ np.uint64(2**40 - 1), h + np.uint64(2), h + np.uint64(2), h + np.uint64(3), h + np.uint64(4)], np.uint64)
    embeddings = np.concatenate([embeddings, base[5:6], toward(base[5], 0.3)[None]])
    phash = np.concatenate([phash, [h + np.uint64(5), h + np.uint64(5)]]).astype(np.uint64)
    sha = np.array(["a", "b", "c", "d", "e", "f", "same", "same", "photo", "photo"])
    faces = faces_of(embeddings, phash=phash, sha=sha)
    faces = Faces(**{**{f: getattr(faces, f) for f in Faces.__dataclass_fields__}, "face_index": np.array([0] * 9 + [1], np.int32)})
    decisions = grouping.group(faces, GroupConfig(identity_cosine=0.99), cells=1)
    size = dict(zip(decisions.column("face_id").to_pylist(), decisions.column("dup_group_size").to_pylist()))
    # the last two are two people in one photo: the same bytes, not the same face
    assert [size.get(int(i), 1) for i in faces.face_id] == [2, 2, 1, 1, 1, 1, 2, 2, 1, 1]
    assert decisions.schema.field("dropped_by").type == pa.list_(pa.string())


def test_keep_rule_is_the_best_face_and_caps_identities():
    embeddings = np.tile(np.eye(512, dtype=np.float32)[:1], (7, 1))
    faces = faces_of(embeddings, phash=np.array([0, 0, 1, 0xFFFFFFFF00000000, 0x0000FFFFFFFF0000, 0xFF00FF00FF00FF00, 0x0F0F0F0F0F0F0F0F], np.uint64))
    faces = Faces(
        **{
            **{f: getattr(faces, f) for f in Faces.__dataclass_fields__},
            "keep_value": np.array([150.0, 150, 150, 90, 80, 70, 60]),
            "face_size": np.array([150.0, 150, 150, 90, 80, 70, 60]),
            "sharpness": np.array([5.0, 5.0, 9.0, 1, 1, 1, np.nan]),
            "image_id": np.array(["b", "a", "c", "d", "e", "f", "g"]),
        }
    )
    decisions = grouping.group(faces, GroupConfig(max_per_identity=2), cells=1)
    by_id = {r["face_id"]: r for r in decisions.to_pylist()}
    rows = [by_id[int(i)] for i in faces.face_id]
    # faces 0-2 are one photo: the sharpest of the largest (face 2) stays; faces 3-6 are other photos of that person
    assert [r["dup_group_size"] for r in rows] == [3, 3, 3, 1, 1, 1, 1]
    assert [r["identity_size"] for r in rows] == [7] * 7
    assert [r["keep"] for r in rows] == [False, False, True, True, False, False, False]
    assert [r["dropped_by"] for r in rows] == [[DUPLICATE], [DUPLICATE], [], [], [IDENTITY_CAP], [IDENTITY_CAP], [IDENTITY_CAP]]


def test_identity_clusters_below_the_minimum_are_not_named():
    points, _ = blobs(3, 2, seed=4)
    decisions = grouping.group(faces_of(points), DEFAULT, cells=1)
    assert decisions.num_rows == 6
    assert decisions.column("identity").null_count == 6
    # nothing dropped: the column still has its type, for the faces/ schema
    assert decisions.column("keep").to_pylist() == [True] * 6
    assert decisions.schema.field("dropped_by").type == pa.list_(pa.string())
