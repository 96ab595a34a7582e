"""Shards: staged pieces, one commit each, what a rerun counts as done, and what a crash leaves behind."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from codeformer_core.statuses import SEGMENT_DONE
from jobs import ledger
from jobs.listing import Listing
from jobs.runner import PIECE, OpenShard

RUN = {"job": "restore", "fidelity": 0.5}
TABLES = ("images", "faces", "shards")


def listing(rows: int, shard_size: int) -> Listing:
    """A listing whose shard k holds ids k-0, k-1, ..., as batch() makes them."""
    digests = tuple(digest(k, min(shard_size, rows - k * shard_size)) for k in range(-(-rows // shard_size)))
    return Listing("in", None, None, shard_size, rows, False, 0, digests)


def digest(shard: int, rows: int) -> str:
    return f"{shard}:{rows}"


def batch(shard: int, positions: list[int], statuses: list[str]) -> dict:
    return {
        "shard": np.array([shard] * len(positions)),
        "position": np.array(positions),
        "image_id": np.array([f"{shard}-{p}" for p in positions], dtype=object),
        "status": np.array(statuses, dtype=object),
    }


def tables(b: dict) -> tuple[dict, dict]:
    ids = [str(i) for i in b["image_id"]]
    faces = [i for i, s in zip(ids, b["status"]) if s == "ok"]
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        for i in faces:
            info = tarfile.TarInfo(f"{i}.json")
            info.size = 2
            t.addfile(info, io.BytesIO(b"{}"))
    images = pa.table({"image_id": ids, "status": [str(s) for s in b["status"]]})
    return {"images": images, "faces": pa.table({"image_id": faces})}, {"shards": tar.getvalue()}


def commit(out: str, staged: list[dict], shard: int, generation: int = 0, rows: int | None = None) -> dict:
    """Commit the staged pieces of `shard` (of `rows` inputs, default those staged) as the runner would; its marker."""
    counted = OpenShard()
    for r in staged:
        for k in range(len(r["shard"])):
            if r["shard"][k] == shard:
                counted.add(tuple(json.loads(r["first"][k])), *(r[c][k] for c in PIECE))
    pieces, inputs, statuses, items = counted.commit_args()
    added = ledger.commit_shard(out, shard, digest(shard, rows or inputs), pieces, inputs, statuses, items, generation)
    assert added["shard"] == shard
    return {**json.loads((Path(out) / ledger.MARKERS / f"shard-{shard:08d}.json").read_text()), "added": added}


def test_pieces_merge_into_one_file_per_table_in_input_order_and_a_marker(tmp_path):
    out = str(tmp_path)
    mixed = {k: np.concatenate([batch(0, [2, 3], ["ok", "empty"])[k], batch(1, [0], ["ok"])[k]]) for k in ("shard", "position", "image_id", "status")}
    staged = [ledger.stage(mixed, out, "faces", tables), ledger.stage(batch(0, [0, 1], ["ok", "ok"]), out, "faces", tables)]

    assert sorted(zip(staged[0]["shard"], staged[0]["first"], staged[0]["inputs"])) == [(0, "[2, -2]", 2), (1, "[0, -2]", 1)]
    marker = commit(out, staged, 0)

    assert marker["files"] == ["faces/shard-00000000-000.parquet", "images/shard-00000000-000.parquet", "shards/shard-00000000-000.tar"]
    assert pq.read_table(tmp_path / "images").column("image_id").to_pylist() == ["0-0", "0-1", "0-2", "0-3"]
    assert pq.read_table(tmp_path / "faces").column("image_id").to_pylist() == ["0-0", "0-1", "0-2"]
    with tarfile.open(tmp_path / "shards" / "shard-00000000-000.tar") as t:
        assert t.getnames() == ["0-0.json", "0-1.json", "0-2.json"]
    assert not (tmp_path / ledger.STAGING / "shard-00000000").exists()
    assert (tmp_path / ledger.STAGING / "shard-00000001").exists()  # another shard's piece waits for its commit
    assert json.loads((tmp_path / ledger.MARKERS / "shard-00000000.json").read_text())["inputs"] == 4


def test_a_shard_committed_once_is_not_rewritten(tmp_path):
    out = str(tmp_path)
    first = commit(out, [ledger.stage(batch(0, [0, 1], ["ok", "ok"]), out, "faces", tables)], 0)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "images").iterdir()}
    again_staged = [ledger.stage(batch(0, [0], ["ok"]), out, "faces", tables), ledger.stage(batch(0, [1], ["ok"]), out, "faces", tables)]

    again = commit(out, again_staged, 0)  # a run that died before its driver heard of the first commit

    assert first == {**again, "added": first["added"]} and again["added"] == {"shard": 0, "inputs": 2, "items": 2}
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "images").iterdir()} == files
    assert pq.read_table(tmp_path / "images").num_rows == 2 and not (tmp_path / ledger.STAGING / "shard-00000000").exists()


def test_pieces_of_a_task_still_running_from_an_earlier_run_are_never_merged(tmp_path):
    out = str(tmp_path)
    stale = ledger.stage(batch(0, [0, 1, 2], ["ok", "ok", "ok"]), out, "faces", tables)
    fresh = [ledger.stage(batch(0, [0], ["ok"]), out, "faces", tables), ledger.stage(batch(0, [1, 2], ["ok", "ok"]), out, "faces", tables)]
    ledger.stage(batch(0, [0, 1], ["ok", "ok"]), out, "faces", tables)  # written after the fresh pieces came out

    commit(out, fresh, 0)

    assert stale["first"][0] == fresh[0]["first"][0] and stale["written"][0] != fresh[0]["written"][0]
    assert pq.read_table(tmp_path / "images").column("image_id").to_pylist() == ["0-0", "0-1", "0-2"]


def test_large_shards_are_cut_into_files_of_the_file_size(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger, "FILE_BYTES", 1)
    monkeypatch.setattr(ledger, "ROW_GROUP_ROWS", 2)
    out = str(tmp_path)
    staged = [ledger.stage(batch(0, [p], ["ok"]), out, "faces", tables) for p in range(5)]

    marker = commit(out, staged, 0)

    assert [f for f in marker["files"] if f.startswith("images/")] == [f"images/shard-00000000-00{i}.parquet" for i in range(3)]
    assert [pq.read_metadata(tmp_path / "images" / f"shard-00000000-00{i}.parquet").num_rows for i in range(3)] == [2, 2, 1]


def test_files_hold_row_groups_of_many_pieces(tmp_path):
    out = str(tmp_path)
    staged = [ledger.stage(batch(0, [p], ["ok"]), out, "faces", tables) for p in range(5)]

    commit(out, staged, 0)

    meta = pq.read_metadata(tmp_path / "images" / "shard-00000000-000.parquet")
    assert (meta.num_rows, meta.num_row_groups) == (5, 1)


def test_a_rerun_counts_committed_shards_and_removes_the_rest(tmp_path):
    out = str(tmp_path)
    ledger.prepare(out, RUN, TABLES, listing(5, 2))
    commit(out, [ledger.stage(batch(0, [0, 1], ["ok", "ok"]), out, "faces", tables)], 0)
    commit(out, [ledger.stage(batch(2, [0], ["ok"]), out, "faces", tables)], 2)
    ledger.stage(batch(1, [0], ["ok"]), out, "faces", tables)  # shard 1 was not finished
    pq.write_table(pa.table({"image_id": ["x"]}), tmp_path / "images" / "shard-00000001-000.parquet")  # a commit cut short

    resume = ledger.prepare(out, RUN, TABLES, listing(5, 2))

    assert resume.done == {0, 2} and resume.inputs == 3 and resume.items == 3 and resume.statuses == {"ok": 3} and resume.retry == {}
    assert resume.removed == 1 and not (tmp_path / ledger.STAGING).exists()
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["shard-00000000-000.parquet", "shard-00000002-000.parquet"]


def test_a_shard_that_now_holds_other_inputs_is_redone(tmp_path):
    out = str(tmp_path)
    ledger.prepare(out, RUN, TABLES, listing(3, 2))
    commit(out, [ledger.stage(batch(0, [0, 1], ["ok", "ok"]), out, "faces", tables)], 0)
    commit(out, [ledger.stage(batch(1, [0], ["ok"]), out, "faces", tables)], 1)  # the last shard, cut by --limit 3

    resume = ledger.prepare(out, RUN, TABLES, listing(4, 2))

    assert resume.done == {0} and sorted(p.name for p in (tmp_path / "images").iterdir()) == ["shard-00000000-000.parquet"]


def test_other_settings_and_the_old_layout_are_refused(tmp_path):
    ledger.prepare(str(tmp_path), RUN, TABLES, listing(1, 1))

    with pytest.raises(ledger.OutputMismatchError, match="fidelity: 0.5 before, 0.7 now"):
        ledger.prepare(str(tmp_path), {**RUN, "fidelity": 0.7}, TABLES, listing(1, 1))
    assert json.loads((tmp_path / ledger.RUN_RECORD).read_text()) == RUN
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / ledger.OLD_LAYOUT).mkdir()
    (tmp_path / "old" / ledger.OLD_LAYOUT / "part-a.json").write_text("{}")
    with pytest.raises(ledger.OutputMismatchError, match="earlier version"):
        ledger.prepare(str(tmp_path / "old"), RUN, TABLES, listing(1, 1))


def test_a_retry_runs_only_the_retryable_inputs_and_replaces_their_rows(tmp_path):
    out = str(tmp_path)
    ledger.prepare(out, RUN, TABLES, listing(4, 4))
    commit(out, [ledger.stage(batch(0, [0, 1, 2, 3], ["ok", "unavailable", "read_error", "unavailable"]), out, "faces", tables)], 0)
    first_images = sorted(p.name for p in (tmp_path / "images").iterdir())

    resume = ledger.prepare(out, RUN, TABLES, listing(4, 4))
    places = ledger.retry_positions(out, 0)
    staged = [ledger.stage(batch(0, [1], ["ok"]), out, "faces", tables), ledger.stage(batch(0, [3], ["unavailable"]), out, "faces", tables)]
    marker = commit(out, staged, 0, generation=1, rows=4)

    assert resume.done == {0} and resume.retry == {0: (2, 0)} and places.tolist() == [1, 3]
    images = pq.read_table(tmp_path / "images")
    assert images.column("image_id").to_pylist() == ["0-0", "0-1", "0-2", "0-3"]
    assert images.column("status").to_pylist() == ["ok", "ok", "read_error", "unavailable"]
    assert sorted(pq.read_table(tmp_path / "faces").column("image_id").to_pylist()) == ["0-0", "0-1"]
    assert marker["generation"] == 1 and marker["statuses"] == {"ok": 2, "read_error": 1, "unavailable": 1} and marker["items"] == 2
    assert marker["added"] == {"shard": 0, "inputs": 0, "items": 1}
    assert first_images == ["shard-00000000-000.parquet"] and sorted(p.name for p in (tmp_path / "images").iterdir()) == ["shard-00000000-r1-000.parquet"]
    assert sorted(marker["files"]) == ["faces/shard-00000000-000.parquet", "faces/shard-00000000-r1-000.parquet", "images/shard-00000000-r1-000.parquet",
                                       "shards/shard-00000000-000.tar", "shards/shard-00000000-r1-000.tar"]

    again = commit(out, [ledger.stage(batch(0, [1, 3], ["ok", "ok"]), out, "faces", tables)], 0, generation=1, rows=4)  # a retried commit task

    assert again["added"]["items"] == 0 and {k: v for k, v in again.items() if k != "added"} == {k: v for k, v in marker.items() if k != "added"}
    assert ledger.already_committed(out, {0: 1}, (digest(0, 4),)) == [0] and ledger.already_committed(out, {0: 2}, (digest(0, 4),)) == []
    assert ledger.prepare(out, RUN, TABLES, listing(4, 4)).retry == {0: (1, 1)}


def test_rows_that_come_back_for_other_inputs_are_refused(tmp_path):
    out = str(tmp_path)
    commit(out, [ledger.stage(batch(0, [0, 1], ["unavailable", "ok"]), out, "faces", tables)], 0)

    with pytest.raises(ValueError, match="not those of the 1 retried inputs"):
        commit(out, [ledger.stage(batch(0, [1], ["ok"]), out, "faces", tables)], 0, generation=1, rows=2)


def test_rows_of_pieces_that_interleave_are_committed_in_input_order(tmp_path):
    """Ray Data bundles blocks as they come, so one piece may hold inputs 0 and 3 and another 1 and 2."""
    out = str(tmp_path)
    staged = [ledger.stage(batch(0, [3, 0], ["ok", "empty"]), out, "faces", tables), ledger.stage(batch(0, [2, 1], ["ok", "ok"]), out, "faces", tables)]
    marker = commit(out, staged, 0)
    rows = ledger.committed_rows(out, marker)
    assert rows.column("image_id").to_pylist() == ["0-0", "0-1", "0-2", "0-3"]
    assert rows.column("status").to_pylist() == ["empty", "ok", "ok", "ok"]


VIDEO_IMAGES = schemas.versioned("video_images", 1, [*schemas.IMAGE_ROW, pa.field("num_faces", pa.int32()), *schemas.VIDEO_ROW])


def video_batch(rows: list[tuple[int, int | None, int | None]]) -> dict:
    """Rows (position, frame or None, segment rows or None) of shard 0: position 0 an image, 1 a video's segment 1."""
    cell = json.dumps({"segment": 1, "start": 250, "stop": None, "fps": 25.0, "frames": 300, "duration": 12.0, "codec": "h264", "audio_codec": None})
    return {
        "shard": np.zeros(len(rows), int),
        "position": np.array([p for p, _, _ in rows]),
        "image_id": np.array(["img" if p == 0 else "vid" for p, _, _ in rows], dtype=object),
        "source_uri": np.array(["a.png" if p == 0 else "v.mp4" for p, _, _ in rows], dtype=object),
        "video": np.array([None if p == 0 else cell for p, _, _ in rows], dtype=object),
        "frame_index": np.array([f for _, f, _ in rows], dtype=object),
        "timestamp": np.array([None if f is None else f / 25 for _, f, _ in rows], dtype=object),
        "segment_rows": np.array([n for _, _, n in rows], dtype=object),
        "status": np.array(["ok" if p == 0 or f is not None else SEGMENT_DONE for p, f, _ in rows], dtype=object),
        "error": np.array([None] * len(rows), dtype=object),
        "width": np.array([64] * len(rows), dtype=object),
        "height": np.array([48] * len(rows), dtype=object),
        "affine": np.array([[[1.0] * 6] if f is not None or p == 0 else [] for p, f, _ in rows] + [None], dtype=object)[:-1],
    }


def video_tables(b: dict) -> tuple[dict, dict]:
    return {"images": ledger.images_table(b, VIDEO_IMAGES, num_faces=[len(a) for a in b["affine"]]), "faces": pa.table({"x": [1] * len(b["shard"])})}, {}


def test_a_piece_that_comes_out_twice_counts_once(tmp_path):
    staged = ledger.stage(batch(0, [0, 1], ["ok", "empty"]), str(tmp_path), "faces", tables)
    piece = (tuple(json.loads(staged["first"][0])), *(staged[c][0] for c in PIECE))
    state = OpenShard()
    assert state.add(*piece) == 2 and state.add(*piece) == 0
    pieces, inputs, statuses, items = state.commit_args()
    assert len(pieces) == 1 and inputs == 2 and statuses == {"ok": 1, "empty": 1} and items == 1


def test_a_segment_counts_once_all_its_rows_have_come_out_in_any_order(tmp_path):
    out = str(tmp_path)
    late = ledger.stage(video_batch([(1, 252, None), (1, None, 4)]), out, "faces", video_tables)  # the closing row says: 4 rows
    early = ledger.stage(video_batch([(0, None, None), (1, 250, None), (1, 251, None)]), out, "faces", video_tables)
    state = OpenShard()

    def whole(staged: dict) -> int:
        return sum(int(n) + state.count_segments(json.loads(rows)) for n, rows in zip(staged["inputs"], staged["segments"]))

    assert whole(late) == 0 and whole(early) == 2 and not state.segments
    assert len(early["first"]) == 2  # the image and the segment in pieces of their own: a video's rows never mix with others

    marker = commit(out, [late, early], 0, rows=2)
    images = ledger.committed_rows(out, marker).to_pylist()
    assert [(r["image_id"], r["status"], r["segment"], r["frames"], r["num_faces"]) for r in images] == [("img", "ok", None, None, 1), ("vid", "ok", 1, 3, None)]
    assert images[1]["frame_start"] == 250 and images[1]["frame_stop"] is None and images[1]["frame_count"] == 300
    frames = pq.read_table(tmp_path / "frames").sort_by("frame_index").to_pylist()
    assert [(f["frame_index"], f["segment"], f["num_faces"]) for f in frames] == [(250, 1, 1), (251, 1, 1), (252, 1, 1)]
    assert marker["statuses"] == {"ok": 2} and marker["inputs"] == 2


def test_image_bytes_are_stored_plain_and_every_other_column_compressed():
    import schemas.faces

    face = {"bytes": bytes(range(256)) * 40, "path": "a_0.png"}
    table = pa.Table.from_pylist(
        [{"image_id": f"a{i}", "source_uri": f"/in/a{i}.png", "face_index": 0, "affine": [1.0, 0, 0, 0, 1.0, 0], "bbox": [0.0, 0, 9, 9],
          "restored": face, "input_crop": face, "image_format": "png"} for i in range(3)],
        schema=schemas.faces.SCHEMA,
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, **ledger.parquet_options(table.schema))

    written = pq.ParquetFile(io.BytesIO(sink.getvalue()))
    columns = {written.metadata.row_group(0).column(i).path_in_schema: written.metadata.row_group(0).column(i) for i in range(written.metadata.num_columns)}
    plain = {path for path, c in columns.items() if c.compression == "UNCOMPRESSED"}
    assert plain == {"restored.bytes", "input_crop.bytes"}
    assert not any("DICT" in e for p in plain for e in columns[p].encodings)
    assert columns["bbox.list.element"].compression == columns["image_id"].compression == "SNAPPY"
    assert written.read().equals(table)
