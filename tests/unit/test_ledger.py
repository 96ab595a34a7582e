"""Commit records: what counts as done, and what a crash leaves behind."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import ledger

RUN = {"job": "restore", "fidelity": 0.5}


def table(ids):
    return pa.table({"image_id": ids})


def test_committed_parts_are_done_and_counted(tmp_path):
    out = str(tmp_path)
    ledger.prepare(out, RUN, ("images", "faces"))
    ledger.write_part(out, "part-a", {"images": table(["1", "2"]), "faces": table(["1"])}, ["1", "2"], {"ok": 1, "empty": 1}, 1)
    ledger.write_part(out, "part-b", {"images": table(["3"]), "faces": table([])}, ["3"], {"ok": 1}, 0)

    resume = ledger.prepare(out, RUN, ("images", "faces"))

    assert resume.done_ids == {"1", "2", "3"}
    assert resume.statuses == {"ok": 2, "empty": 1} and resume.items == 1
    assert not (tmp_path / "faces" / "part-b.parquet").exists()  # empty tables are not written


def test_parts_without_commit_are_removed(tmp_path):
    out = str(tmp_path)
    ledger.prepare(out, RUN, ("images", "faces"))
    ledger.write_part(out, "part-a", {"images": table(["1"]), "faces": table(["1"])}, ["1"], {"ok": 1}, 1)
    (tmp_path / "faces").mkdir(exist_ok=True)
    pq.write_table(table(["9"]), tmp_path / "faces" / "part-crashed.parquet")

    resume = ledger.prepare(out, RUN, ("images", "faces"))

    assert resume.orphans_removed == 1 and resume.done_ids == {"1"}
    assert sorted(p.name for p in (tmp_path / "faces").iterdir()) == ["part-a.parquet"]


def test_commit_whose_files_are_gone_is_not_done(tmp_path):
    out = str(tmp_path)
    ledger.prepare(out, RUN, ("images", "faces"))
    ledger.write_part(out, "part-a", {"images": table(["1"]), "faces": table(["1"])}, ["1"], {"ok": 1}, 1)
    (tmp_path / "faces" / "part-a.parquet").unlink()

    resume = ledger.prepare(out, RUN, ("images", "faces"))

    assert resume.done_ids == frozenset()
    assert not list((tmp_path / "images").iterdir()) and not list((tmp_path / ledger.COMMITS).iterdir())


def test_other_settings_are_refused(tmp_path):
    ledger.prepare(str(tmp_path), RUN, ("images",))

    with pytest.raises(ledger.OutputMismatchError, match="fidelity: 0.5 before, 0.7 now"):
        ledger.prepare(str(tmp_path), {**RUN, "fidelity": 0.7}, ("images",))
    assert json.loads((tmp_path / ledger.RUN_RECORD).read_text()) == RUN
