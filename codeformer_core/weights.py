"""Known checkpoints, where to find them, safe loading, and synthetic weights for offline use.

A checkpoint is resolved in this order:
  1. an explicit local path or s3:// URI;
  2. a weights directory (argument, or $CODEFORMER_WEIGHTS_DIR) holding the official file name;
  3. the user cache directory ($CODEFORMER_CACHE_DIR, else $XDG_CACHE_HOME/codeformer-data,
     else ~/.cache/codeformer-data);
  4. a download from the official release page into the cache, with a progress bar
     (unless $CODEFORMER_NO_DOWNLOAD is set).
Files are always read with `torch.load(weights_only=True)`: a pickle that carries code is refused.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from codeformer_core import storage
from codeformer_core.arch import CodeFormer

WEIGHTS_DIR_ENV = "CODEFORMER_WEIGHTS_DIR"
CACHE_DIR_ENV = "CODEFORMER_CACHE_DIR"
NO_DOWNLOAD_ENV = "CODEFORMER_NO_DOWNLOAD"
SYNTHETIC_MARKER = "synthetic"
SYNTHETIC_SPEC_PREFIX = "synthetic:"
LISTED_KEYS = 5


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str
    filename: str
    url: str
    description: str


KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    c.name: c
    for c in (
        KnownCheckpoint(
            "codeformer",
            "codeformer.pth",
            "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",
            "CodeFormer v0.1.0 restoration network (S-Lab License 1.0, non-commercial)",
        ),
        KnownCheckpoint(
            "retinaface_resnet50",
            "detection_Resnet50_Final.pth",
            "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
            "facexlib RetinaFace face detector, ResNet-50 backbone",
        ),
        KnownCheckpoint(
            "retinaface_mobile0.25",
            "detection_mobilenet0.25_Final.pth",
            "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
            "facexlib RetinaFace face detector, MobileNet-0.25 backbone",
        ),
        KnownCheckpoint(
            "parsenet",
            "parsing_parsenet.pth",
            "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
            "facexlib ParseNet face parsing network",
        ),
        KnownCheckpoint(
            "arcface",
            "recognition_arcface_ir_se50.pth",
            "https://github.com/xinntao/facexlib/releases/download/v0.1.0/recognition_arcface_ir_se50.pth",
            "facexlib ArcFace IR-SE50 face recognition network",
        ),
        KnownCheckpoint(
            "realesrgan_x2plus",
            "RealESRGAN_x2plus.pth",
            "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/RealESRGAN_x2plus.pth",
            "Real-ESRGAN x2 upsampler, as the official CodeFormer inference downloads it (BSD-3-Clause)",
        ),
        KnownCheckpoint(
            "realesrgan_x4plus",
            "RealESRGAN_x4plus.pth",
            "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
            "Real-ESRGAN x4 upsampler (BSD-3-Clause)",
        ),
    )
}


class WeightsError(Exception):
    """A checkpoint cannot be found or used. The message is meant for the user as it is."""


class WeightsNotFoundError(WeightsError):
    pass


class UnsafeCheckpointError(WeightsError):
    pass


class CorruptCheckpointError(WeightsError):
    pass


class CheckpointMismatchError(WeightsError):
    pass


@dataclass(frozen=True)
class WeightsInfo:
    """Where weights came from: a file path, or `synthetic:SEED` for weights made in memory."""

    source: str
    sha256: str
    synthetic: bool


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "codeformer-data"


def resolve(
    spec: str,
    weights_dir: str | os.PathLike[str] | None = None,
    cache_dir: Path | None = None,
    allow_download: bool | None = None,
) -> Path:
    """Local path of the checkpoint `spec`: a known name (see KNOWN_CHECKPOINTS), a path or an s3:// URI.

    Downloads are allowed unless `allow_download` is False or $CODEFORMER_NO_DOWNLOAD is set.
    """
    if allow_download is None:
        allow_download = not os.environ.get(NO_DOWNLOAD_ENV)
    cache = cache_dir or default_cache_dir()
    if storage.is_s3(spec):
        return _fetch_s3(spec, cache)
    known = KNOWN_CHECKPOINTS.get(spec)
    if known is None:
        path = Path(spec).expanduser()
        if path.is_file():
            return path
        names = ", ".join(KNOWN_CHECKPOINTS)
        raise WeightsNotFoundError(f"weights file {spec!r} does not exist (and is not one of the known names: {names})")

    directory = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    candidates = ([Path(directory).expanduser() / known.filename] if directory else []) + [cache / known.filename]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if allow_download:
        try:
            _download(known.url, cache / known.filename)
            return cache / known.filename
        except (urllib.error.URLError, OSError) as exc:
            failure = f"downloading {known.url} failed: {exc}"
    else:
        failure = f"downloading is turned off (${NO_DOWNLOAD_ENV})"
    looked = "\n".join(f"  - {c}" for c in candidates)
    raise WeightsNotFoundError(
        f"cannot find {known.filename} ({known.description}).\n"
        f"Looked in:\n{looked}\n{failure}.\n"
        f"Put {known.filename} in a weights directory (--weights-dir or ${WEIGHTS_DIR_ENV}) or in {cache}, "
        f"or pass its local path or s3:// URI."
    )


def _fetch_s3(uri: str, cache: Path) -> Path:
    dest = cache / "s3" / uri.removeprefix("s3://")
    try:
        size = storage.file_size(uri)
    except OSError as exc:
        raise WeightsNotFoundError(f"cannot read weights at {uri}: {exc}") from None
    if size is None:
        raise WeightsNotFoundError(f"no weights file at {uri}")
    if not (dest.is_file() and dest.stat().st_size == size):
        storage.download(uri, dest)
    return dest


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}", file=sys.stderr) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """State dict and provenance of a checkpoint file, in the official layout or a bare state dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise UnsafeCheckpointError(
                f"{path} was refused: it is a pickle that needs more than tensors to load "
                f"(it may carry code). Only plain tensor checkpoints are loaded."
            ) from None
        raise CorruptCheckpointError(_corrupt_message(path, exc)) from None
    except Exception as exc:  # torch reports damaged files with many exception types
        raise CorruptCheckpointError(_corrupt_message(path, exc)) from None
    synthetic = isinstance(obj, dict) and SYNTHETIC_MARKER in obj
    return _state_dict_of(obj, path), WeightsInfo(source=str(path), sha256=sha256_file(path), synthetic=synthetic)


def _corrupt_message(path: Path, exc: Exception) -> str:
    size = path.stat().st_size
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{path} ({size} bytes) is truncated or corrupt and cannot be read as a checkpoint: {reason}"


def _state_dict_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("params_ema", "params"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        shown = ", ".join(map(str, list(obj)[:LISTED_KEYS]))
        raise CorruptCheckpointError(
            f"{path} holds no state dict: expected 'params_ema', 'params' or tensors, found keys [{shown}]"
        )
    raise CorruptCheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")


def check_state_dict(expected: dict[str, tuple[int, ...]], state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Raise CheckpointMismatchError listing missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} (expected {expected[k]})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    problems = [
        _listing(label, items)
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped))
        if items
    ]
    if problems:
        raise CheckpointMismatchError(f"checkpoint does not fit {what}:\n" + "\n".join(problems))


def _listing(label: str, items: list[str]) -> str:
    more = f", ... and {len(items) - LISTED_KEYS} more" if len(items) > LISTED_KEYS else ""
    return f"  {len(items)} {label} key(s): {', '.join(items[:LISTED_KEYS])}{more}"


def official_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every checkpoint's filter (timm's checkpoint_filter_fn): names without DataParallel's `module.`
    prefix, floating tensors in float32."""
    return {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


def network_state(
    net: nn.Module, spec: str, weights_dir: str | os.PathLike[str] | None = None, synthetic_seed: int | None = None
) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """The state dict for `net` (built on any device, `meta` included) and its provenance: synthetic
    weights of `synthetic_seed`, or the checkpoint `spec` (what `resolve` takes) in the official
    layout, checked against `net`'s names and shapes."""
    return layout_state({k: tuple(v.shape) for k, v in net.state_dict().items()}, type(net).__name__, spec, weights_dir, synthetic_seed)


def layout_state(
    shapes: dict[str, tuple[int, ...]], what: str, spec: str, weights_dir: str | os.PathLike[str] | None = None, synthetic_seed: int | None = None
) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """`network_state` for a network known by the names and `shapes` of its official state dict."""
    if synthetic_seed is not None:
        state_dict = {k: torch.from_numpy(synthetic_tensor(k, shape, synthetic_seed)) for k, shape in shapes.items()}
        return state_dict, WeightsInfo(f"{SYNTHETIC_SPEC_PREFIX}{synthetic_seed}", state_dict_sha256(state_dict), synthetic=True)
    raw, info = read_checkpoint(resolve(spec, weights_dir=weights_dir))
    state_dict = official_layout(raw)
    # Checkpoints saved before PyTorch 0.4.1 have no batch-norm step counters; load_state_dict fills them in too.
    state_dict |= {k: torch.tensor(0) for k in shapes if k.endswith("num_batches_tracked") and k not in state_dict}
    check_state_dict(shapes, state_dict, f"{what} ({info.source})")
    return state_dict, info


def load_strictly(net: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """`net` holding `state_dict` (every key, no other), in eval mode."""
    check_state_dict({k: tuple(v.shape) for k, v in net.state_dict().items()}, state_dict, type(net).__name__)
    net.load_state_dict(state_dict, strict=True, assign=True)
    return net.eval()


def load_network(net: nn.Module, spec: str, weights_dir: str | os.PathLike[str] | None = None, synthetic_seed: int | None = None) -> WeightsInfo:
    """Load the weights `network_state` finds (and has checked) into `net`; the one loader of every network here."""
    state_dict, info = network_state(net, spec, weights_dir, synthetic_seed)
    net.load_state_dict(state_dict, strict=True, assign=True)
    net.eval()
    return info


def synthetic_seed_of(spec: str) -> int | None:
    """N for a spec `synthetic:N`, else None."""
    return int(spec.removeprefix(SYNTHETIC_SPEC_PREFIX)) if spec.startswith(SYNTHETIC_SPEC_PREFIX) else None


def build_codeformer(state_dict: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> CodeFormer:
    """An eval-mode CodeFormer holding `state_dict`, loaded strictly."""
    with torch.device("meta"):
        model = CodeFormer()
    return load_strictly(model, official_layout(state_dict)).to(device)


def codeformer_weights(
    spec: str = "codeformer", weights_dir: str | os.PathLike[str] | None = None
) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """State dict checked against the network, and its provenance.

    `spec` is what `resolve` takes, or `synthetic:SEED` for synthetic weights made in memory.
    """
    with torch.device("meta"):
        shapes = CodeFormer()
    return network_state(shapes, spec, weights_dir, synthetic_seed_of(spec))


def load_codeformer(
    path_or_uri: str = "codeformer",
    device: str | torch.device = "cpu",
    weights_dir: str | os.PathLike[str] | None = None,
) -> tuple[CodeFormer, str]:
    """(model in eval mode, sha256 of the checkpoint file)."""
    state_dict, info = codeformer_weights(path_or_uri, weights_dir)
    return build_codeformer(state_dict, device), info.sha256


def synthetic_tensor(name: str, shape: tuple[int, ...], base_seed: int) -> np.ndarray:
    """One entry of the synthetic weight rule (golden README): seeded by CRC-32 of its name.

    Batch-norm buffers, which CodeFormer lacks, get valid values: a positive running variance
    and a zero step count.
    """
    if name.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")) ^ base_seed)
    x = rng.standard_normal(size=shape)
    if name.endswith("running_var"):
        x = 1 + 0.1 * np.abs(x)
    elif name.endswith("weight") and len(shape) >= 2:
        x = x / np.sqrt(np.prod(shape[1:]))
    elif name.endswith("weight"):
        x = 1 + 0.1 * x
    else:
        x = 0.02 * x
    return x.astype(np.float32)


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes and float32 bytes, in key order: identifies weights made in memory."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def synthetic_state_dict(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic random weights for every entry of `model.state_dict()`. Not a trained model."""
    return {k: torch.from_numpy(synthetic_tensor(k, tuple(v.shape), seed)) for k, v in model.state_dict().items()}


def synthetic_codeformer_state_dict(seed: int = 1) -> dict[str, torch.Tensor]:
    """Deterministic random CodeFormer weights in the official layout. Not a trained model."""
    with torch.device("meta"):
        return synthetic_state_dict(CodeFormer(), seed)
