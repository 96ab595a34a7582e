"""The stages as plain functions and classes on batches, without Ray."""

import numpy as np
import pyarrow as pa

from codeformer_core import codec, inputs
from codeformer_core.align import FFHQ_TEMPLATE_512
from codeformer_core.http import HttpConfig
from codeformer_core.restore import Speed
from codeformer_core.samples import synthetic_face
from jobs.pipeline import Actor, fused, stage
from jobs.resources import MODEL
from jobs.stages import front, models
from jobs.stages.batches import Block, table


def test_decode_stage_keeps_every_row_and_explains_failures():
    good = codec.encode(synthetic_face(0, 300))
    batch = {
        "source_uri": np.array(["a.png", "b.png", "c.png"]),
        "image_id": np.array(["1", "2", "3"]),
        "data": np.array([good, b"", b"junk"], dtype=object),
        "status": np.array(["ok", "ok", "read_error"]),
        "error": np.array([None, None, "OSError: gone"], dtype=object),
    }

    out = front.decode_images(batch, max_pixels=10**8, aligned=True).to_pydict()

    assert out["status"] == ["ok", "empty", "read_error"]
    assert out["error"][0] is None and "0 bytes" in out["error"][1] and out["error"][2] == "OSError: gone"
    assert (out["width"], out["height"]) == ([300, None, None], [300, None, None])
    assert [len(c) for c in out["crops"]] == [1, 0, 0] and out["crops"][0][0].shape == (512, 512, 3)
    assert "data" not in out


def test_read_stage_turns_missing_files_into_rows(tmp_path):
    (tmp_path / "a.png").write_bytes(b"abc")
    listed = inputs.read_parquet_images(inputs.plain_rows([str(tmp_path / "a.png"), str(tmp_path / "gone.png")]))
    batch = Block(listed.append_column("image_id", pa.array(["1", "2"])))

    out = front.read_images(batch, attempts=2, http=HttpConfig()).to_pydict()

    assert out["status"] == ["ok", "read_error"] and out["data"][0] == b"abc" and out["error"][1].startswith("No such file or directory: ")


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

    out = front.align_faces(batch).to_pydict()

    assert out["status"] == ["ok", "no_face", "bad_landmarks", "decode_error"]
    assert [len(c) for c in out["crops"]] == [2, 0, 0, 0] and len(out["affine"][0][0]) == 6
    np.testing.assert_allclose(np.array(out["affine"][0][0]).reshape(2, 3), [[1, 0, 0], [0, 1, 0]], atol=1e-6)


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
    detect = stage(front.DetectFaces, MODEL, config=DetectConfig(max_faces=1), weights=None, weights_dir=None, synthetic=True, device="cpu")
    restore = stage(models.RestoreFaces, MODEL, weights=spec, weights_dir=None, expected_sha256=codeformer_weights(spec)[1].sha256,
                    device="cpu", speed=Speed(batch_size=1), fidelity=0.5)
    composed = fused(detect, stage(front.align_faces), restore)

    together = Actor(composed.parts, MODEL, "cpu", 1, 2)(table(batch)).to_pydict()
    detected = front.DetectFaces(**detect.parts[0][1])(batch)
    aligned = front.align_faces(Block(detected))
    separate = models.RestoreFaces(**restore.parts[0][1])(Block(aligned)).to_pydict()

    assert together["status"] == separate["status"] == ["ok"]
    assert len(together["restored"][0]) == 1
    for column in ("landmarks", "det_score", "affine"):
        assert together[column] == separate[column], column
    for column in ("crops", "restored"):
        np.testing.assert_array_equal(together[column][0], separate[column][0])


def test_measure_stage_measures_what_is_asked_and_fails_rows_not_the_job(monkeypatch):
    faces = [synthetic_face(i) for i in range(2)]
    batch = Block(table({"status": ["ok", "no_face"], "error": [None, None]}, crops=[faces, []], restored=[faces[::-1], []]))

    out = models.MeasureFaces(("sharpness",), None, None, "cpu", 8)(batch).to_pydict()
    nothing = models.MeasureFaces((), None, None, "cpu", 8)(batch).to_pydict()

    import json

    values = [json.loads(m) for m in out["measures"][0]]
    assert [sorted(v) for v in values] == [["restored_sharpness", "sharpness"]] * 2 and out["measures"][1] == []
    assert values[0]["sharpness"] == values[1]["restored_sharpness"] != values[0]["restored_sharpness"]
    assert [json.loads(m) for m in nothing["measures"][0]] == [{}, {}]

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(models, "measure_faces", out_of_memory)
    failed = models.MeasureFaces(("sharpness",), None, None, "cpu", 8)(batch).to_pydict()
    assert failed["status"] == ["measure_error", "no_face"] and len(failed["crops"][0]) == len(failed["restored"][0]) == 0
    assert failed["error"][0].startswith("RuntimeError: CUDA out of memory")
