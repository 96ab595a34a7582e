"""Listing the inputs of a job into shards, streaming, without Ray."""

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import listing


def shards(out, made):
    return [listing.read_shard(str(out), k).to_pylist() for k in range(made.shards)]


def test_manifest_inputs_keep_row_order_once_each_with_the_first_rows_landmarks(tmp_path):
    face = [float(v) for v in range(10)]
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({
            "uri": ["c.png", "a.png", "b.png", "a.png", "c.png"],
            "landmarks": [[face], None, [face, face], [[0.0] * 10], None],
        }),
        manifest,
        row_group_size=2,
    )

    made = listing.listing(str(tmp_path / "out"), listing.Source(str(manifest)), None, 2)

    rows = [r for shard in shards(tmp_path / "out", made) for r in shard]
    assert [r["source_uri"] for r in rows] == [str(tmp_path / n) for n in ("c.png", "a.png", "b.png")]
    assert [r["manifest_landmarks"] for r in rows] == [[face], None, [face, face]]
    assert [r["image_id"] for r in rows] == [listing.image_id(r["source_uri"]) for r in rows]
    assert (made.rows, made.shards, made.shard_rows(1), made.missing_landmarks) == (3, 2, 1, 1)
    assert made.needs_detector(aligned=False) and not made.needs_detector(aligned=True)
    limited = listing.listing(str(tmp_path / "out2"), listing.Source(str(manifest)), 2, 2)
    assert [r["source_uri"] for r in shards(tmp_path / "out2", limited)[0]] == [str(tmp_path / n) for n in ("c.png", "a.png")]
    assert limited.digests == made.digests[:1]  # a shard holds the same inputs under any limit that covers it
    with pytest.raises(listing.UsageError, match="may raise --limit or drop it, not lower it"):
        listing.listing(str(tmp_path / "out"), listing.Source(str(manifest)), 2, 2)
    assert listing.listing(str(tmp_path / "out2"), listing.Source(str(manifest)), None, 2) == made


def test_a_folder_is_listed_in_the_order_of_full_paths_and_read_back_on_a_rerun(tmp_path):
    (tmp_path / "in" / "b").mkdir(parents=True)
    for name in ("a.jpg", "b-c.PNG", "b/x.webp", "b/notes.txt", "z.bmp"):
        (tmp_path / "in" / name).write_bytes(b"x")
    out = tmp_path / "out"

    made = listing.listing(str(out), listing.Source(str(tmp_path / "in")), None, 3)
    (tmp_path / "in" / "new.jpg").write_bytes(b"x")
    again = listing.listing(str(out), listing.Source(str(tmp_path / "in")), None, 3)

    expected = sorted(str(tmp_path / "in" / n) for n in ("a.jpg", "b-c.PNG", "b/x.webp", "z.bmp"))
    assert [r["source_uri"] for shard in shards(out, made) for r in shard] == expected
    assert again == made  # the listing is taken once per output
    with pytest.raises(listing.UsageError, match="--shard-size 3"):
        listing.listing(str(out), listing.Source(str(tmp_path / "in")), None, 4)


def test_seen_ids_keep_exactly_the_first_of_each():
    rng = random.Random(0)
    ids = [listing.image_id(str(rng.randrange(3000))) for _ in range(12000)]
    seen = listing.SeenIds()

    kept = [i for start in range(0, len(ids), 700) for i, new in zip(ids[start : start + 700], seen.first_seen(ids[start : start + 700])) if new]

    assert kept == list(dict.fromkeys(ids))
    assert len(seen.runs) < 12
    assert not seen.first_seen(ids[:5]).any() and not seen.first_seen([]).any()  # a chunk of repeats only adds no run
    assert seen.first_seen([listing.image_id("new")]).tolist() == [True]


def test_an_empty_manifest_is_a_usage_error(tmp_path):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": pa.array([], pa.string())}), manifest)

    with pytest.raises(listing.UsageError, match="no images"):
        listing.listing(str(tmp_path / "out"), listing.Source(str(manifest)), None, 10)
