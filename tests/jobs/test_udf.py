"""The Ray stages as plain functions on batches, without Ray."""

import numpy as np

from codeformer_core.samples import synthetic_face
from codeformer_core import codec
from jobs import _udf


def test_decode_stage_keeps_every_row_and_explains_failures():
    good = codec.encode_png(synthetic_face(0, 300))
    batch = {
        "source_uri": np.array(["a.png", "b.png", "c.png"]),
        "image_id": np.array(["1", "2", "3"]),
        "data": _udf.objects([good, b"", b"junk"]),
        "status": np.array(["ok", "ok", "read_error"]),
        "error": _udf.objects([None, None, "OSError: gone"]),
    }

    out = _udf.decode_aligned(batch, max_pixels=10**8).to_pydict()

    assert out["status"] == ["ok", "empty", "read_error"]
    assert out["error"][0] is None and "0 bytes" in out["error"][1] and out["error"][2] == "OSError: gone"
    assert (out["width"], out["height"]) == ([300, None, None], [300, None, None])
    assert [len(c) for c in out["crops"]] == [1, 0, 0] and len(out["crops"][0][0]) == 512 * 512 * 3
    assert "data" not in out


def test_read_stage_turns_missing_files_into_rows(tmp_path):
    (tmp_path / "a.png").write_bytes(b"abc")
    batch = {"source_uri": np.array([str(tmp_path / "a.png"), str(tmp_path / "gone.png")]), "image_id": np.array(["1", "2"])}

    out = _udf.read_images(batch)

    assert list(out["status"]) == ["ok", "read_error"] and out["data"][0] == b"abc" and out["error"][1]
