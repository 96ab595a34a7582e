"""The dedup job's pass after its shards are committed: the whole corpus grouped cell by cell, as Ray tasks.

Under <output>/_dedup/, each file with a fixed name, written whole (a task Ray runs twice, or a
rerun after a crash, writes the same bytes):
- centroids.npy: spherical k-means cells, trained on a sample spread over the shards;
- assigned/bucket-B/group-G.parquet: the faces of a group of shards (about FACES_PER_ASSIGN),
  once per cell they are searched in, for the cells of bucket B (CELLS_PER_BUCKET of them), sorted
  by cell with one row group per cell: a cell's task reads its row group of its bucket's files;
- links/cell-N.parquet and near/cell-N.parquet: what each cell found (codeformer_core.grouping);
- decisions/from-F.parquet: every face in some group, by face_id (F the first), with its groups
  and keep decision, DECISIONS_PER_FILE to a file, so that a shard's task reads one or two;
Then faces/shard-K-000.parquet per shard (embedded/ rows with their decisions); the job then
writes kept.parquet, the report and, last, done.json with the settings and the committed shards,
which lets a rerun with nothing new skip all of it.

Memory per task: a cell's task holds its faces about `probes` times (members and the faces that
probe it), each about 2.3 KB with its 512 float32 and keys, plus its search results (neighbours x
16 bytes per face); an assign task its group's faces `probes` times; the merge one link row
(about 80 bytes) per grouped face and cell that found it, a few times that while it sorts.
Nothing in the driver grows with the faces: it holds one small entry per shard and per cell.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

import schemas
import schemas.dedup_embedded
import schemas.dedup_faces
from codeformer_core import grouping, storage
from codeformer_core.grouping import Faces, GroupConfig
from jobs import ledger
from jobs.audit_report import KEPT_MANIFEST as KEPT
from jobs.stages.dedup import FACE_BITS, PLACE_BITS

WORK = "_dedup"
DONE = f"{WORK}/done.json"
REPORT = "report.html"
CELLS_PER_BUCKET = 64  # cells whose assigned faces share a file of each assign group
FACES_PER_ASSIGN = 100_000  # faces an assign task reads (shards are grouped up to this)
SAMPLE_SHARDS = 256  # shards the k-means sample is taken from
DECISIONS_PER_FILE = 1 << 20
SAMPLE_PER_CELL = 256  # k-means sample: faiss's own cap of points per centroid
WINDOW = 32  # tasks in flight
GALLERY_MEMBERS = 8
NEAR_PAIRS = 12
ROW_GROUP = 65536
KEYS = ["face_id", "embedding", "phash", "content_sha256", "face_size", "det_score", "sharpness", "image_id", "face_index"]


@dataclass(frozen=True)
class Settings:
    """What the grouping depends on besides the embeddings: a rerun with other settings groups again."""

    config: GroupConfig
    keep_by: str
    partition_size: int
    gallery_size: int


def shard_of(face_id: int) -> int:
    return face_id >> (FACE_BITS + PLACE_BITS)


def shard_files(output: str, markers: list[dict]) -> list[tuple[int, list[str]]]:
    """Each committed shard with faces (of the output's `markers`), and the URIs of its embedded/ files."""
    found = []
    for marker in markers:
        files = [storage.join(output, rel) for rel in marker["files"] if rel.startswith("embedded/")]
        if files:
            found.append((marker["shard"], files))
    return sorted(found)


def faces_of(t: pa.Table, keep_by: str) -> Faces:
    def floats(name: str) -> np.ndarray:
        return t.column(name).to_numpy(zero_copy_only=False).astype(np.float64)

    return Faces(
        face_id=t.column("face_id").to_numpy(),
        embedding=embeddings(t),
        phash=t.column("phash").to_numpy(),
        sha256=np.asarray(t.column("content_sha256").to_pylist(), dtype=str),
        keep_value=floats(keep_by),
        face_size=floats("face_size"),
        sharpness=floats("sharpness"),
        image_id=np.asarray(t.column("image_id").to_pylist(), dtype=str),
        face_index=t.column("face_index").to_numpy(),
    )


def embeddings(t: pa.Table) -> np.ndarray:
    column = t.column("embedding").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), column.type.list_size)


def write_table(t: pa.Table, uri: str, row_groups: Iterable[pa.Table] | None = None) -> None:
    with storage.output_stream(uri) as stream, pq.ParquetWriter(stream, t.schema) as writer:
        for part in row_groups if row_groups is not None else [t]:
            writer.write_table(part, row_group_size=ROW_GROUP)


def train(output: str, shards: list[tuple[int, list[str]]], cells: int) -> np.ndarray:
    """Cells from about SAMPLE_PER_CELL embeddings per cell, taken evenly from the first file of at
    most SAMPLE_SHARDS shards spread evenly over the listing."""
    picked = [shards[i] for i in np.unique(np.linspace(0, len(shards) - 1, min(len(shards), SAMPLE_SHARDS)).round().astype(int))]
    per_shard = max(1, -(-cells * SAMPLE_PER_CELL // len(picked)))
    sample = []
    for _, files in picked:
        column = next(ledger.read_tables(files[:1], ["embedding"]))
        sample.append(embeddings(column.take(pa.array(np.unique(np.linspace(0, column.num_rows - 1, min(per_shard, column.num_rows)).astype(int))))))
    centroids = grouping.train_partitions(np.concatenate(sample), cells)
    buffer = io.BytesIO()
    np.save(buffer, centroids)
    storage.write_bytes(storage.join(output, WORK, "centroids.npy"), buffer.getvalue())
    return centroids


def assign_groups(shards: list[tuple[int, list[str]]], faces: int) -> list[tuple[int, list[str]]]:
    """Consecutive shards in groups of about FACES_PER_ASSIGN faces, each group's files together."""
    per = max(1, round(FACES_PER_ASSIGN * len(shards) / max(faces, 1)))
    return [(g, [uri for _, files in shards[i : i + per] for uri in files]) for g, i in enumerate(range(0, len(shards), per))]


def assign(output: str, group: int, files: list[str], centroids: np.ndarray, probes: int) -> None:
    """A group's faces, each once per cell it is searched in (`home` in its nearest), in one file per
    bucket of CELLS_PER_BUCKET cells, sorted by cell with one row group per cell."""
    t = pa.concat_tables(ledger.read_tables(files, KEYS))
    cells = grouping.nearest_partitions(embeddings(t), centroids, probes)
    rows = np.repeat(np.arange(t.num_rows), cells.shape[1])
    out = t.take(pa.array(rows)).append_column("cell", pa.array(cells.reshape(-1), pa.int32()))
    out = out.append_column("home", pa.array(np.tile(np.arange(cells.shape[1]) == 0, t.num_rows)))
    out = out.sort_by([("cell", "ascending"), ("face_id", "ascending")])
    cell = out.column("cell").to_numpy()
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
    ends = np.r_[starts[1:], len(cell)]
    for bucket in np.unique(cell // CELLS_PER_BUCKET):
        inside = [(s, e) for s, e in zip(starts, ends) if cell[s] // CELLS_PER_BUCKET == bucket]
        write_table(out, storage.join(bucket_uri(output, int(bucket)), f"group-{group:06d}.parquet"), (out.slice(s, e - s) for s, e in inside))


def bucket_uri(output: str, bucket: int) -> str:
    return storage.join(output, WORK, "assigned", f"bucket-{bucket:05d}")


def search_cell(output: str, cell: int, settings: Settings) -> None:
    """One cell's links and near pairs, from its row groups of its bucket's files."""
    filesystem, _ = storage.filesystem_and_path(output)
    paths = [storage.filesystem_and_path(uri)[1] for uri in storage.list_files(bucket_uri(output, cell // CELLS_PER_BUCKET), ".parquet")]
    if paths:
        t = pads.dataset(paths, filesystem=filesystem, format="parquet").to_table(filter=pc.field("cell") == cell)
        home = t.column("home").to_numpy(zero_copy_only=False)
        faces = faces_of(t, settings.keep_by)
        links, near = grouping.partition_links(faces.take(np.flatnonzero(home)), faces.take(np.flatnonzero(~home)), settings.config, NEAR_PAIRS)
    else:  # no face has this cell among its nearest
        links, near = grouping.LINK_SCHEMA.empty_table(), grouping.NEAR_SCHEMA.empty_table()
    write_table(links, storage.join(output, WORK, "links", f"cell-{cell:06d}.parquet"))
    write_table(near, storage.join(output, WORK, "near", f"cell-{cell:06d}.parquet"))


def read_dir(output: str, name: str, schema: pa.Schema) -> pa.Table:
    uris = storage.list_files(storage.join(output, WORK, name))
    return pa.concat_tables([schema.empty_table(), *ledger.read_tables(sorted(uris))])


def merge(output: str, settings: Settings) -> dict:
    """Every cell's links joined into the corpus' groups and decided; returns what the report shows of them."""
    decisions = grouping.decide(grouping.merge_links(read_dir(output, "links", grouping.LINK_SCHEMA)), settings.config)
    face_id = decisions.column("face_id").to_numpy()
    starts = []
    for start in range(0, decisions.num_rows, DECISIONS_PER_FILE):
        write_table(decisions.slice(start, DECISIONS_PER_FILE), decisions_uri(output, int(face_id[start])))
        starts.append(int(face_id[start]))
    near = read_dir(output, "near", grouping.NEAR_SCHEMA)
    return {
        "decision_files": starts,
        "dropped": {row["values"]: row["counts"] for row in pc.value_counts(pc.list_flatten(decisions.column("dropped_by"))).to_pylist()},
        "dup_sizes": size_counts(decisions, "dup_group", "dup_group_size"),
        "identity_sizes": size_counts(decisions, "identity", "identity_size"),
        "dup_gallery": largest(decisions, "dup_group", "dup_group_size", settings.gallery_size),
        "identity_gallery": largest(decisions, "identity", "identity_size", settings.gallery_size),
        "near": {rule: closest(near, rule, settings.config) for rule in ("duplicate", "identity")},
    }


def size_counts(decisions: pa.Table, label: str, size: str) -> list[list[int]]:
    """[size, how many groups have it], for sizes of 2 and more."""
    t = decisions.filter(pc.is_valid(decisions.column(label))).group_by(label).aggregate([(size, "max")])
    sizes, counts = np.unique(t.column(f"{size}_max").to_numpy(), return_counts=True)
    return [[int(s), int(c)] for s, c in zip(sizes, counts) if s > 1]


def largest(decisions: pa.Table, label: str, size: str, count: int) -> list[dict]:
    """The `count` largest groups (ties by label), each with its size and up to GALLERY_MEMBERS faces, kept first."""
    t = decisions.filter(pc.greater(decisions.column(size), 1)) if decisions.num_rows else decisions
    top = t.group_by(label).aggregate([(size, "max")]).sort_by([(f"{size}_max", "descending"), (label, "ascending")]).slice(0, count)
    out = []
    for row in top.to_pylist():
        members = t.filter(pc.equal(t.column(label), row[label])).sort_by([("keep", "descending"), ("face_id", "ascending")])
        out.append({"group": row[label], "size": row[f"{size}_max"], "faces": members.column("face_id").to_pylist()[:GALLERY_MEMBERS],
                    "keep": members.column("keep").to_pylist()[:GALLERY_MEMBERS]})
    return out


def closest(near: pa.Table, rule: str, cfg: GroupConfig) -> list[dict]:
    t = near.filter(pc.equal(near.column("rule"), rule))
    margin = np.abs(t.column("cosine").to_numpy() - cfg.identity_cosine) if rule == "identity" else np.abs(t.column("phash_distance").to_numpy() - cfg.phash_distance - 0.5)
    t = t.append_column("margin", pa.array(margin)).sort_by([("margin", "ascending"), ("a", "ascending"), ("b", "ascending")])
    rows, seen = [], set()
    for row in t.to_pylist():
        if (row["a"], row["b"]) not in seen:
            seen.add((row["a"], row["b"]))
            rows.append({k: row[k] for k in ("a", "b", "cosine", "phash_distance")})
        if len(rows) == NEAR_PAIRS:
            break
    return rows


def faces_uri(output: str, shard: int) -> str:
    return storage.join(output, "faces", f"{ledger.shard_name(shard)}-000.parquet")


def decisions_uri(output: str, first: int) -> str:
    return storage.join(output, WORK, "decisions", f"from-{first:020d}.parquet")


def covering(starts: list[int], shard: int) -> list[int]:
    """The decision files (by their first face_id, sorted) that may hold faces of `shard`."""
    low, high = shard << (FACE_BITS + PLACE_BITS), (shard + 1) << (FACE_BITS + PLACE_BITS)
    first = max(bisect.bisect_right(starts, low) - 1, 0)
    return starts[first : bisect.bisect_left(starts, high)]


def write_faces(output: str, shard: int, files: list[str], decision_files: list[int]) -> int:
    """The shard's faces/ file: its embedded/ rows with their groups (a face in none is its own group,
    kept), the groups read from `decision_files` (their first face ids); how many are kept."""
    t = pa.concat_tables(ledger.read_tables(files, [f.name for f in schemas.dedup_embedded.FACE]))
    low, high = shard << (FACE_BITS + PLACE_BITS), (shard + 1) << (FACE_BITS + PLACE_BITS)
    decided = pa.concat_tables([grouping.decide_schema().empty_table(), *ledger.read_tables([decisions_uri(output, s) for s in decision_files])])
    decided = decided.filter(pc.and_(pc.greater_equal(decided.column("face_id"), low), pc.less(decided.column("face_id"), high)))
    face_id, decided_id = t.column("face_id").to_numpy(), decided.column("face_id").to_numpy()
    at = np.minimum(np.searchsorted(decided_id, face_id), max(len(decided_id) - 1, 0))
    found = pa.array(decided_id[at] == face_id if len(decided_id) else np.zeros(len(face_id), bool))
    schema = schemas.dedup_faces.SCHEMA
    alone = {"dup_group": t.column("face_id"), "dup_group_size": 1, "identity": None, "identity_size": None, "keep": True, "dropped_by": []}
    for name, value in alone.items():
        otherwise = value if isinstance(value, pa.ChunkedArray) else pa.scalar(value, schema.field(name).type)
        picked = decided.column(name).take(pa.array(at)) if len(decided_id) else pa.nulls(t.num_rows, schema.field(name).type)
        t = t.append_column(name, pc.if_else(found, picked, otherwise))
    t = schemas.conform(t, schema)
    write_table(t, faces_uri(output, shard))
    return int(pc.sum(t.column("keep")).as_py() or 0)


def task(fn: Callable):
    """`fn` as a Ray task: run again when its worker dies, or when storage fails in a way that may pass."""
    import ray

    return ray.remote(num_cpus=1, max_retries=3, retry_exceptions=[OSError])(fn)


def run_tasks(fn: Callable, calls: Iterable[tuple], what: str) -> Iterator[object]:
    """`fn` as Ray tasks over `calls`, at most WINDOW in flight; their results in any order, with progress."""
    import ray

    remote = task(fn)
    pending, done, last = [], 0, time.monotonic()
    for args in calls:
        pending.append(remote.remote(*args))
        while len(pending) >= WINDOW:
            ready, pending = ray.wait(pending, num_returns=1)
            done += 1
            yield ray.get(ready[0])
            if time.monotonic() - last > 10:
                print(f"  {what}: {done} done", file=sys.stderr)
                last = time.monotonic()
    yield from ray.get(pending)


def regroup(output: str, settings: Settings, faces: int, shards: list[tuple[int, list[str]]]) -> dict:
    """Group the committed faces and write faces/; what the report shows. What an earlier grouping
    left is removed first (its done.json, kept.parquet and report before anything else)."""
    for name in (DONE, KEPT, REPORT):
        if storage.file_size(storage.join(output, name)) is not None:
            storage.delete(storage.join(output, name))
    for name in ("assigned", "links", "near", "decisions"):
        storage.delete_dir(storage.join(output, WORK, name))
    committed = {faces_uri(output, s) for s, _ in shards}
    for uri in storage.list_files(storage.join(output, "faces")):
        if uri not in committed:  # a shard no longer in the output (a smaller --limit)
            storage.delete(uri)
    start = time.monotonic()
    cells = grouping.partition_count(faces, settings.partition_size)
    import ray

    print(f"grouping {faces} faces of {len(shards)} shards in {cells} cells", file=sys.stderr)
    centroids = ray.get(task(train).remote(output, shards, cells)) if shards else np.zeros((0, 512), np.float32)
    cells = len(centroids)
    centroids_ref, probes = ray.put(centroids), settings.config.probes
    list(run_tasks(assign, ((output, g, files, centroids_ref, probes) for g, files in assign_groups(shards, faces)), "assigning faces to cells"))
    list(run_tasks(search_cell, ((output, c, settings) for c in range(cells)), "searching cells"))
    shown = ray.get(task(merge).remote(output, settings))
    starts = shown.pop("decision_files")
    kept = sum(run_tasks(write_faces, ((output, s, f, covering(starts, s)) for s, f in shards), "writing faces/"))
    print(f"grouped in {time.monotonic() - start:.1f} s", file=sys.stderr)
    return shown | {"faces": faces, "kept": kept, "settings": settings_record(settings)}


def settings_record(settings: Settings) -> dict:
    return json.loads(json.dumps(asdict(settings)))


def committed_digest(markers: list[dict]) -> str:
    """Which inputs the embedded faces are of: the shards, their inputs' digests and generations."""
    shards = sorted((m["shard"], m["digest"], m.get("generation", 0)) for m in markers)
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()


def mark_done(output: str, shown: dict, committed: str) -> None:
    """Written last, once faces/, kept.parquet and the report are."""
    storage.write_bytes(storage.join(output, DONE), json.dumps(shown | {"committed": committed}, sort_keys=True).encode())


def done(output: str, settings: Settings, committed: str) -> dict | None:
    """What an earlier grouping of the same faces with the same settings left, when it finished whole."""
    if any(storage.file_size(storage.join(output, name)) is None for name in (DONE, KEPT, REPORT)):
        return None
    shown = json.loads(storage.read_bytes(storage.join(output, DONE)))
    return shown if shown.get("settings") == settings_record(settings) and shown.get("committed") == committed else None
