"""Work over each video of an output after its run, in Ray tasks over groups of shards.

What needs a video's rows in frame order (its tracks, its restored video) cannot run per shard:
a video's segments may lie in several. So shards are cut into groups of GROUP_SHARDS or a few
more, each starting with an image or a video's first segment, so that every video lies in one
group, and a Ray task per group streams its shards' committed rows, which are in frame order. The
driver holds one listing file's `video` column at a time and IN_FLIGHT tasks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from codeformer_core import storage
from jobs import ledger, listing
from jobs.resources import TASK_CPUS
from jobs.runner import RunFailedError

GROUP_SHARDS = 16
IN_FLIGHT = 8
READ_ROWS = 256


def shard_groups(output: str, inputs: listing.Listing) -> Iterator[list[int]]:
    """Consecutive shards, GROUP_SHARDS or more, each group starting where no video continues; only groups that hold a video."""
    group: list[int] = []
    videos = False
    for shard, cells in video_cells(output, inputs):
        first = cells[0].as_py()
        if group and len(group) >= GROUP_SHARDS and (first is None or json.loads(first)["segment"] == 0):
            if videos:
                yield group
            group, videos = [], False
        group.append(shard)
        videos = videos or pc.any(pc.is_valid(cells)).as_py()
    if group and videos:
        yield group


def video_cells(output: str, inputs: listing.Listing) -> Iterator[tuple[int, pa.ChunkedArray]]:
    """Each shard's `video` column, read a listing file at a time."""
    for first in range(0, inputs.shards, listing.SHARDS_PER_FILE):
        uri, _ = listing.shard_location(output, first)
        filesystem, path = storage.filesystem_and_path(uri)
        with filesystem.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            for group in range(parquet.num_row_groups):
                yield first + group, parquet.read_row_group(group, columns=["video"]).column("video")


def committed_files(output: str, shards: list[int], table: str) -> list[str]:
    """The committed files of `table` of `shards`, in shard order."""
    return [storage.join(output, rel) for shard in shards for rel in (ledger.marker(output, shard) or {"files": []})["files"] if rel.startswith(f"{table}/")]


def frames_of(files: list[str], columns: list[str]) -> Iterator[list[dict]]:
    """The faces/ rows of videos in `files`, a frame's rows at a time, in frame order. They are in
    that order in the files unless a segment was retried (its rows are in a later generation's
    file): then the group's video rows are sorted in memory."""
    rows = video_rows(files, columns)
    if not in_frame_order(files):
        rows = iter(sorted(rows, key=lambda r: (r["image_id"], r["frame_index"], r["face_index"])))
    current: list[dict] = []
    for row in rows:
        if current and (row["image_id"], row["frame_index"]) != (current[0]["image_id"], current[0]["frame_index"]):
            yield current
            current = []
        current.append(row)
    if current:
        yield current


def video_rows(files: list[str], columns: list[str]) -> Iterator[dict]:
    for uri in files:
        filesystem, path = storage.filesystem_and_path(uri)
        with filesystem.open_input_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=READ_ROWS, columns=columns):
                yield from (row for row in batch.to_pylist() if row["frame_index"] is not None)


def in_frame_order(files: list[str]) -> bool:
    """Whether each video's rows in `files` come in increasing frame order, one video after another."""
    seen: set[str] = set()
    last: tuple[str, int] | None = None
    for row in video_rows(files, ["image_id", "frame_index"]):
        key = (row["image_id"], row["frame_index"])
        if last is not None and key[0] == last[0] and key[1] < last[1]:
            return False
        if last is None or key[0] != last[0]:
            if key[0] in seen:
                return False
            seen.add(key[0])
        last = key
    return True


def run_groups(output: str, inputs: listing.Listing, task: Callable[..., dict], args: tuple, start_ray: Callable[[], None], what: str) -> Iterator[dict]:
    """`task(output, group, *args)` in a Ray task per group of shard_groups (each tried 4 times);
    what each returns, as they finish. A task that fails every try stops the pass with
    RunFailedError, whose message names `what`."""
    import ray

    start_ray()
    remote = ray.remote(num_cpus=TASK_CPUS, max_retries=3, retry_exceptions=True)(task)
    running: list = []
    try:
        for group in shard_groups(output, inputs):
            running.append(remote.remote(output, group, *args))
            if len(running) >= IN_FLIGHT:
                ready, running = ray.wait(running, num_returns=1)
                yield from ray.get(ready)
        yield from ray.get(running)
    except ray.exceptions.RayError as exc:
        cause = (str(exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc).strip().splitlines() or [""])[-1][:300]
        raise RunFailedError(f"{what} failed ({cause}); the committed tables are whole: run the same command again to make them") from None
