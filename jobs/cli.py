"""The flags jobs share, each defined once: one name, one default, one help text in every job."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from codeformer_core.codec import DEFAULT_MAX_PIXELS, FORMATS, Encoding
from codeformer_core.detect import MODELS, DetectConfig
from codeformer_core.metrics import NO_REFERENCE
from codeformer_core.restore import MAX_AUTO_BATCH, PRECISIONS, Speed
from codeformer_core.storage import READ_ATTEMPTS
from codeformer_core.video import VIDEO_SUFFIXES, Sampling
from codeformer_core.weights import SYNTHETIC_SPEC_PREFIX

SHARD_SIZE = 1000  # inputs per shard: the unit of commit and resume, and the rows of each committed file but a shard's last
SEGMENT_FRAMES = 250  # frames per segment of a video: 10 s at 25 fps, the unit of a video that is spread, committed and resumed
CPU_BLOCK = 8  # rows per batch of the CPU stages when --batch-size is auto and there is no GPU


class UsageError(Exception):
    """A mistake in the flags or inputs; the message is for the user as it is."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def fidelity_weight(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def batch_size_or_auto(text: str) -> int | None:
    return None if text == "auto" else positive_int(text)


def metric_names(text: str) -> tuple[str, ...]:
    if text.strip() == "none":
        return ()
    if text.strip() == "all":
        return NO_REFERENCE
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in NO_REFERENCE]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected all, none, or a comma-separated list of {', '.join(NO_REFERENCE)}; got {text!r}")
    return names


def column_names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of column names; got {text!r}")
    return names


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A job's parser with the flags of every job: inputs, output, weights and the cluster."""
    p = argparse.ArgumentParser(prog=f"python -m jobs.{prog}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="folder or s3://bucket/prefix of images (and of Parquet files of images and WebDataset .tar files); a Parquet "
        "file of images; a WebDataset .tar; or a .parquet/.csv manifest of image URIs (local, s3://, http(s)://), with optional landmarks")
    p.add_argument("--output", required=True, help="folder or s3://bucket/prefix for the output tables (the description above lists them)")
    p.add_argument("--aligned", action="store_true", help="inputs are aligned faces (resized to 512x512 when needed), like the official --has_aligned; no detection")
    p.add_argument("--limit", type=positive_int, default=None, help="process only the first N inputs in listing order: a folder's or prefix's by full path, a manifest's by row")
    p.add_argument(
        "--read-attempts",
        type=positive_int,
        default=READ_ATTEMPTS,
        help="tries of each input read that fails in a way that may pass (S3 throttling and 5xx, resets, timeouts), with "
        f"exponential backoff; an input that fails them all gets status unavailable, and a rerun tries it again (default {READ_ATTEMPTS})",
    )
    h = p.add_argument_group("http(s) inputs (URLs in a manifest)")
    h.add_argument("--http-timeout", type=positive_float, default=20.0, help="seconds to connect, and between two reads of a response; an input that times out on every try gets status http_timeout, and a rerun tries it again (default 20)")
    h.add_argument("--http-per-host", type=positive_int, default=4, help="requests to one host in flight at once, from each read task (default 4)")
    h.add_argument("--ignore-optout", action="store_true", help="read images whose server says X-Robots-Tag noai or noimageai (by default they get status optout, as img2dataset does)")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help=f"reject images with more pixels than this before decoding them (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--uri-column", default=None, help="manifest column holding image URIs (default: the first of uri, source_uri, path, url, image)")
    p.add_argument(
        "--image-column",
        default=None,
        help="column of a Parquet input that holds the images, as bytes or {bytes, path} structs (default: the first such column; "
        "a Parquet file without one is a manifest of URIs)",
    )
    p.add_argument(
        "--keep-columns",
        type=column_names,
        default=(),
        help="comma-separated columns of a Parquet or CSV input (or keys of a WebDataset sample's .json) carried through to "
        "the images/ table's `kept` column, as a JSON object: a caption, a licence, the original URL (default: none; a tar "
        "sample's whole .json)",
    )
    p.add_argument("--weights-dir", default=None, help="folder holding checkpoints under their official names (default: $CODEFORMER_WEIGHTS_DIR)")
    p.add_argument("--synthetic-weights", action="store_true", help="random weights for every network instead of checkpoints (offline demos and tests; outputs are marked synthetic)")
    p.add_argument(
        "--batch-size",
        type=batch_size_or_auto,
        default=None,
        help=f"faces per batch of each model stage, or auto: for CodeFormer as many as fit in the device's free memory "
        f"(up to {MAX_AUTO_BATCH['cuda']} on a GPU, {MAX_AUTO_BATCH['cpu']} on a CPU), for the other stages "
        f"{MAX_AUTO_BATCH['cuda']} on GPUs and {CPU_BLOCK} on CPUs (default auto)",
    )
    c = p.add_argument_group("the cluster")
    c.add_argument("--workers", type=positive_int, default=None, help="actors of each model stage (default: one per GPU; on CPUs one per node, and one per CPU for single-threaded stages)")
    c.add_argument("--threads-per-worker", type=positive_int, default=None, help="torch threads of each CPU model actor (default: the CPUs of its node divided by the workers on that node)")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model stages run: auto picks GPUs when the cluster has them (default auto)")
    c.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started for this job)")
    c.add_argument(
        "--shard-size",
        type=positive_int,
        default=SHARD_SIZE,
        help=f"inputs per shard, the unit that is committed and resumed: each table gets a file per shard (and one more "
        f"per 128 MiB); a rerun redoes at most the shards that were not committed (default {SHARD_SIZE})",
    )
    c.add_argument(
        "--shared-output",
        action="store_true",
        help="the local --output path is storage every node of the cluster shares (NFS, a mounted bucket); without it "
        "a local path is refused when the job joins a cluster (--ray-address or $RAY_ADDRESS)",
    )
    return p


def add_video_flags(p: argparse.ArgumentParser, default_fps: float | None) -> None:
    """Video inputs, sampled by default at `default_fps` frames a second (None: every frame)."""
    default = "every frame in the restore job, 1 a second in the audit and pairs jobs"
    v = p.add_argument_group(f"video inputs ({', '.join(s.lstrip('.') for s in VIDEO_SUFFIXES)}), listed next to images")
    kept = v.add_mutually_exclusive_group()
    kept.add_argument("--every-n-frames", type=positive_int, default=None, help=f"keep every Nth frame of a video, from its first (default: {default})")
    kept.add_argument("--fps", type=positive_float, default=None, help=f"keep this many frames a second of a video: the first of each 1/F s (default: {default})")
    v.add_argument(
        "--segment-frames",
        type=positive_int,
        default=SEGMENT_FRAMES,
        help=f"frames per segment: a video is cut into segments that run on the cluster's workers side by side and are "
        f"committed (and resumed) like inputs (default {SEGMENT_FRAMES})",
    )
    p.set_defaults(video_default_fps=default_fps)


def sampling(args: argparse.Namespace) -> Sampling | None:
    """The frames kept by the job's video flags; None for a job without them."""
    if not hasattr(args, "segment_frames"):
        return None
    if args.every_n_frames:
        return Sampling(every_n=args.every_n_frames)
    return Sampling(fps=args.fps or args.video_default_fps)


def add_detect_flags(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The detector's flags, in a group the job can add its own whole-image flags to."""
    d = p.add_argument_group("faces in whole images (without --aligned)")
    d.add_argument("--detector", choices=tuple(MODELS), default="retinaface_resnet50", help="RetinaFace backbone (default retinaface_resnet50)")
    d.add_argument("--detector-weights", default=None, help="detector checkpoint path or s3:// URI (default: the official file, found as the README says)")
    d.add_argument("--det-threshold", type=float, default=0.8, help="minimum detection confidence (default 0.8)")
    d.add_argument("--nms-threshold", type=float, default=0.4, help="IoU above which overlapping boxes are suppressed (default 0.4)")
    d.add_argument("--min-face-size", type=float, default=0.0, help="drop faces whose box is smaller than this many pixels (default 0)")
    d.add_argument("--max-faces", type=positive_int, default=None, help="keep at most this many faces per image, best first")
    d.add_argument("--only-center-face", action="store_true", help="keep only the face nearest the image centre")
    d.add_argument("--det-input-size", type=positive_int, default=640, help="short side images are rescaled to for detection (default 640, as the official helper)")
    d.add_argument("--detect-batch-size", type=positive_int, default=8, help="images per detector forward pass (default 8)")
    return d


@dataclass(frozen=True)
class Detection:
    config: DetectConfig
    weights: str | None  # --detector-weights; None: the official file of config.model

    @property
    def spec(self) -> str:
        return self.weights or self.config.model


def detection(args: argparse.Namespace) -> Detection:
    config = DetectConfig(
        model=args.detector,
        conf_threshold=args.det_threshold,
        nms_threshold=args.nms_threshold,
        min_face_size=args.min_face_size,
        max_faces=args.max_faces,
        only_center_face=args.only_center_face,
        input_size=args.det_input_size,
        batch_size=args.detect_batch_size,
    )
    return Detection(config, args.detector_weights)


def add_restore_flags(p: argparse.ArgumentParser, what: str) -> None:
    """CodeFormer's weights, fidelity and speed; `what` says when the job restores."""
    r = p.add_argument_group(f"restoration with CodeFormer ({what}); docs/BENCHMARKS.md has the speed measurements")
    r.add_argument("--fidelity", type=fidelity_weight, default=0.5, help="CodeFormer fidelity weight w in [0,1]: 0 = best quality, 1 = closest to the input (default 0.5)")
    r.add_argument("--weights", default="codeformer", help="CodeFormer checkpoint: 'codeformer' (found as the README explains), a path or an s3:// URI (default: codeformer)")
    r.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="fp32: the official network's arithmetic (TF32 off; bit-faithful with --winograd off); bf16/fp16: a 16-bit network whose norms, AdaIN "
        "statistics and code-prediction head stay in float32, faster on GPUs and AMX CPUs; auto: bf16 on GPUs "
        "(fp16 where bf16 is missing) and on CPUs with AMX, else fp32 (default auto)",
    )
    r.add_argument(
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="channels_last memory format for the network; auto: on for CPUs where Winograd is off and for 16-bit precisions on GPUs (default auto)",
    )
    r.add_argument(
        "--winograd",
        choices=("auto", "on", "off"),
        default="auto",
        help="3x3 convolutions by NNPACK's Winograd transform, fp32 on CPUs: about 1.7x faster there, the same code "
        "indices as the direct sums on the golden test; off gives the direct sums, bit-faithful to the official "
        "network with --channels-last off; auto: on for fp32 on CPUs unless --channels-last on (default auto)",
    )
    r.add_argument("--compile", action="store_true", help="torch.compile the network: faster forwards after a warm-up of a minute or more per actor")


@dataclass(frozen=True)
class Restoration:
    weights: str  # what codeformer_weights takes, `synthetic:1` included
    fidelity: float
    speed: Speed


def restoration(args: argparse.Namespace, synthetic: bool) -> Restoration:
    switch = {"auto": None, "on": True, "off": False}
    speed = Speed(
        precision=args.precision, channels_last=switch[args.channels_last], winograd=switch[args.winograd],
        compile=args.compile, batch_size=args.batch_size,
    )
    return Restoration(f"{SYNTHETIC_SPEC_PREFIX}1" if synthetic else args.weights, args.fidelity, speed)


def add_image_flags(p: argparse.ArgumentParser, what: str) -> argparse._ArgumentGroup:
    """How the job stores `what`."""
    g = p.add_argument_group(f"stored images ({what})")
    g.add_argument(
        "--image-format", choices=FORMATS, default="png",
        help="png: lossless, at a fast compression level; jpeg or webp: lossy at --image-quality, several times smaller, and "
        "JPEG about 20x faster to write than PNG (docs/BENCHMARKS.md has the measurements) (default png)",
    )
    g.add_argument("--image-quality", type=int, choices=range(1, 101), metavar="1..100", default=None, help="quality of --image-format jpeg or webp (default 95)")
    return g


def encoding(args: argparse.Namespace) -> Encoding:
    if args.image_format == "png" and args.image_quality is not None:
        raise UsageError("--image-quality sets the quality of --image-format jpeg or webp; PNG is lossless")
    return Encoding(args.image_format, 95 if args.image_quality is None else args.image_quality)


def add_measure_flags(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("measuring each face")
    m.add_argument(
        "--metrics",
        type=metric_names,
        default=NO_REFERENCE,
        help=f"no-reference metrics of each face (and of its restoration, where the job restores), comma-separated from "
        f"{','.join(NO_REFERENCE)}, or all, or none (default all); NIQE costs about as much as the others together",
    )
    m.add_argument("--no-identity", action="store_true", help="skip the ArcFace identity similarity between each face and its restoration (then no ArcFace weights are needed)")
    m.add_argument("--arcface-weights", default=None, help="ArcFace checkpoint for identity similarity: path or s3:// URI (default: the official file, found as the README says)")


@dataclass(frozen=True)
class Measures:
    metrics: tuple[str, ...]  # no-reference metrics
    identity: bool  # ArcFace similarity between each face and its restoration
    arcface_weights: str | None


def measures(args: argparse.Namespace, restoring: bool) -> Measures:
    return Measures(args.metrics, restoring and not args.no_identity, args.arcface_weights)
