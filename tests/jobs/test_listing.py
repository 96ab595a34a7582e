"""Listing the inputs of a job from a manifest, without Ray."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import listing


def test_manifest_inputs_are_sorted_once_each_with_the_first_rows_landmarks(tmp_path):
    face = [float(v) for v in range(10)]
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({
            "uri": ["c.png", "a.png", "b.png", "a.png", "c.png"],
            "landmarks": [[face], None, [face, face], [[0.0] * 10], None],
        }),
        manifest,
    )

    inputs = listing.list_inputs(str(manifest), None, None)

    assert inputs.column("source_uri").to_pylist() == [str(tmp_path / n) for n in ("a.png", "b.png", "c.png")]
    assert inputs.column("manifest_landmarks").to_pylist() == [None, [face, face], [face]]
    assert inputs.column("image_id").to_pylist() == [listing.image_id(u) for u in inputs.column("source_uri").to_pylist()]
    assert listing.list_inputs(str(manifest), None, 2).column("source_uri").to_pylist() == [str(tmp_path / n) for n in ("a.png", "b.png")]


def test_an_empty_manifest_is_a_usage_error(tmp_path):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": pa.array([], pa.string())}), manifest)

    with pytest.raises(listing.UsageError, match="no images"):
        listing.list_inputs(str(manifest), None, None)
