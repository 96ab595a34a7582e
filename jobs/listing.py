"""The inputs of a run, listed once into the output and cut into shards.

Listing streams (codeformer_core.inputs says what an input can be): a folder or s3:// prefix is
walked page by page in the order of its full paths (S3's key order), Parquet files of images and
WebDataset tars in it expanded in place; a manifest, a Parquet file or a tar is read a chunk of rows
at a time in its own order. The unique
inputs go, in that order, into `<output>/_listing/inputs-NNNNN.parquet`, one row group per shard
of `shard_size` inputs. Shard k is therefore the same inputs on every rerun, and a rerun reads
this listing back instead of listing the source again. The driver holds one chunk at a time,
plus, for manifests (where a URI may repeat), 10 bytes per unique input to drop repeats.

For a job that takes videos, each video is probed (by the `probe` the driver gives, which spreads a
chunk's videos over Ray tasks) and listed as one row per segment of `segment_frames` frames, its
`video` cell (JSON) holding the segment and what the probe found; an image's is null."""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from codeformer_core import inputs as kinds
from codeformer_core import storage, video
from jobs.cli import UsageError

LANDMARKS_COLUMN = "landmarks"
LISTING_CHUNK = 8192
LISTING = "_listing"
RECORD = f"{LISTING}/listing.json"
SHARDS_PER_FILE = 64  # row groups of one listing file, so that reading one shard parses a small footer
PROGRESS_SECONDS = 10.0
PROBE_THREADS = 16  # probes in flight in one task: each is a few small reads

Probe = Callable[[list[str]], list[dict]]  # video URIs -> video.probe_uri of each, in order


def image_id(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:20]


def parse_landmarks(value: object) -> list[list[float]] | None:
    """A manifest cell -> a list of faces of 10 numbers each; a JSON string (CSV) or nested lists.

    An empty cell means: no landmarks given, detect."""
    if value is None or value == "":
        return None
    faces = json.loads(value) if isinstance(value, str) else value
    return [[float(v) for v in np.asarray(face, dtype=np.float64).reshape(-1)] for face in faces]


@dataclass(frozen=True)
class Listing:
    """What a run's listing holds: its source and settings, and how many inputs it found."""

    input: str
    uri_column: str | None
    limit: int | None
    shard_size: int
    rows: int
    landmarks: bool  # the manifest has a landmarks column
    missing_landmarks: int  # rows where that column is empty
    digests: tuple[str, ...]  # of each shard's image ids, which its commit marker must match
    segment_frames: int | None = None  # videos are listed, in segments of this many frames
    videos: int = 0
    image_column: str | None = None  # --image-column
    keep_columns: tuple[str, ...] = ()  # --keep-columns

    @property
    def shards(self) -> int:
        return -(-self.rows // self.shard_size)

    def shard_rows(self, shard: int) -> int:
        return min(self.shard_size, self.rows - shard * self.shard_size)

    def needs_detector(self, aligned: bool) -> bool:
        """Whole images some of which have no manifest landmarks."""
        return not aligned and (not self.landmarks or self.missing_landmarks > 0 or self.videos > 0)


def shard_location(output: str, shard: int) -> tuple[str, int]:
    """The listing file that holds `shard`, and its row group there."""
    return storage.join(output, LISTING, f"inputs-{shard // SHARDS_PER_FILE:05d}.parquet"), shard % SHARDS_PER_FILE


def read_shard(output: str, shard: int, columns: list[str] | None = None) -> pa.Table:
    uri, group = shard_location(output, shard)
    filesystem, path = storage.filesystem_and_path(uri)
    with filesystem.open_input_file(path) as f:
        return pq.ParquetFile(f).read_row_group(group, columns=columns)


@dataclass(frozen=True)
class Source:
    """What to list: --input and the flags that say how to read it."""

    input: str
    uri_column: str | None = None
    image_column: str | None = None
    keep_columns: tuple[str, ...] = ()


def listing(
    output: str, source: Source, limit: int | None, shard_size: int, segment_frames: int | None = None, probe: Probe | None = None
) -> Listing:
    """The listing `output` holds when it was made from the same source with the same settings;
    otherwise the source is listed anew (refused when the output was made from another source).
    With `segment_frames`, videos are listed too, probed by `probe`."""
    record = storage.join(output, RECORD)
    if storage.file_size(record) is not None:
        fields = json.loads(storage.read_bytes(record))
        if "keep_columns" not in fields:
            raise UsageError(f"{output} was listed by an earlier version of this tool (before Parquet and tar inputs); use a new --output, or remove this one")
        earlier = Listing(**{**fields, "digests": tuple(fields["digests"]), "keep_columns": tuple(fields["keep_columns"])})
        settings = (source.input, source.uri_column, source.image_column, source.keep_columns, shard_size, segment_frames)
        if (earlier.input, earlier.uri_column, earlier.image_column, earlier.keep_columns, earlier.shard_size, earlier.segment_frames) != settings:
            raise UsageError(
                f"{output} holds the output of --input {earlier.input} (--uri-column {earlier.uri_column}, --image-column {earlier.image_column}, "
                f"--keep-columns {','.join(earlier.keep_columns) or None}, --shard-size {earlier.shard_size}, --segment-frames "
                f"{earlier.segment_frames}); use another --output, or the same input and settings to resume"
            )
        if earlier.limit == limit:
            return earlier
        if earlier.limit is None or (limit is not None and limit < earlier.limit):
            raise UsageError(
                f"{output} holds the output of {'all inputs' if earlier.limit is None else f'--limit {earlier.limit}'}; a rerun may "
                "raise --limit or drop it, not lower it: use another --output"
            )
    storage.delete_dir(storage.join(output, LISTING))
    made = make(output, source, limit, shard_size, segment_frames, probe)
    storage.write_bytes(record, json.dumps(asdict(made), indent=1).encode())
    return made


def make(output: str, source: Source, limit: int | None, shard_size: int, segment_frames: int | None = None, probe: Probe | None = None) -> Listing:
    """List `source` into `output`'s listing files, streaming, each input once, at most `limit`;
    with `segment_frames`, videos too, a row per segment."""
    suffixes = storage.IMAGE_EXTENSIONS + (video.VIDEO_SUFFIXES if segment_frames else ())
    files, rows, missing, landmarks, videos, shards = 0, 0, 0, False, 0, ShardWriter(output, shard_size)
    last = time.monotonic()
    try:
        seen = SeenIds() if kinds.is_manifest(source.input, source.image_column) else None
        rows_of = kinds.iter_rows(source.input, LISTING_CHUNK, suffixes, source.uri_column, source.image_column, source.keep_columns, (LANDMARKS_COLUMN,))
        for chunk in rows_of:
            ids = in_chunks(chunk.column("source_uri"), image_id, pa.string())
            chunk = chunk.append_column("image_id", ids)
            if seen is not None:
                chunk = chunk.filter(pa.array(seen.first_seen(ids.to_pylist())))
            if limit is not None:
                chunk = chunk.slice(0, limit - files)
            files += chunk.num_rows
            if segment_frames:
                chunk, found = with_segments(chunk, segment_frames, probe)
                videos += found
            if LANDMARKS_COLUMN in chunk.column_names:
                landmarks = True
                parsed = landmarks_of(chunk.column(LANDMARKS_COLUMN))
                chunk = chunk.drop_columns([LANDMARKS_COLUMN]).append_column("manifest_landmarks", parsed)
                missing += parsed.null_count
            shards.add(chunk)
            rows += chunk.num_rows
            if time.monotonic() - last > PROGRESS_SECONDS:
                print(f"listing {source.input}: {files} inputs so far", file=sys.stderr)
                last = time.monotonic()
            if limit is not None and files >= limit:
                break
    except FileNotFoundError:
        raise UsageError(f"input {source.input} does not exist") from None
    except (OSError, ValueError, pa.ArrowInvalid, tarfile.TarError) as exc:
        raise UsageError(f"cannot read input {source.input}: {exc}") from None
    shards.close()
    if not rows:
        found = ", ".join(e.lstrip(".") for e in suffixes + kinds.CONTAINER_SUFFIXES)
        raise UsageError(f"no {'images or videos' if segment_frames else 'images'} ({found}) found under {source.input}")
    return Listing(source.input, source.uri_column, limit, shard_size, rows, landmarks, missing, tuple(shards.digests), segment_frames, videos,
                   source.image_column, source.keep_columns)


def with_segments(chunk: pa.Table, segment_frames: int, probe: Probe) -> tuple[pa.Table, int]:
    """`chunk` with a `video` column: null for an image, and each video's row repeated once per
    segment, the cell holding the segment and the probe's findings; how many videos it held. A video
    the probe could not read is one segment to its end, whose decode says what is wrong."""
    uris = chunk.column("source_uri").to_pylist()
    found = [u for u in uris if video.is_video(u)]
    infos = iter(probe(found) if found else ())
    take, cells = [], []
    for i, uri in enumerate(uris):
        if not video.is_video(uri):
            take.append(i)
            cells.append(None)
            continue
        info = next(infos)
        ranges = video.segments(info["frames"], segment_frames) if "status" not in info else [(0, None)]
        for k, (start, stop) in enumerate(ranges):
            take.append(i)
            cells.append(json.dumps({"segment": k, "start": start, "stop": stop, **info}))
    table = chunk.take(pa.array(take, pa.int64())).append_column("video", pa.array(cells, pa.string()))
    if LANDMARKS_COLUMN in table.column_names:  # a manifest's landmarks are of an image; a video's faces are detected
        table = table.set_column(table.schema.get_field_index(LANDMARKS_COLUMN), LANDMARKS_COLUMN,
                                 pa.array([None if c is not None else v for c, v in zip(cells, table.column(LANDMARKS_COLUMN).to_pylist())], table.schema.field(LANDMARKS_COLUMN).type))
    return table, len(found)


def probe_group(uris: list[str]) -> list[dict]:
    """video.probe_uri of each of `uris`, PROBE_THREADS at a time, in order."""
    with ThreadPoolExecutor(min(PROBE_THREADS, max(len(uris), 1))) as pool:
        return list(pool.map(video.probe_uri, uris))


def landmarks_of(column: pa.ChunkedArray) -> pa.ChunkedArray:
    try:
        return in_chunks(column, parse_landmarks, pa.list_(pa.list_(pa.float64())))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"manifest column {LANDMARKS_COLUMN!r} must hold lists of 10 numbers per face: {exc}") from None


class ShardWriter:
    """Rows in, listing files out: one row group per shard, SHARDS_PER_FILE shards per file."""

    def __init__(self, output: str, shard_size: int) -> None:
        self.output, self.shard_size = output, shard_size
        self.pending: list[pa.Table] = []
        self.buffered = 0
        self.shards = 0
        self.writer: pq.ParquetWriter | None = None
        self.digests: list[str] = []

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.buffered += table.num_rows
        while self.buffered >= self.shard_size:
            self.flush(self.shard_size)

    def close(self) -> None:
        if self.buffered:
            self.flush(self.buffered)
        if self.writer is not None:
            self.writer.close()

    def flush(self, rows: int) -> None:
        rest = pa.concat_tables(self.pending)
        shard, self.pending, self.buffered = rest.slice(0, rows), [rest.slice(rows)], rest.num_rows - rows
        if self.shards % SHARDS_PER_FILE == 0:
            if self.writer is not None:
                self.writer.close()
            uri, _ = shard_location(self.output, self.shards)
            filesystem, path = storage.filesystem_and_path(uri)
            filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
            self.writer = pq.ParquetWriter(path, shard.schema, filesystem=filesystem)
        self.writer.write_table(shard, row_group_size=rows)
        self.digests.append(hashlib.sha256("\n".join(shard.column("image_id").to_pylist()).encode()).hexdigest()[:16])
        self.shards += 1


RUN_IDS = 1 << 20  # sorted runs stop merging at this size, so a merge's transient copy stays at 20 MiB; each chunk
# is looked up in every run, which stays cheap up to some tens of millions of ids


class SeenIds:
    """An exact set of image ids, 10 bytes each and no Python object per id, kept as sorted runs
    merged like a binary counter up to RUN_IDS ids a run."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def first_seen(self, ids: list[str]) -> np.ndarray:
        """For each id, whether it is new: not added before, and its first occurrence in `ids`."""
        keys = np.array([bytes.fromhex(i) for i in ids], dtype="S10")
        new = np.zeros(len(keys), bool)
        new[np.unique(keys, return_index=True)[1]] = True
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, keys), len(run) - 1)
            new &= run[at] != keys
        if not new.any():
            return new
        self.runs.append(np.sort(keys[new]))
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]) and len(self.runs[-2]) + len(self.runs[-1]) <= RUN_IDS:
            merged = np.concatenate(self.runs[-2:])
            merged.sort()
            self.runs[-2:] = [merged]
        return new


def in_chunks(values: pa.ChunkedArray, fn: Callable[[object], object], type: pa.DataType) -> pa.ChunkedArray:
    """`fn` of each value, converted through Python LISTING_CHUNK values at a time."""
    return pa.chunked_array(
        [pa.array([fn(v) for v in values.slice(i, LISTING_CHUNK).to_pylist()], type) for i in range(0, len(values), LISTING_CHUNK)], type
    )
