"""Checkpoint resolution and safe loading."""

import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch

from codeformer_core import weights
from codeformer_core.weights import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    build_codeformer,
    load_codeformer,
    read_checkpoint,
    resolve,
    sha256_file,
)
from tests.helpers import save_synthetic_codeformer


class CarriesCode:
    def __reduce__(self):
        return (print, ("this pickle runs code when loaded",))


@pytest.fixture()
def isolated_dirs(tmp_path, monkeypatch):
    """No environment weights dir, and a cache dir of the test's own."""
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv(weights.CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path


def test_official_layout_loads_through_load_codeformer(tmp_path, synthetic_state_dict):
    path = tmp_path / "codeformer.pth"
    torch.save({"params_ema": synthetic_state_dict}, path)

    model, sha = load_codeformer(str(path))

    assert sha == sha256_file(path)
    assert not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in synthetic_state_dict.items())


@pytest.mark.parametrize("layout", ["params_ema", "params", "bare"])
def test_read_checkpoint_accepts_official_and_bare_layouts(tmp_path, layout):
    sd = {"a.weight": torch.ones(2, 3)}
    path = tmp_path / "ckpt.pth"
    torch.save(sd if layout == "bare" else {layout: sd}, path)

    state_dict, info = read_checkpoint(path)

    assert list(state_dict) == ["a.weight"] and torch.equal(state_dict["a.weight"], sd["a.weight"])
    assert info.sha256 == sha256_file(path) and not info.synthetic


def test_saved_synthetic_weights_are_flagged(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "synthetic_codeformer_state_dict", lambda seed: {"x.weight": torch.zeros(1)})
    path = save_synthetic_codeformer(tmp_path / "synthetic.pth", seed=3)

    _, info = read_checkpoint(path)

    assert info.synthetic


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": {"a": torch.zeros(1)}, "payload": CarriesCode()}, path)

    with pytest.raises(UnsafeCheckpointError, match="refused"):
        read_checkpoint(path)


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "codeformer.pth"
    torch.save({"params_ema": {"a": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])

    with pytest.raises(CorruptCheckpointError, match=r"codeformer.pth \(300 bytes\) is truncated or corrupt"):
        read_checkpoint(path)


def test_empty_file_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "codeformer.pth"
    path.write_bytes(b"")

    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
        read_checkpoint(path)


def test_wrong_key_is_listed(synthetic_state_dict):
    sd = dict(synthetic_state_dict)
    sd["feat_emb.wieght"] = sd.pop("feat_emb.weight")

    with pytest.raises(CheckpointMismatchError) as err:
        build_codeformer(sd)

    message = str(err.value)
    assert "1 missing key(s): feat_emb.weight" in message
    assert "1 unexpected key(s): feat_emb.wieght" in message


def test_wrong_shape_is_listed(synthetic_state_dict):
    sd = dict(synthetic_state_dict)
    sd["position_emb"] = torch.zeros(255, 512)

    with pytest.raises(CheckpointMismatchError, match=r"wrong shape key\(s\): position_emb \(255, 512\) \(expected \(256, 512\)\)"):
        build_codeformer(sd)


def test_long_mismatch_lists_are_cut_with_a_count(synthetic_state_dict):
    sd = {k: v for k, v in synthetic_state_dict.items() if not k.startswith("encoder.")}

    with pytest.raises(CheckpointMismatchError, match=r"missing key\(s\): .*, \.\.\. and \d+ more"):
        build_codeformer(sd)


def test_resolution_prefers_explicit_then_weights_dir_then_cache(isolated_dirs, monkeypatch):
    explicit = isolated_dirs / "mine.pth"
    explicit.write_bytes(b"x")
    weights_dir = isolated_dirs / "weights"
    weights_dir.mkdir()
    cache = isolated_dirs / "cache"
    cache.mkdir()
    (cache / "codeformer.pth").write_bytes(b"c")

    assert resolve(str(explicit)) == explicit
    assert resolve("codeformer", weights_dir=weights_dir) == cache / "codeformer.pth"
    (weights_dir / "codeformer.pth").write_bytes(b"w")
    assert resolve("codeformer", weights_dir=weights_dir) == weights_dir / "codeformer.pth"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(weights_dir))
    assert resolve("codeformer") == weights_dir / "codeformer.pth"


def test_missing_local_path_is_named(isolated_dirs):
    with pytest.raises(WeightsNotFoundError, match="nowhere.pth"):
        resolve(str(isolated_dirs / "nowhere.pth"))


def serve_directory(directory: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download_goes_to_cache_complete(isolated_dirs, monkeypatch):
    served = isolated_dirs / "release"
    served.mkdir()
    payload = bytes(range(256)) * 5000
    (served / "codeformer.pth").write_bytes(payload)
    server = serve_directory(served)
    try:
        known = weights.KNOWN_CHECKPOINTS["codeformer"]
        url = f"http://127.0.0.1:{server.server_port}/codeformer.pth"
        monkeypatch.setitem(weights.KNOWN_CHECKPOINTS, "codeformer", weights.KnownCheckpoint(known.name, known.filename, url, known.description))

        path = resolve("codeformer")
    finally:
        server.shutdown()

    assert path == isolated_dirs / "cache" / "codeformer.pth"
    assert path.read_bytes() == payload
    assert [p.name for p in path.parent.iterdir()] == ["codeformer.pth"]


def test_failed_download_names_the_file_and_places(isolated_dirs, monkeypatch):
    server = serve_directory(isolated_dirs)  # serves no checkpoint: 404
    try:
        known = weights.KNOWN_CHECKPOINTS["codeformer"]
        url = f"http://127.0.0.1:{server.server_port}/missing/codeformer.pth"
        monkeypatch.setitem(weights.KNOWN_CHECKPOINTS, "codeformer", weights.KnownCheckpoint(known.name, known.filename, url, known.description))

        with pytest.raises(WeightsNotFoundError) as err:
            resolve("codeformer", weights_dir=isolated_dirs / "weights")
    finally:
        server.shutdown()

    message = str(err.value)
    assert "cannot find codeformer.pth" in message
    assert str(isolated_dirs / "weights" / "codeformer.pth") in message
    assert str(isolated_dirs / "cache" / "codeformer.pth") in message
    assert "404" in message
    assert not list((isolated_dirs / "cache").glob("*"))


def test_known_checkpoints_cover_every_network():
    assert set(weights.KNOWN_CHECKPOINTS) == {
        "codeformer",
        "retinaface_resnet50",
        "retinaface_mobile0.25",
        "parsenet",
        "arcface",
        "realesrgan_x2plus",
        "realesrgan_x4plus",
    }
    assert all(c.url.startswith("https://") and c.url.endswith(c.filename) for c in weights.KNOWN_CHECKPOINTS.values())
