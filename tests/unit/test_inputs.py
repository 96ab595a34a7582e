"""Every kind of input listed and read (codeformer_core.inputs), and http(s) inputs fetched politely
(codeformer_core.http) from a server on 127.0.0.1."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codeformer_core import inputs
from codeformer_core.http import HttpConfig, fetch, fetch_all, opted_out, retry_after
from codeformer_core.storage import IMAGE_EXTENSIONS
from tests.helpers import ImageServer, encoded, webdataset_tar

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def rows_of(source, **kw):
    args = {"uri_column": None, "given_column": None, "keep": (), **kw}
    return pa.concat_tables(inputs.iter_rows(str(source), 3, IMAGE_EXTENSIONS, args["uri_column"], args["given_column"], args["keep"]))


@pytest.fixture()
def corpus(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    faces = [encoded(seed, ".jpg", 64) for seed in range(5)]
    pq.write_table(pa.table({"caption": list("abcde"), "jpg": pa.array(faces, pa.binary())}), folder / "a.parquet", row_group_size=2)
    pq.write_table(pa.table({"image": pa.array([{"bytes": faces[0], "path": "local.jpg"}, {"bytes": faces[1], "path": "s3://b/k.jpg"}], IMAGE)}), folder / "b.parquet")
    webdataset_tar(folder / "c.tar", [("x/s0", {"jpg": faces[2], "json": b'{"url": "http://e/0", "w": 64}'}), ("x/s1", {"json": b"{}"}), ("x/s2", {"png": faces[3]})])
    (folder / "d.jpg").write_bytes(faces[4])
    pq.write_table(pa.table({"uri": ["d.jpg"]}), folder / "e_manifest.parquet")
    return folder, faces


def test_a_folder_lists_its_images_and_the_images_inside_its_parquet_and_tar_files_in_order(corpus):
    folder, _ = corpus
    rows = rows_of(folder, keep=("caption", "url"))
    expected = [*(f"{folder}/a.parquet#{i}" for i in range(5)), f"{folder}/b.parquet#0", "s3://b/k.jpg", f"{folder}/c.tar#x/s0", f"{folder}/c.tar#x/s2", f"{folder}/d.jpg"]
    assert rows.column("source_uri").to_pylist() == expected  # the Parquet manifest in the folder is not an input
    kept = rows.column("kept").to_pylist()
    assert [json.loads(k) for k in kept[:5]] == [{"caption": c} for c in "abcde"] and kept[5:7] == [None, None]
    assert json.loads(kept[7]) == {"url": "http://e/0"} and kept[8] is None and kept[9] is None
    assert rows.column("member").to_pylist()[:7] == [0, 1, 2, 3, 4, 0, 1] and set(rows.column("member_column").to_pylist()[:7]) == {"jpg", "image"}


def test_images_inside_parquet_and_tar_files_read_back_byte_for_byte(corpus):
    folder, faces = corpus
    rows = rows_of(folder)
    wanted = rows.take(pa.array([1, 2, 4, 6]))  # across row groups, skipping rows, and a second file
    read = inputs.read_parquet_images(wanted)
    assert read.column("data").to_pylist() == [faces[1], faces[2], faces[4], faces[1]] and set(read.column("status").to_pylist()) == {"ok"}
    tar = rows.filter(pa.compute.is_valid(rows.column("member_size"))).to_pylist()
    assert [inputs.read_member(r["container"], r["member"], r["member_size"], 1) for r in tar] == [faces[2], faces[3]]
    untouched = inputs.read_parquet_images(rows.slice(9))
    assert untouched.column("data").to_pylist() == [None] and untouched.column("status").to_pylist() == [None]


def test_a_parquet_row_without_bytes_and_a_damaged_file_are_rows_that_say_so(tmp_path):
    pq.write_table(pa.table({"jpg": pa.array([b"x", None], pa.binary())}), tmp_path / "a.parquet")
    read = inputs.read_parquet_images(rows_of(tmp_path / "a.parquet"))
    assert read.column("status").to_pylist() == ["ok", "read_error"] and "no image bytes" in read.column("error")[1].as_py()
    (tmp_path / "a.parquet").write_bytes(b"PAR1 damaged")
    listed = inputs.plain_rows(["x"]).to_pylist()[0] | {"container": str(tmp_path / "a.parquet"), "member": 0, "member_column": "jpg"}
    broken = inputs.read_parquet_images(pa.Table.from_pylist([listed], inputs.ROW))
    assert broken.column("status").to_pylist() == ["read_error"] and str(tmp_path / "a.parquet") in broken.column("error")[0].as_py()


def test_a_manifest_expands_the_parquet_and_tar_files_it_names_and_keeps_urls_as_given(corpus, tmp_path):
    folder, _ = corpus
    (tmp_path / "list.csv").write_text(f"uri,caption,landmarks\nhttps://h/a.jpg,first,\n{folder}/c.tar,,\nin/d.jpg,last,\n")
    rows = pa.concat_tables(inputs.iter_rows(str(tmp_path / "list.csv"), 8, IMAGE_EXTENSIONS, None, None, ("caption",), ("landmarks",)))
    assert rows.column("source_uri").to_pylist() == ["https://h/a.jpg", f"{folder}/c.tar#x/s0", f"{folder}/c.tar#x/s2", f"{tmp_path}/in/d.jpg"]
    assert rows.column("kept").to_pylist()[0] == '{"caption": "first"}' and "landmarks" in rows.column_names
    (tmp_path / "bad.csv").write_text(f"uri\n{folder}/e_manifest.parquet\n")
    with pytest.raises(ValueError, match="has no column of images"):
        rows_of(tmp_path / "bad.csv")


def test_the_image_column_is_the_first_of_image_type_or_the_one_named():
    schema = pa.schema([("caption", pa.string()), ("thumb", IMAGE), ("jpg", pa.binary())])
    assert inputs.image_column(schema, None) == "thumb" and inputs.image_column(schema, "jpg") == "jpg"
    assert inputs.image_column(pa.schema([("uri", pa.string())]), None) is None
    with pytest.raises(ValueError, match="not bytes"):
        inputs.image_column(schema, "caption")


def test_http_inputs_say_what_happened_and_are_retried_only_when_that_may_help():
    waits = []
    config = HttpConfig(attempts=2, timeout=0.5)
    with ImageServer(b"PNG", slow=1.5) as server:
        got = {p: fetch(f"{server.url}/{p}", config, sleep=waits.append) for p in ("ok.png", "gone.png", "busy.png", "noai.png", "slow.png")}
        assert {p: g.status for p, g in got.items()} == {"ok.png": "ok", "gone.png": "http_404", "busy.png": "ok", "noai.png": "optout", "slow.png": "http_timeout"}
        assert got["ok.png"].data == b"PNG" and got["busy.png"].data == b"PNG" and "noai" in got["noai.png"].error
        assert waits[0] == 1.0  # busy.png's Retry-After
        assert server.requests["/gone.png"] == 1 and server.requests["/busy.png"] == 2 and server.requests["/slow.png"] == 2
        assert fetch(f"{server.url}/noai.png", HttpConfig(honour_optout=False)).status == "ok"
        assert fetch(f"{server.url}/moved.png", config).data == b"PNG" and server.requests["/moved.png"] == 1
        assert [f.status for f in fetch_all([f"{server.url}/ok.png", f"{server.url}/gone.png"] * 3, config)] == ["ok", "http_404"] * 3
        assert all(a.startswith("codeformer-data/") for a in server.agents)


def test_optout_and_retry_after_are_read_as_img2dataset_and_rfc_9110_read_them():
    assert opted_out(["noindex, noai"]) and opted_out(["noimageai"]) and opted_out(["codeformer-data: noai"])
    assert not opted_out(["otherbot: noai"]) and not opted_out(["noindex"]) and not opted_out([])
    assert retry_after("3", 60) == 3 and retry_after("600", 60) == 60 and retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 60) == 0
    assert retry_after(None, 60) is None and retry_after("soon", 60) is None


def test_a_manifest_of_inputs_inside_parquet_and_tar_files_reads_those_inputs(corpus, tmp_path):
    """As a job's kept.parquet names them: `<parquet>#<row>`, `<tar>#<key>`; a row that is not there is left to fail its read."""
    folder, faces = corpus
    given = [f"{folder}/a.parquet#3", f"{folder}/c.tar#x/s2", f"{folder}/a.parquet#9", f"{folder}/c.tar#x/s1", f"{folder}/gone.tar#k"]
    pq.write_table(pa.table({"source_uri": given}), tmp_path / "kept.parquet")
    rows = inputs.read_parquet_images(rows_of(tmp_path / "kept.parquet"))
    assert rows.column("source_uri").to_pylist() == given
    assert rows.column("data").to_pylist()[0] == faces[3] and rows.column("container").to_pylist()[2:] == [None, None, None]
    tar = rows.to_pylist()[1]
    assert inputs.read_member(tar["container"], tar["member"], tar["member_size"], 1) == faces[3]
