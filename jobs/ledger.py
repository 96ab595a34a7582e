"""The output ledger: Parquet parts made visible by commit records, and the committed tables read back.

A write task writes its part files (one per table), then a commit record
`_commits/<part>.json` naming the part's files and image ids. A part without a commit
record is an orphan from a crash: `prepare` deletes it before work starts. Inputs whose
image id appears in a commit record are done, so a rerun skips them and never writes
them twice. This works the same for local folders and s3:// prefixes and needs nothing
from Ray's (beta) checkpointing.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from codeformer_core import storage
from jobs.stages.batches import Batch, clean

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


def part_name(image_ids: list[str]) -> str:
    """A part's name follows from the inputs it holds, so that Ray re-running the same write
    overwrites the same files instead of adding a second copy under a new name."""
    return f"part-{hashlib.sha256(chr(10).join(image_ids).encode()).hexdigest()[:32]}"


def images_table(batch: Batch, schema: pa.Schema, **columns: list) -> pa.Table:
    """The batch's `images/` rows: the columns every job has, then the job's own `columns`."""
    common = {
        "source_uri": [str(u) for u in batch["source_uri"]],
        "image_id": [str(i) for i in batch["image_id"]],
        "status": [str(s) for s in batch["status"]],
        "error": [clean(e) for e in batch["error"]],
        "width": [clean(v) for v in batch["width"]],
        "height": [clean(v) for v in batch["height"]],
    }
    return schemas.conform(pa.table({**common, **columns}), schema)


def commit(batch: Batch, output: str, tables: dict[str, pa.Table], items: int, files: dict[str, bytes] | None = None) -> Batch:
    """Write `tables` (and `files`) for the inputs of `batch` as one committed part; the counts the driver adds up."""
    image_ids = [str(i) for i in batch["image_id"]]
    counts = Counter(str(s) for s in batch["status"])
    write_part(output, part_name(image_ids), tables, image_ids, dict(counts), items, files)
    return {"inputs": np.array([len(image_ids)]), "items": np.array([items]), "statuses": np.array([json.dumps(counts)])}


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
            filesystem, path = storage.filesystem_and_path(storage.join(output, rel))
            filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
            pq.write_table(table, path, filesystem=filesystem)
            written.append(rel)
    for rel, data in (files or {}).items():
        storage.write_bytes(storage.join(output, rel), data)
        written.append(rel)
    record = {"part": part, "files": written, "image_ids": image_ids, "statuses": statuses, "items": items}
    storage.write_bytes(storage.join(output, COMMITS, f"{part}.json"), json.dumps(record).encode())


def _read_json(uri: str) -> dict:
    return json.loads(storage.read_bytes(uri))


def prepare(output: str, run: dict, folders: tuple[str, ...]) -> Resume:
    """Check that `output` holds nothing or an earlier run of the same settings, drop orphans, list done ids."""
    record_uri = storage.join(output, RUN_RECORD)
    if storage.file_size(record_uri) is not None:
        earlier = _read_json(record_uri)
        changed = {k: (earlier.get(k), v) for k, v in run.items() if earlier.get(k) != v}
        if changed:
            details = "; ".join(f"{k}: {old!r} before, {new!r} now" for k, (old, new) in changed.items())
            raise OutputMismatchError(
                f"{output} already holds output of a run with other settings ({details}). "
                "Use another --output, or the same settings to resume."
            )
    else:
        storage.write_bytes(record_uri, json.dumps(run, indent=2).encode())

    commit_uris = storage.list_files(storage.join(output, COMMITS), suffix=".json")
    with ThreadPoolExecutor(READ_THREADS) as pool:
        records = list(pool.map(_read_json, commit_uris))
    present = {
        f"{folder}/{uri.rsplit('/', 1)[1]}" for folder in folders for uri in storage.list_files(storage.join(output, folder))
    }
    # A record whose files are gone (removed by hand, or a write that outlived its crashed
    # driver and committed after a rerun swept its files) does not count: its inputs are redone.
    broken = [uri for uri, r in zip(commit_uris, records) if not set(r["files"]) <= present]
    for uri in broken:
        storage.delete(uri)
    records = [r for r in records if set(r["files"]) <= present]
    committed = {f for r in records for f in r["files"]}
    orphans = sorted(present - committed)
    for rel in orphans:
        storage.delete(storage.join(output, rel))
    statuses: Counter[str] = Counter()
    for r in records:
        statuses.update(r["statuses"])
    return Resume(
        done_ids=frozenset(i for r in records for i in r["image_ids"]),
        statuses=dict(statuses),
        items=sum(r["items"] for r in records),
        orphans_removed=len(orphans),
    )


def committed_tables(output: str, name: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Each committed part of table `name`, one at a time, so that memory stays flat."""
    for uri in storage.list_files(storage.join(output, COMMITS), suffix=".json"):
        for rel in _read_json(uri)["files"]:
            if rel.startswith(f"{name}/"):
                filesystem, path = storage.filesystem_and_path(storage.join(output, rel))
                yield pq.read_table(path, filesystem=filesystem, columns=columns)
