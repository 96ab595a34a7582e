"""Resumable output: Parquet parts made visible by commit records.

A write task writes its part files (one per table), then a commit record
`_commits/<part>.json` naming the part's files and image ids. A part without a commit
record is an orphan from a crash: `prepare` deletes it before work starts. Inputs whose
image id appears in a commit record are done, so a rerun skips them and never writes
them twice. This works the same for local folders and s3:// prefixes and needs nothing
from Ray's (beta) checkpointing.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from codeformer_core import io

COMMITS = "_commits"
RUN_RECORD = "_run.json"
READ_THREADS = 16


class OutputMismatchError(Exception):
    pass


@dataclass(frozen=True)
class Resume:
    done_ids: frozenset[str]
    statuses: dict[str, int]
    items: int  # faces restored or pairs made, as the job counts them
    orphans_removed: int


def new_part_name() -> str:
    return f"part-{uuid.uuid4().hex}"


def write_part(
    output: str,
    part: str,
    tables: dict[str, pa.Table],
    image_ids: list[str],
    statuses: dict[str, int],
    items: int,
    files: dict[str, bytes] | None = None,
) -> None:
    """Write each non-empty table to `<output>/<name>/<part>.parquet` and each of `files` (relative
    path -> bytes) to its place, then commit them together."""
    written = []
    for name, table in tables.items():
        if table.num_rows:
            rel = f"{name}/{part}.parquet"
            filesystem, path = io.filesystem_and_path(io.join(output, rel))
            filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
            pq.write_table(table, path, filesystem=filesystem)
            written.append(rel)
    for rel, data in (files or {}).items():
        io.write_bytes(io.join(output, rel), data)
        written.append(rel)
    record = {"part": part, "files": written, "image_ids": image_ids, "statuses": statuses, "items": items}
    io.write_bytes(io.join(output, COMMITS, f"{part}.json"), json.dumps(record).encode())


def _read_json(uri: str) -> dict:
    return json.loads(io.read_bytes(uri))


def prepare(output: str, run: dict, folders: tuple[str, ...]) -> Resume:
    """Check that `output` holds nothing or an earlier run of the same settings, drop orphans, list done ids."""
    record_uri = io.join(output, RUN_RECORD)
    if io.file_size(record_uri) is not None:
        earlier = _read_json(record_uri)
        changed = {k: (earlier.get(k), v) for k, v in run.items() if earlier.get(k) != v}
        if changed:
            details = "; ".join(f"{k}: {old!r} before, {new!r} now" for k, (old, new) in changed.items())
            raise OutputMismatchError(
                f"{output} already holds output of a run with other settings ({details}). "
                "Use another --output, or the same settings to resume."
            )
    else:
        io.write_bytes(record_uri, json.dumps(run, indent=2).encode())

    commit_uris = io.list_files(io.join(output, COMMITS), suffix=".json")
    with ThreadPoolExecutor(READ_THREADS) as pool:
        records = list(pool.map(_read_json, commit_uris))
    present = {
        f"{folder}/{uri.rsplit('/', 1)[1]}" for folder in folders for uri in io.list_files(io.join(output, folder))
    }
    # A record whose files are gone (removed by hand, or a write that outlived its crashed
    # driver and committed after a rerun swept its files) does not count: its inputs are redone.
    broken = [uri for uri, r in zip(commit_uris, records) if not set(r["files"]) <= present]
    for uri in broken:
        io.delete(uri)
    records = [r for r in records if set(r["files"]) <= present]
    committed = {f for r in records for f in r["files"]}
    orphans = sorted(present - committed)
    for rel in orphans:
        io.delete(io.join(output, rel))
    statuses: Counter[str] = Counter()
    for r in records:
        statuses.update(r["statuses"])
    return Resume(
        done_ids=frozenset(i for r in records for i in r["image_ids"]),
        statuses=dict(statuses),
        items=sum(r["items"] for r in records),
        orphans_removed=len(orphans),
    )
