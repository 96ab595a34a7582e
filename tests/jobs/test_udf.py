"""The Ray stages as plain functions on batches, without Ray."""

import numpy as np
import pyarrow as pa

from codeformer_core import codec
from codeformer_core.align import FFHQ_TEMPLATE_512
from codeformer_core.restore import Speed
from codeformer_core.samples import synthetic_face
from jobs import _udf


def test_decode_stage_keeps_every_row_and_explains_failures():
    good = codec.encode_png(synthetic_face(0, 300))
    batch = {
        "source_uri": np.array(["a.png", "b.png", "c.png"]),
        "image_id": np.array(["1", "2", "3"]),
        "data": np.array([good, b"", b"junk"], dtype=object),
        "status": np.array(["ok", "ok", "read_error"]),
        "error": np.array([None, None, "OSError: gone"], dtype=object),
    }

    out = _udf.decode_images(batch, max_pixels=10**8, aligned=True).to_pydict()

    assert out["status"] == ["ok", "empty", "read_error"]
    assert out["error"][0] is None and "0 bytes" in out["error"][1] and out["error"][2] == "OSError: gone"
    assert (out["width"], out["height"]) == ([300, None, None], [300, None, None])
    assert [len(c) for c in out["crops"]] == [1, 0, 0] and len(out["crops"][0][0]) == 512 * 512 * 3
    assert "data" not in out


def test_source_stage_gives_the_numbered_blocks_of_the_inputs():
    inputs = pa.table({"source_uri": [f"{i}.png" for i in range(7)], "image_id": [str(i) for i in range(7)]})

    assert _udf.take_inputs({"id": np.array([1])}, inputs, batch_size=3).to_pydict() == {"source_uri": ["3.png", "4.png", "5.png"], "image_id": ["3", "4", "5"]}
    assert _udf.take_inputs({"id": np.array([2, 0])}, inputs, batch_size=3).column("image_id").to_pylist() == ["6", "0", "1", "2"]


def test_read_stage_turns_missing_files_into_rows(tmp_path):
    (tmp_path / "a.png").write_bytes(b"abc")
    batch = {"source_uri": np.array([str(tmp_path / "a.png"), str(tmp_path / "gone.png")]), "image_id": np.array(["1", "2"])}

    out = _udf.read_images(batch).to_pydict()

    assert out["status"] == ["ok", "read_error"] and out["data"][0] == b"abc" and out["error"][1]


def test_align_stage_sorts_out_faces_and_bad_landmarks():
    image = np.zeros((512, 512, 3), np.uint8)
    good = FFHQ_TEMPLATE_512.reshape(-1)
    batch = {
        "status": np.array(["ok", "ok", "ok", "decode_error"]),
        "error": np.array([None, None, None, "bad"], dtype=object),
        "width": np.array([512] * 4),
        "height": np.array([512] * 4),
        "pixels": np.array([image.tobytes()] * 3 + [None], dtype=object),
        "landmarks": np.array([np.array([good, good]), np.array([]), np.array([np.full(10, np.nan)]), np.array([])], dtype=object),
    }

    out = _udf.align_faces(batch).to_pydict()

    assert out["status"] == ["ok", "no_face", "bad_landmarks", "decode_error"]
    assert [len(c) for c in out["crops"]] == [2, 0, 0, 0] and len(out["affine"][0][0]) == 6
    np.testing.assert_allclose(np.array(out["affine"][0][0]).reshape(2, 3), [[1, 0, 0], [0, 1, 0]], atol=1e-6)


def numpy_batch(table):
    """How Ray Data hands an Arrow block to the next stage as numpy."""
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def test_fused_actor_gives_what_the_separate_stages_give():
    """Detector and restorer in one actor: the same faces, crops and restored pixels as the three stages in turn."""
    from codeformer_core.detect import DetectConfig
    from codeformer_core.weights import SYNTHETIC_SPEC_PREFIX, codeformer_weights

    scene = np.full((480, 640, 3), 100, np.uint8)
    scene[:240, :240] = synthetic_face(3, 240)
    batch = {
        "source_uri": np.array(["scene.png"]),
        "image_id": np.array(["1"]),
        "status": np.array(["ok"]),
        "error": np.array([None], dtype=object),
        "width": np.array([640]),
        "height": np.array([480]),
        "pixels": np.array([scene.tobytes()], dtype=object),
    }
    spec = f"{SYNTHETIC_SPEC_PREFIX}1"
    detect = {"config": DetectConfig(max_faces=1), "weights": None, "weights_dir": None,
              "synthetic": True, "device": "cpu", "threads": None}
    restore = {"weights": spec, "weights_dir": None, "expected_sha256": codeformer_weights(spec)[1].sha256,
               "device": "cpu", "speed": Speed(batch_size=1), "fidelity": 0.5, "threads": None}

    fused = _udf.DetectAndRestoreFaces(detect, restore)(batch).to_pydict()
    detected = _udf.DetectFaces(**detect)(batch)
    aligned = _udf.align_faces(numpy_batch(detected))
    separate = _udf.RestoreFaces(**restore)(numpy_batch(aligned)).to_pydict()

    assert fused["status"] == separate["status"] == ["ok"]
    assert len(fused["restored"][0]) == 1
    for column in ("landmarks", "det_score", "affine", "crops", "restored"):
        assert fused[column] == separate[column], column
