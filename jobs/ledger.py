"""The output ledger: shards staged piece by piece, each committed by one marker, read back.

A shard (jobs/listing.py) goes through the pipeline in pieces of a batch each. The last stage
writes a piece's tables under `_staging/shard-K/<table>/pNNNNNNNN-<unique>.<ext>`, named by the
piece's first input and unique to the task that wrote it, and hands the piece's counts and file
names on. The process that runs the pipeline takes each piece that comes out of it once; when a
shard's pieces hold all its inputs, a commit task merges exactly those files into
`<table>/shard-K-NNN.parquet` (and .tar), starting a new file at FILE_BYTES, then writes the
marker `_shards/shard-K.json` (the digest of the shard's ids, counts, file names) and removes the
staging. Whatever Ray re-executes (lost objects, retried tasks, restarted actors) only adds
staging pieces that nothing reads; a shard that has a marker is never written again. A rerun
reads the markers, one per shard, removes the staging and every file no marker names, and runs
the shards without one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io as stdio
import json
import tarfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
import schemas.frames
from codeformer_core import storage
from codeformer_core.statuses import OK, RETRYABLE, SEGMENT_DONE
from jobs.listing import Listing
from jobs.stages.batches import Batch, clean, missing, rows_of

ROWS = "images"  # the table of every job with one row per input and its status
MARKERS = "_shards"
STAGING = "_staging"
RUN_RECORD = "_run.json"
OLD_LAYOUT = "_commits"  # part files with one commit record each, before shards
FILE_BYTES = 128 << 20  # a committed file ends once it holds this much; each shard's last file may hold less
ROW_GROUP_ROWS = 1000
ROW_GROUP_BYTES = 32 << 20
READ_THREADS = 16
PREFETCH = 4


@functools.lru_cache(maxsize=64)
def parquet_options(schema: pa.Schema) -> dict:
    """pq.write_table's options for `schema`: the binary columns hold image files, compressed
    already, so they are stored plain; snappy and dictionaries tried on them cost 2-3x the write of a
    table of PNG faces for 0.004% of its size (docs/BENCHMARKS.md). The leaf columns are named as
    Parquet names them, from an empty file of `schema`."""
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    written = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    leaves = [written.column(i) for i in range(len(written))]
    images = {c.path for c in leaves if c.physical_type == "BYTE_ARRAY" and c.logical_type.type == "NONE"}
    return {"use_dictionary": [c.path for c in leaves if c.path not in images], "compression": {c.path: "NONE" if c.path in images else "SNAPPY" for c in leaves}}

Tables = dict[str, pa.Table]
Files = dict[str, bytes]


class OutputMismatchError(Exception):
    pass


@dataclass(frozen=True)
class Resume:
    done: frozenset[int]  # shards committed whole
    retry: dict[int, tuple[int, int]]  # committed shards with retryable rows -> how many, their marker's generation
    inputs: int
    statuses: dict[str, int]
    items: int  # faces restored or pairs made, as the job counts them
    removed: int  # files of uncommitted work removed


def shard_name(shard: int) -> str:
    return f"shard-{shard:08d}"


def piece_name(positions: np.ndarray, frames: np.ndarray) -> str:
    """Named by its first row and the digest of all its rows' places (input in the shard, frame in
    a video): a task Ray runs again writes the same name, and a task of an earlier run still going,
    whose batch held other rows, can only add a piece nobody reads, never replace one that came out."""
    places = np.stack([positions, frames]).astype(np.int64).tobytes()
    return f"p{int(positions[0]):08d}-{int(frames[0]) + 2:07d}-{hashlib.sha256(places).hexdigest()[:12]}"


IMAGE, CLOSING = -2, -1  # frame_numbers of the rows that are not frames


def frame_numbers(batch: Batch) -> np.ndarray:
    """Each row's place in its video: its frame number, CLOSING for a segment's closing row, IMAGE for an image."""
    if "frame_index" not in batch:
        return np.full(len(batch["image_id"]), IMAGE, np.int64)
    video = [not missing(v) for v in batch["video"]]
    return np.array([int(f) if not missing(f) else CLOSING if v else IMAGE for f, v in zip(batch["frame_index"], video)], np.int64)


def images_table(batch: Batch, schema: pa.Schema, **columns: list) -> pa.Table:
    """The batch's `images/` rows: the columns every job has, then the job's own `columns`; for a
    video, one row per segment (its closing row), whose num_* columns are null and whose
    schemas.VIDEO_ROW columns say what the segment and the video hold. Frames' rows have none."""
    frames = frame_numbers(batch)
    rows = np.flatnonzero(frames < 0)
    segment = frames[rows] == CLOSING
    cells = [json.loads(batch["video"][i]) if closing else {} for i, closing in zip(rows, segment)]
    status = [OK if s == SEGMENT_DONE else str(s) for s in np.asarray(batch["status"])[rows]]
    common = {
        "source_uri": [str(batch["source_uri"][i]) for i in rows],
        "image_id": [str(batch["image_id"][i]) for i in rows],
        "status": status,
        "error": [clean(batch["error"][i]) for i in rows],
        "width": [clean(batch["width"][i]) for i in rows],
        "height": [clean(batch["height"][i]) for i in rows],
        "kept": [clean(batch["kept"][i]) for i in rows] if "kept" in batch else [None] * len(rows),
    }
    own = {k: [None if closing and k.startswith("num_") else v[i] for i, closing in zip(rows, segment)] for k, v in columns.items()}
    if "segment" in schema.names:
        made = [int(batch["segment_rows"][i]) - 1 if closing else None for i, closing in zip(rows, segment)]
        own |= {"frames": made, "frame_start": [c.get("start") for c in cells], "frame_stop": [c.get("stop") for c in cells]}
        own |= {name: [c.get(key) for c in cells] for name, key in VIDEO_KEYS.items()}
    return schemas.conform(pa.table({**common, **own}), schema)


VIDEO_KEYS = {"segment": "segment", "fps": "fps", "duration": "duration", "frame_count": "frames", "codec": "codec", "audio_codec": "audio_codec"}


def frames_table(batch: Batch) -> pa.Table:
    """The batch's frames/ rows: one per decoded frame of a video."""
    rows = np.flatnonzero(frame_numbers(batch) >= 0)
    return schemas.conform(pa.table({
        "image_id": [str(batch["image_id"][i]) for i in rows],
        "source_uri": [str(batch["source_uri"][i]) for i in rows],
        "segment": [json.loads(batch["video"][i])["segment"] for i in rows],
        "frame_index": [int(batch["frame_index"][i]) for i in rows],
        "timestamp": [float(batch["timestamp"][i]) for i in rows],
        "status": [str(batch["status"][i]) for i in rows],
        "error": [clean(batch["error"][i]) for i in rows],
        "width": [clean(batch["width"][i]) for i in rows],
        "height": [clean(batch["height"][i]) for i in rows],
        "num_faces": [len(batch["affine"][i]) if "affine" in batch and not missing(batch["affine"][i]) else 0 for i in rows],
    }), schemas.frames.SCHEMA)


def stage(batch: Batch, output: str, items: str, make: Callable[[Batch], tuple[Tables, Files]]) -> Batch:
    """Write the batch's rows as staged pieces: per shard one of its images, and one of each video
    segment it holds rows of, so that a video's rows are together and in frame order once the
    pieces are sorted (Ray Data may bundle rows of inputs far apart into one batch). `make` turns a
    piece's rows into its tables (Parquet) and files (.tar), and frames' rows make frames/; `items`
    is the table whose rows the job counts. One row out per piece, for the process that commits
    shards: its images (`inputs`), and for its segment, how many of its rows and, from the
    segment's closing row, how many the segment has (`segments`)."""
    shards, positions = np.asarray(batch["shard"], np.int64), np.asarray(batch["position"], np.int64)
    frames = frame_numbers(batch)
    groups = np.stack([shards, np.where(frames == IMAGE, -1, positions)], axis=1)
    out: dict[str, list] = {"shard": [], "first": [], "inputs": [], "segments": [], "items": [], "statuses": [], "written": [], "rows": []}
    for shard, segment in np.unique(groups, axis=0):
        rows = np.flatnonzero((groups[:, 0] == shard) & (groups[:, 1] == segment))
        rows = rows[np.argsort(positions[rows], kind="stable")]
        part = rows_of(batch, rows.tolist())
        tables, files = make(part)
        if (frames[rows] >= 0).any():
            tables["frames"] = frames_table(part)
        first = [int(positions[rows[0]]), int(frames[rows[0]])]
        piece = piece_name(positions[rows], frames[rows])
        segments: dict[int, list] = {}
        for position, frame, total in zip(positions[rows], frames[rows], part.get("segment_rows", [None] * len(rows))):
            if frame != IMAGE:
                counted = segments.setdefault(int(position), [0, None])
                counted[0] += 1
                counted[1] = counted[1] if missing(total) else int(total)
        base = storage.join(output, STAGING, shard_name(int(shard)))
        written = []
        for name, table in tables.items():
            if table.num_rows:
                rel = f"{name}/{piece}.parquet"
                with storage.output_stream(storage.join(base, rel)) as stream:
                    pq.write_table(table, stream, **parquet_options(table.schema))
                written.append(rel)
        for name, data in files.items():
            rel = f"{name}/{piece}.tar"
            storage.write_bytes(storage.join(base, rel), data)
            written.append(rel)
        out["shard"].append(int(shard))
        out["first"].append(json.dumps(first))
        out["inputs"].append(int((frames[rows] == IMAGE).sum()))
        out["segments"].append(json.dumps(segments))
        out["items"].append(tables[items].num_rows)
        out["statuses"].append(json.dumps(Counter(tables[ROWS].column("status").to_pylist())))
        out["written"].append(json.dumps(written))
        out["rows"].append(json.dumps(positions[rows][frames[rows] < 0].tolist()))
    return {k: np.array(v) for k, v in out.items()}


def commit_shard(
    output: str, shard: int, digest: str, pieces: list[tuple[list[int], list[str], list[int]]], inputs: int, statuses: dict[str, int], items: int,
    generation: int = 0,
) -> dict:
    """Merge `pieces` ([first input, its frame], staged files, the inputs of its images/ rows) into
    the shard's files, then write its marker; what
    it added: {"shard", "inputs", "items"}. Generation 0 is the whole shard. Generation g > 0 holds
    the inputs that generation g - 1 left retryable, run again: the shard's images/ rows are written
    anew with theirs in place, its other files are kept and theirs added. A shard already committed
    at this generation (by a run that died before its driver heard of it, or by this task's earlier
    attempt) is left as it is: files are never rewritten under a marker that names them."""
    name = shard_name(shard)
    marker_uri = storage.join(output, MARKERS, f"{name}.json")
    staging = storage.join(output, STAGING, name)
    earlier = json.loads(storage.read_bytes(marker_uri)) if storage.file_size(marker_uri) is not None else None
    if earlier is not None and earlier.get("digest") == digest and earlier.get("generation", 0) >= generation:
        storage.delete_dir(staging)
        return {"shard": shard, "inputs": 0 if generation else earlier["inputs"], "items": 0 if generation else earlier["items"]}
    if generation and (earlier is None or earlier.get("digest") != digest or earlier.get("generation", 0) != generation - 1):
        raise ValueError(f"shard {shard}: no marker of generation {generation - 1} to retry in {output}")
    by_file: dict[tuple[str, str], list[str]] = {}
    places: list[int] = []  # of the images/ rows, in the order of the staged files
    for _, written, rows in sorted(pieces, key=lambda piece: piece[0]):
        for rel in written:
            table, piece = rel.split("/")
            by_file.setdefault((table, piece.rsplit(".", 1)[1]), []).append(storage.join(staging, rel))
        places += rows
    # Ray Data bundles blocks as they come, so a piece may hold rows of inputs far apart: the rows
    # are put in the order of their inputs here, which a retry's positions rely on.
    rows = pa.concat_tables(read_tables(by_file.pop((ROWS, "parquet")))).take(pa.array(np.argsort(places, kind="stable")))
    stem = f"{name}-r{generation}" if generation else name
    files, kept, replaced = [], [], []
    if generation:
        replaced = [rel for rel in earlier["files"] if rel.startswith(f"{ROWS}/")]
        kept = [rel for rel in earlier["files"] if rel not in replaced]
        rows = with_retried(committed_rows(output, earlier), rows)
        statuses = dict(Counter(rows.column("status").to_pylist()))
    files += write_parquet(rows.to_batches(ROW_GROUP_ROWS), output, f"{ROWS}/{stem}")
    for (table, ext), uris in by_file.items():
        files += merge_tars(uris, output, f"{table}/{stem}") if ext == "tar" else write_parquet(read_tables(uris), output, f"{table}/{stem}")
    total_items = items + (earlier["items"] if generation else 0)
    marker = {"shard": shard, "digest": digest, "generation": generation, "inputs": inputs if not generation else earlier["inputs"],
              "statuses": statuses, "items": total_items, "files": sorted(kept + files)}
    storage.write_bytes(marker_uri, json.dumps(marker).encode())
    for rel in replaced:
        storage.delete(storage.join(output, rel))
    storage.delete_dir(staging)
    return {"shard": shard, "inputs": 0 if generation else inputs, "items": items}


def already_committed(output: str, shards: dict[int, int], digests: tuple[str, ...]) -> list[int]:
    """Of `shards` (shard -> the generation a run is to commit), those whose marker holds that
    generation already: committed by a run that died before its driver heard of it."""

    def done(shard: int, generation: int) -> bool:
        uri = storage.join(output, MARKERS, f"{shard_name(shard)}.json")
        if storage.file_size(uri) is None:
            return False
        marker = json.loads(storage.read_bytes(uri))
        return marker.get("digest") == digests[shard] and marker.get("generation", 0) >= generation

    with ThreadPoolExecutor(READ_THREADS) as pool:
        return [shard for shard, yes in zip(shards, pool.map(done, shards, shards.values())) if yes]


def committed_rows(output: str, marker: dict, columns: list[str] | None = None) -> pa.Table:
    """A committed shard's images/ rows, one per input in the shard's order."""
    return pa.concat_tables(read_tables([storage.join(output, rel) for rel in marker["files"] if rel.startswith(f"{ROWS}/")], columns))


def retryable(rows: pa.Table) -> np.ndarray:
    """Which of a shard's rows (in its order) failed in a way that may pass."""
    return np.isin(np.asarray(rows.column("status").to_pylist(), dtype=object), list(RETRYABLE))


def retry_positions(output: str, shard: int) -> np.ndarray:
    """The places in `shard` of its inputs whose committed rows are retryable."""
    marker = json.loads(storage.read_bytes(storage.join(output, MARKERS, f"{shard_name(shard)}.json")))
    return np.flatnonzero(retryable(committed_rows(output, marker, ["status"])))


def with_retried(rows: pa.Table, again: pa.Table) -> pa.Table:
    """A shard's `rows` with its retryable ones replaced by `again`, the rows of those inputs run again, in order."""
    retried = retryable(rows)
    if rows.filter(pa.array(retried)).column("image_id").to_pylist() != again.column("image_id").to_pylist():
        raise ValueError(f"the {again.num_rows} rows that came back are not those of the {retried.sum()} retried inputs")
    places = np.concatenate([np.flatnonzero(~retried), np.flatnonzero(retried)])
    return pa.concat_tables([rows.filter(pa.array(~retried)), again.cast(rows.schema)]).take(pa.array(np.argsort(places, kind="stable")))


def write_parquet(tables: Iterable[pa.Table | pa.RecordBatch], output: str, stem: str) -> list[str]:
    """`tables`, in order, into files `<stem>-NNN.parquet` of FILE_BYTES or more, but the last, in
    row groups of ROW_GROUP_ROWS rows or ROW_GROUP_BYTES, whichever comes first."""
    written: list[str] = []
    with contextlib.ExitStack() as files:
        writer, size, group = None, 0, []
        for table in [*tables, None]:
            group += [table] if table is not None else []
            full = sum(t.num_rows for t in group) >= ROW_GROUP_ROWS or sum(t.nbytes for t in group) >= ROW_GROUP_BYTES
            if not group or not (full or table is None):
                continue
            if writer is None or size >= FILE_BYTES:
                files.close()
                written.append(f"{stem}-{len(written):03d}.parquet")
                stream = files.enter_context(storage.output_stream(storage.join(output, written[-1])))
                writer, size = files.enter_context(pq.ParquetWriter(stream, group[0].schema, **parquet_options(group[0].schema))), 0
            rows = pa.Table.from_batches([b for t in group for b in (t.to_batches() if isinstance(t, pa.Table) else [t])], group[0].schema)
            writer.write_table(rows, row_group_size=rows.num_rows)
            size += rows.nbytes
            group = []
    return written


def merge_tars(uris: list[str], output: str, stem: str) -> list[str]:
    """Staged tar pieces, member by member, into `<stem>-NNN.tar` files of FILE_BYTES or more, but the last."""
    written: list[str] = []
    with contextlib.ExitStack() as files:
        tar, size = None, 0
        for uri in uris:
            if tar is None or size >= FILE_BYTES:
                files.close()
                written.append(f"{stem}-{len(written):03d}.tar")
                stream = files.enter_context(storage.output_stream(storage.join(output, written[-1])))
                tar, size = files.enter_context(tarfile.open(fileobj=stream, mode="w|")), 0
            data = storage.read_bytes(uri)
            with tarfile.open(fileobj=stdio.BytesIO(data)) as piece:
                for member in piece.getmembers():
                    tar.addfile(member, piece.extractfile(member))
            size += len(data)
    return written


def read_tables(uris: list[str], columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Each file's table in order, PREFETCH files read ahead, so that memory stays bounded."""

    def read(uri: str) -> pa.Table:
        filesystem, path = storage.filesystem_and_path(uri)
        return pq.read_table(path, filesystem=filesystem, columns=columns)

    with ThreadPoolExecutor(PREFETCH) as pool:
        ahead: deque = deque()
        for uri in uris:
            ahead.append(pool.submit(read, uri))
            if len(ahead) > PREFETCH:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def check_run(output: str, run: dict) -> None:
    """Refuse an output made by an older layout or with other settings; record `run` in a new one."""
    if storage.list_files(storage.join(output, OLD_LAYOUT)):
        raise OutputMismatchError(f"{output} was written by an earlier version of this tool (part files with _commits/ records); use a new --output")
    record_uri = storage.join(output, RUN_RECORD)
    if storage.file_size(record_uri) is None:
        storage.write_bytes(record_uri, json.dumps(run, indent=2).encode())
        return
    earlier = json.loads(storage.read_bytes(record_uri))
    changed = {k: (earlier.get(k), v) for k, v in run.items() if earlier.get(k) != v}
    if changed:
        details = "; ".join(f"{k}: {old!r} before, {new!r} now" for k, (old, new) in changed.items())
        raise OutputMismatchError(
            f"{output} already holds output of a run with other settings ({details}). Use another --output, or the same settings to resume."
        )


def marker(output: str, shard: int) -> dict | None:
    uri = storage.join(output, MARKERS, f"{shard_name(shard)}.json")
    return json.loads(storage.read_bytes(uri)) if storage.file_size(uri) is not None else None


def markers(output: str) -> list[dict]:
    uris = storage.list_files(storage.join(output, MARKERS), suffix=".json")
    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(lambda uri: json.loads(storage.read_bytes(uri)), uris))


def prepare(output: str, run: dict, tables: tuple[str, ...], listing: Listing) -> Resume:
    """Check the output's settings, read its markers, remove what no marker names; what is done.

    A marker counts when its shard still holds the same inputs (the digest of their ids): a shard
    committed under a smaller --limit, which now holds more, is run again, whole. A shard with
    retryable rows is done, and its retryable inputs are run again."""
    check_run(output, run)
    kept, retry = [], {}
    for marker in markers(output):
        shard = marker["shard"]
        if shard < listing.shards and marker.get("digest") == listing.digests[shard]:
            kept.append(marker)
            again = sum(marker["statuses"].get(s, 0) for s in RETRYABLE)
            if again:
                retry[shard] = (again, marker.get("generation", 0))
        else:
            storage.delete(storage.join(output, MARKERS, f"{shard_name(shard)}.json"))
    storage.delete_dir(storage.join(output, STAGING))
    statuses, items, inputs = totals(kept)
    removed = sweep(output, tables, {rel for marker in kept for rel in marker["files"]})
    return Resume(frozenset(m["shard"] for m in kept), retry, inputs, dict(statuses), items, removed)


def totals(markers: list[dict]) -> tuple[Counter, int, int]:
    """What `markers` hold together: inputs by status, items, inputs."""
    statuses: Counter = Counter()
    for marker in markers:
        statuses.update(marker["statuses"])
    return statuses, sum(m["items"] for m in markers), sum(m["inputs"] for m in markers)


def sweep(output: str, tables: tuple[str, ...], named: set[str]) -> int:
    """Remove every file of `tables` not in `named`, the files of the markers (others were left by a
    commit cut short); how many."""
    removed = 0
    for table in tables:
        for uri in storage.list_files(storage.join(output, table)):
            if f"{table}/{uri.rsplit('/', 1)[1]}" not in named:
                storage.delete(uri)
                removed += 1
    return removed


def committed_tables(output: str, name: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Each committed file of table `name`, one at a time (a few read ahead), so that memory stays flat."""
    files = [rel for marker in sorted(markers(output), key=lambda m: m["shard"]) for rel in marker["files"] if rel.startswith(f"{name}/")]
    yield from read_tables([storage.join(output, rel) for rel in files], columns)
