"""Clean a face corpus: exact and near duplicates, identity clusters, one face kept per group.

    python -m jobs.dedup --input URI --output URI [--aligned] [--max-per-identity N] ...

Every face (found by RetinaFace in whole images, given by a manifest's `landmarks` such as the
audit's kept.parquet, or the image itself with --aligned) gets the sha256 of its source file, a
64-bit DCT pHash of its aligned crop, its ArcFace embedding (facexlib IR-SE50, L2-normalised) and
its size and sharpness; these are committed shard by shard to embedded/, with images/ (one row
per input). Then the whole corpus is grouped, as Ray tasks over k-means cells of the embeddings:
- duplicates: the same file bytes, or a pHash distance <= --phash-distance and an ArcFace cosine
  >= --dup-cosine; one face per duplicate group is kept, the best by --keep-by, then face size,
  sharpness, image id;
- identities: faces whose embeddings have a cosine >= --identity-threshold are joined into
  clusters (at least --min-identity-size faces); --max-per-identity N keeps the best N of each.
Output: faces/ (every face with dup_group, identity, keep and dropped_by), kept.parquet (a manifest
of the kept faces for the restore and pairs jobs), report.html. A rerun after a crash finishes the
output; a rerun with other grouping flags groups again without embedding again.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from codeformer_core import dedup_report, storage
from codeformer_core.grouping import GroupConfig
from jobs import cli, dedup_groups, ledger
from jobs.audit_report import KEPT_MANIFEST, KEPT_SCHEMA, manifest_table
from jobs.cli import Measures, positive_int
from jobs.driver import Common, Job, main, start_ray
from jobs.pipeline import Context, Stage, stage
from jobs.resources import MODEL
from jobs.runner import RunFailedError
from jobs.shared_stages import check_weights, front_stages
from jobs.stages.dedup import EmbedFaces, hash_sources, write_dedup

KEEP_BY = ("face_size", "sharpness", "det_score")
DEFAULTS = GroupConfig()


def unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a cosine between -1 and 1, got {text!r}") from None
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine is between -1 and 1, got {text}")
    return value


def hash_distance(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of bits from 0 to 64, got {text!r}") from None
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"a distance of 64-bit hashes is 0 to 64, got {text}")
    return value


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grouping (a rerun with other values groups the embedded faces again)")
    g.add_argument("--phash-distance", metavar="BITS", type=hash_distance, default=DEFAULTS.phash_distance, help=f"duplicates: at most this many of the 64 pHash bits differ (default {DEFAULTS.phash_distance}, imagededup's); with --dup-cosine")
    g.add_argument("--dup-cosine", metavar="COSINE", type=unit_interval, default=DEFAULTS.dup_cosine, help=f"duplicates: and ArcFace cosine at least this (default {DEFAULTS.dup_cosine}); -1 leaves duplicates to the pHash alone among each face's neighbours")
    g.add_argument("--identity-threshold", metavar="COSINE", type=unit_interval, default=DEFAULTS.identity_cosine, help=f"one identity: ArcFace cosine at least this (default {DEFAULTS.identity_cosine}, immich's cosine distance 0.5)")
    g.add_argument("--min-identity-size", metavar="N", type=positive_int, default=DEFAULTS.min_identity_size, help=f"faces an identity cluster needs to be named (default {DEFAULTS.min_identity_size}, immich's)")
    g.add_argument("--max-per-identity", metavar="N", type=positive_int, default=None, help="keep at most N faces of each identity cluster, the best first (default: no cap)")
    g.add_argument("--keep-by", choices=KEEP_BY, default="face_size", help="which face of a group is best, before face size, sharpness and image id (default face_size)")
    g.add_argument("--neighbours", metavar="K", type=positive_int, default=DEFAULTS.neighbours, help=f"nearest neighbours searched per face (default {DEFAULTS.neighbours})")
    g.add_argument("--probes", metavar="P", type=positive_int, default=DEFAULTS.probes, help=f"k-means cells each face is searched in, its own and the nearest others: more find more pairs that straddle cells, at that many times the search (default {DEFAULTS.probes})")
    g.add_argument("--partition-size", metavar="FACES", type=positive_int, default=20000, help="faces per k-means cell on average: a cell's task holds about probes x this many embeddings (default 20000)")
    g.add_argument("--gallery-size", metavar="N", type=positive_int, default=8, help="largest groups and clusters shown in the report (default 8)")
    p.add_argument("--arcface-weights", default=None, help="ArcFace checkpoint: path or s3:// URI (default: the official file, found as the README says)")
    cli.add_detect_flags(p)


@dataclass(frozen=True)
class DedupConfig:
    settings: dedup_groups.Settings
    arcface_weights: str | None
    detection: cli.Detection


def configure(args: argparse.Namespace, common: Common) -> DedupConfig:
    config = GroupConfig(args.phash_distance, args.dup_cosine, args.identity_threshold, args.min_identity_size, args.neighbours, args.probes, args.max_per_identity)
    return DedupConfig(dedup_groups.Settings(config, args.keep_by, args.partition_size, args.gallery_size), args.arcface_weights, cli.detection(args))


def preflight(common: Common, cfg: DedupConfig, detecting: bool) -> dict:
    check_weights(common, None, cfg.detection if detecting else None, Measures((), True, cfg.arcface_weights))
    return {
        "aligned": common.aligned, "max_pixels": common.max_pixels, "detect": None if common.aligned else asdict(cfg.detection.config),
        "synthetic_weights": common.synthetic, "arcface_weights": cfg.arcface_weights,
    }


def stages(common: Common, cfg: DedupConfig, ctx: Context) -> list[Stage]:
    found = front_stages(common, cfg.detection, ctx)
    found.insert(1, stage(hash_sources))
    arcface = {"weights": cfg.arcface_weights, "weights_dir": common.weights_dir, "synthetic_seed": 1 if ctx.synthetic else None}
    return found + [
        stage(EmbedFaces, MODEL, 1, arcface=arcface, device=ctx.place.device, batch_size=ctx.block),
        stage(write_dedup, output=common.output, run=ctx.record),
    ]


def finish(common: Common, cfg: DedupConfig, changed: bool) -> list[str]:
    output, report = common.output, storage.join(common.output, dedup_groups.REPORT)
    markers = ledger.markers(output)
    committed = dedup_groups.committed_digest(markers)
    if dedup_groups.done(output, cfg.settings, committed) is not None:
        return [f"nothing new to group: {output}/faces/, {output}/{KEPT_MANIFEST} and {report} are as the earlier run left them"]
    statuses, faces, _ = ledger.totals(markers)
    import ray

    if not ray.is_initialized():
        start_ray(common)
    try:
        shards = dedup_groups.shard_files(output, markers)
        shown = dedup_groups.regroup(output, cfg.settings, faces, shards)
        write_kept(output)
        title = f"Duplicates and identities in {common.input}" + (" (SYNTHETIC WEIGHTS: embeddings are not real)" if common.synthetic else "")
        storage.write_bytes(report, dedup_report.render(shown, sum(statuses.values()), thumbnails(dict(shards), dedup_report.shown_faces(shown)), title))
        dedup_groups.mark_done(output, shown, committed)
    except (ray.exceptions.RayError, OSError) as exc:
        first = str(exc).strip().splitlines()
        raise RunFailedError(f"grouping failed: {first[-1] if first else type(exc).__name__}; the embedded faces are kept: run the same command again to group them") from None
    removed = ", ".join(f"{n} as {reason}" for reason, n in sorted(shown["dropped"].items())) or "none"
    return [f"kept {shown['kept']} of {faces} faces (removed: {removed}): {output}/faces/, {output}/{KEPT_MANIFEST}; report: {report}"]


def write_kept(output: str) -> None:
    """kept.parquet from faces/, file by file (a file holds whole images)."""
    with storage.output_stream(storage.join(output, KEPT_MANIFEST)) as stream, pq.ParquetWriter(stream, KEPT_SCHEMA) as writer:
        for faces in ledger.read_tables(storage.list_files(storage.join(output, "faces"), ".parquet"), ["source_uri", "landmarks", "keep"]):
            manifest: dict[str, list] = {}
            for row in faces.filter(faces.column("keep")).to_pylist():
                manifest.setdefault(row["source_uri"], []).append(row["landmarks"])
            writer.write_table(manifest_table(manifest))


def thumbnails(files: dict[int, list[str]], wanted: set[int]) -> dict[int, bytes]:
    """The thumbnails of `wanted` faces, read from the embedded/ `files` of the shards that hold them."""
    found: dict[int, bytes] = {}
    for shard in sorted({dedup_groups.shard_of(f) for f in wanted}):
        for t in ledger.read_tables(files.get(shard, []), ["face_id", "thumbnail"]):
            t = t.filter(pc.is_in(t.column("face_id"), pa.array(sorted(wanted), pa.int64())))
            found |= {int(i): th["bytes"] for i, th in zip(t.column("face_id").to_numpy(), t.column("thumbnail").to_pylist())}
    return found


JOB = Job("dedup", __doc__, ("images", "embedded"), "faces", "embedded", add_flags, configure, preflight, stages, finish)

if __name__ == "__main__":
    sys.exit(main(JOB))
