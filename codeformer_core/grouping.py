"""Duplicate groups and identity clusters of faces, from their hashes and ArcFace embeddings.

Embeddings in, groups out, in bounded pieces that any scheduler can run:
1. `train_partitions`: spherical k-means (faiss) on a sample splits the embedding space into cells.
2. `nearest_partitions`: each face's home cell and the next nearest ones (`GroupConfig.probes`).
3. `partition_links`: one cell's faces (its members, and the faces of other cells that probe it)
   searched for their nearest neighbours among the members (faiss, exact inner product). Pairs
   that pass the duplicate or identity rule are contracted to the cell's local components, as
   one (face, root) link per face in a group, so that the links of a cell never exceed its faces.
4. `merge_links`: the links of every cell joined into the corpus' components (scipy), then
   `decide` names the groups and applies the keep rule.

A face's groups come from every pair found in some cell; with well-separated groups this does not
depend on the number of cells. `group` runs all of it in one process (tests, benchmarks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

NO_GROUP = -1
DUPLICATE = "duplicate"
IDENTITY_CAP = "identity_cap"
# A link row: a face, its local root in each graph (NO_GROUP where alone), and its keep-rule keys.
LINK_SCHEMA = pa.schema(
    [
        pa.field("face_id", pa.int64()),
        pa.field("dup_root", pa.int64()),
        pa.field("identity_root", pa.int64()),
        pa.field("keep_value", pa.float64()),
        pa.field("face_size", pa.float64()),
        pa.field("sharpness", pa.float64()),
        pa.field("image_id", pa.string()),
        pa.field("face_index", pa.int32()),
    ]
)
NEAR_SCHEMA = pa.schema([pa.field("a", pa.int64()), pa.field("b", pa.int64()), pa.field("cosine", pa.float32()), pa.field("phash_distance", pa.int32()), pa.field("rule", pa.string())])


@dataclass(frozen=True)
class GroupConfig:
    """Defaults: pHash Hamming distance <= 10 of 64 bits is imagededup's; ArcFace cosine >= 0.5 as one
    identity is immich's (cosine distance <= 0.5 with insightface's ArcFace), with its minimum of 3
    faces per person. A duplicate also needs cosine >= 0.9: the same photo re-encoded or resized keeps
    its identity almost exactly, while two photos of one sitting taken seconds apart may not."""

    phash_distance: int = 10
    dup_cosine: float = 0.9
    identity_cosine: float = 0.5
    min_identity_size: int = 3
    neighbours: int = 32  # nearest neighbours searched per face
    probes: int = 3  # cells each face is searched in: its own and the next nearest (bench/dedup.py: recall of planted copies)
    max_per_identity: int | None = None  # faces kept per identity cluster, the best first


def phash(face: np.ndarray) -> int:
    """64-bit DCT perceptual hash (imagehash.phash: 32x32 grey, DCT, 8x8 low frequencies above their median)."""
    bits = imagehash.phash(Image.fromarray(face)).hash.reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64))).astype(np.int32)


def partition_count(faces: int, partition_size: int) -> int:
    return max(1, math.ceil(faces / partition_size))


def train_partitions(sample: np.ndarray, cells: int, seed: int = 0) -> np.ndarray:
    """(cells, d) unit centroids of spherical k-means on `sample` (unit rows), seeded: the same sample gives the same cells."""
    x = np.ascontiguousarray(sample, dtype=np.float32)
    cells = min(cells, len(x))
    if cells <= 1:
        mean = x.mean(axis=0, keepdims=True)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)
    kmeans = faiss.Kmeans(x.shape[1], cells, niter=20, seed=seed, spherical=True, max_points_per_centroid=256, min_points_per_centroid=1)
    kmeans.train(x)
    return kmeans.centroids.copy()


def nearest_partitions(embeddings: np.ndarray, centroids: np.ndarray, probes: int) -> np.ndarray:
    """(n, probes) cell numbers of each embedding, nearest first; column 0 is its home cell."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, cells = index.search(np.ascontiguousarray(embeddings, dtype=np.float32), min(probes, len(centroids)))
    return cells


@dataclass(frozen=True)
class Faces:
    """Faces as columns: `face_id` unique, `embedding` (n, d) unit rows, `phash` uint64, `sha256` of the
    source bytes, and the keep rule's keys (keep_value higher is better, then face_size, sharpness,
    image_id, face_index)."""

    face_id: np.ndarray
    embedding: np.ndarray
    phash: np.ndarray
    sha256: np.ndarray
    keep_value: np.ndarray
    face_size: np.ndarray
    sharpness: np.ndarray
    image_id: np.ndarray
    face_index: np.ndarray

    def take(self, rows: np.ndarray) -> Faces:
        return Faces(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: list[Faces]) -> Faces:
        return Faces(*(np.concatenate([getattr(p, f) for p in parts]) for f in Faces.__dataclass_fields__))


def unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m, 2) pairs with a < b, each once."""
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def candidate_pairs(members: Faces, queries: Faces, neighbours: int, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's nearest members by cosine: (query rows, member rows, cosines), exact, in chunks of queries."""
    index = faiss.IndexFlatIP(members.embedding.shape[1])
    index.add(np.ascontiguousarray(members.embedding, dtype=np.float32))
    k = min(neighbours + 1, len(members.face_id))
    q_rows, m_rows, sims = [], [], []
    for start in range(0, len(queries.face_id), chunk):
        sim, idx = index.search(np.ascontiguousarray(queries.embedding[start : start + chunk], dtype=np.float32), k)
        rows = np.repeat(np.arange(start, start + len(idx)), k)
        found = idx.reshape(-1) >= 0
        q_rows.append(rows[found])
        m_rows.append(idx.reshape(-1)[found])
        sims.append(sim.reshape(-1)[found])
    return np.concatenate(q_rows), np.concatenate(m_rows), np.concatenate(sims)


def same_bytes_pairs(faces: Faces, cfg: GroupConfig) -> np.ndarray:
    """Faces of identical source files with the same face index and a close pHash (a manifest may give
    one file twice with other landmarks), as (face_id, face_id) pairs chaining each set."""
    key = np.char.add(faces.sha256.astype(str), np.char.mod(":%d", faces.face_index))
    order = np.argsort(key, kind="stable")
    same = np.flatnonzero(key[order][1:] == key[order][:-1])
    a, b = order[same], order[same + 1]
    close = hamming(faces.phash[a], faces.phash[b]) <= cfg.phash_distance
    return unique_pairs(faces.face_id[a[close]], faces.face_id[b[close]])


def local_roots(face_id: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Each face's component root (the smallest face_id in it) under `pairs`; NO_GROUP where alone."""
    labels = components(face_id, pairs)
    return np.where(group_sizes(labels) > 1, labels, NO_GROUP)


def components(face_id: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the faces `face_id` (unique) under `pairs` of their ids: the smallest id in each face's component."""
    order = np.argsort(face_id)
    ids = face_id[order]
    n = len(ids)
    if n == 0:
        return face_id.copy()
    a, b = np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1])
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    root = np.full(comp.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(root, comp, ids)
    labels = np.empty(n, dtype=np.int64)
    labels[order] = root[comp]
    return labels


def partition_links(members: Faces, visitors: Faces, cfg: GroupConfig, near: int = 0) -> tuple[pa.Table, pa.Table]:
    """One cell: the link rows (LINK_SCHEMA) of every face there in a duplicate or identity group, and
    up to `near` pairs on either side of the thresholds (NEAR_SCHEMA), for a person to judge them."""
    if len(members.face_id) == 0:
        return LINK_SCHEMA.empty_table(), NEAR_SCHEMA.empty_table()
    faces = Faces.concat([members, visitors])
    q, m, sim = candidate_pairs(members, faces, cfg.neighbours)
    a, b = faces.face_id[q], members.face_id[m]
    hashes = hamming(faces.phash[q], members.phash[m])
    duplicate = (sim >= cfg.dup_cosine) & (hashes <= cfg.phash_distance)
    dup_pairs = np.concatenate([unique_pairs(a[duplicate], b[duplicate]), same_bytes_pairs(faces, cfg)])
    identity_pairs = unique_pairs(a[sim >= cfg.identity_cosine], b[sim >= cfg.identity_cosine])
    ids, first = np.unique(faces.face_id, return_index=True)
    faces = faces.take(first)
    dup_root, identity_root = local_roots(ids, dup_pairs), local_roots(ids, identity_pairs)
    grouped = (dup_root != NO_GROUP) | (identity_root != NO_GROUP)
    g = faces.take(np.flatnonzero(grouped))
    links = pa.table(
        [g.face_id, dup_root[grouped], identity_root[grouped], g.keep_value, g.face_size, g.sharpness, g.image_id, g.face_index],
        schema=LINK_SCHEMA,
    )
    return links, near_pairs(a, b, sim, hashes, cfg, near)


def near_pairs(a: np.ndarray, b: np.ndarray, sim: np.ndarray, hashes: np.ndarray, cfg: GroupConfig, count: int) -> pa.Table:
    """Up to `count` pairs per rule closest to its threshold, on either side: identity by cosine;
    duplicate by pHash distance, among pairs whose cosine passes."""
    tables = []
    for rule, margin, eligible in (
        ("identity", np.abs(sim - cfg.identity_cosine), a != b),
        ("duplicate", np.abs(hashes - cfg.phash_distance - 0.5), (a != b) & (sim >= cfg.dup_cosine)),
    ):
        rows = np.flatnonzero(eligible)
        rows = rows[np.argsort(margin[rows], kind="stable")]
        lo, hi = np.minimum(a[rows], b[rows]), np.maximum(a[rows], b[rows])
        _, first = np.unique(np.stack([lo, hi], axis=1), axis=0, return_index=True)
        rows = rows[np.sort(first)][:count]
        lo, hi = np.minimum(a[rows], b[rows]), np.maximum(a[rows], b[rows])
        tables.append(pa.table([lo, hi, sim[rows].astype(np.float32), hashes[rows], [rule] * len(rows)], schema=NEAR_SCHEMA))
    return pa.concat_tables(tables)


def merge_links(links: pa.Table) -> pa.Table:
    """The corpus' components from every cell's links: per face in a group, its keys and its
    `dup_group` and `identity` (the smallest face id in each component; NO_GROUP where alone)."""
    face_id = links.column("face_id").to_numpy()
    ids, first = np.unique(face_id, return_index=True)
    faces = links.take(pa.array(first))
    out = {}
    for graph, root in (("dup_group", "dup_root"), ("identity", "identity_root")):
        roots = links.column(root).to_numpy()
        linked = roots != NO_GROUP
        labels = components(ids, np.stack([face_id[linked], roots[linked]], axis=1))
        out[graph] = np.where(np.isin(ids, np.concatenate([face_id[linked], roots[linked]])), labels, NO_GROUP)
    return faces.drop(["dup_root", "identity_root"]).append_column("dup_group", pa.array(out["dup_group"])).append_column("identity", pa.array(out["identity"]))


def decide(merged: pa.Table, cfg: GroupConfig) -> pa.Table:
    """Per grouped face: group sizes, `keep` and `dropped_by`. One face per duplicate group is kept,
    the best by keep_value, then face_size, then sharpness (higher first; missing last), then image_id
    and face_index; with `max_per_identity` the best so many kept faces of each identity cluster of
    at least `min_identity_size` faces stay. Identity clusters below that size get identity NO_GROUP."""
    n = merged.num_rows
    face_id = merged.column("face_id").to_numpy()
    dup = merged.column("dup_group").to_numpy()
    dup = np.where(dup == NO_GROUP, face_id, dup)
    ident = merged.column("identity").to_numpy()
    ident_size = group_sizes(ident)
    ident = np.where((ident == NO_GROUP) | (ident_size < cfg.min_identity_size), NO_GROUP, ident)
    best_first = best_order(merged).to_numpy()
    rank = np.empty(n, dtype=np.int64)
    rank[best_first] = np.arange(n)
    keep = first_of_groups(dup, rank)
    dropped = np.where(keep, "", DUPLICATE).astype(object)
    if cfg.max_per_identity is not None:
        clustered = keep & (ident != NO_GROUP)
        place = place_in_group(np.where(clustered, ident, NO_GROUP), rank)
        capped = clustered & (place >= cfg.max_per_identity)
        keep &= ~capped
        dropped[capped] = IDENTITY_CAP
    return pa.table(
        {
            "face_id": face_id,
            "dup_group": dup,
            "dup_group_size": group_sizes(dup),
            "identity": pa.array(np.where(ident == NO_GROUP, None, ident), pa.int64()),
            "identity_size": pa.array(np.where(ident == NO_GROUP, None, ident_size), pa.int64()),
            "keep": keep,
            "dropped_by": [[d] if d else [] for d in dropped],
        },
        schema=decide_schema(),
    )


def decide_schema() -> pa.Schema:
    return pa.schema([("face_id", pa.int64()), ("dup_group", pa.int64()), ("dup_group_size", pa.int64()), ("identity", pa.int64()),
                      ("identity_size", pa.int64()), ("keep", pa.bool_()), ("dropped_by", pa.list_(pa.string()))])


def best_order(faces: pa.Table) -> pa.Array:
    """Row numbers of `faces`, the best first by the keep rule (a missing measure counts as worst)."""
    def worst_missing(name: str) -> pa.Array:
        values = pc.cast(faces.column(name), pa.float64()).fill_null(-math.inf)
        return pc.if_else(pc.is_nan(values), -math.inf, values)

    keys = pa.table({"keep_value": worst_missing("keep_value"), "face_size": worst_missing("face_size"), "sharpness": worst_missing("sharpness"),
                     "image_id": faces.column("image_id"), "face_index": faces.column("face_index")})
    order = [("keep_value", "descending"), ("face_size", "descending"), ("sharpness", "descending"), ("image_id", "ascending"), ("face_index", "ascending")]
    return pc.sort_indices(keys, sort_keys=order)


def group_sizes(labels: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse]


def place_in_group(labels: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Each row's place (0 = best by `rank`) among the rows of its label."""
    order = np.lexsort((rank, labels))
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    place = np.empty(len(order), dtype=np.int64)
    place[order] = np.arange(len(order)) - run_start
    return place


def first_of_groups(labels: np.ndarray, rank: np.ndarray) -> np.ndarray:
    return place_in_group(labels, rank) == 0


def group(faces: Faces, cfg: GroupConfig, cells: int, seed: int = 0) -> pa.Table:
    """Every step in one process, cell by cell, as the dedup job runs them as tasks: the decisions of `decide`."""
    centroids = train_partitions(faces.embedding, cells, seed)
    probe = nearest_partitions(faces.embedding, centroids, cfg.probes)
    links = []
    for cell in range(len(centroids)):
        members = probe[:, 0] == cell
        visitors = (probe[:, 1:] == cell).any(axis=1)
        links.append(partition_links(faces.take(np.flatnonzero(members)), faces.take(np.flatnonzero(visitors)), cfg)[0])
    return decide(merge_links(pa.concat_tables(links)), cfg)
