"""The audit's pass after the run: one stream over the committed tables gives the report's bounded
summary and kept.parquet, the manifest of the kept faces."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from codeformer_core import storage
from codeformer_core.metrics import NO_REFERENCE
from codeformer_core.summary import AuditSummary, MetricSpec
from jobs.cli import Measures
from jobs.ledger import committed_tables

KEPT_MANIFEST = "kept.parquet"
METRICS = (
    MetricSpec("det_score", "detection score", 0.0, 1.0),
    MetricSpec("face_size", "face size (input px)", 0.0, 1024.0),
    MetricSpec("interocular", "eye distance (input px)", 0.0, 400.0),
    MetricSpec("yaw", "yaw (degrees)", -90.0, 90.0),
    MetricSpec("roll", "roll (degrees)", -90.0, 90.0),
    MetricSpec("sharpness", "sharpness (Laplacian variance)", 0.0, 2000.0),
    MetricSpec("noise", "noise sigma (0..255)", 0.0, 30.0, higher_is_better=False),
    MetricSpec("blockiness", "JPEG blockiness", 0.5, 3.0, higher_is_better=False),
    MetricSpec("brightness", "brightness (mean luma)", 0.0, 255.0),
    MetricSpec("contrast", "contrast (luma std)", 0.0, 128.0),
    MetricSpec("colourfulness", "colourfulness", 0.0, 150.0),
    MetricSpec("niqe", "NIQE (lower is better)", 0.0, 20.0, higher_is_better=False),
)
RESTORED_METRICS = (
    MetricSpec("ids_cosine", "identity similarity (ArcFace cosine)", -1.0, 1.0),
    MetricSpec("restored_sharpness", "restored sharpness", 0.0, 2000.0),
    MetricSpec("restored_niqe", "restored NIQE (lower is better)", 0.0, 20.0, higher_is_better=False),
)
KEPT_SCHEMA = pa.schema([pa.field("source_uri", pa.string()), pa.field("landmarks", pa.list_(pa.list_(pa.float64())))])


def metric_specs(restore: bool, measures: Measures) -> tuple[MetricSpec, ...]:
    skipped = set(NO_REFERENCE) - set(measures.metrics) | (set() if measures.identity else {"ids_cosine"})
    specs = METRICS + (RESTORED_METRICS if restore else ())
    return tuple(m for m in specs if m.name.removeprefix("restored_") not in skipped)


def summarize(output: str, restore: bool, measures: Measures, gallery_size: int) -> tuple[AuditSummary, int]:
    """Stream the committed tables once: the report's summary, and kept.parquet written; how many faces were kept."""
    specs = metric_specs(restore, measures)
    summary = AuditSummary(specs, gallery_size=gallery_size)
    for images in committed_tables(output, "images", ["status"]):
        for status in images.column("status").to_pylist():
            summary.add_image(status)
    columns = ["image_id", "source_uri", "face_index", "landmarks", "keep", "dropped_by", "thumbnail", "restored_thumbnail"]
    columns += [m.name for m in specs]
    kept = 0
    filesystem, path = storage.filesystem_and_path(storage.join(output, KEPT_MANIFEST))
    with pq.ParquetWriter(path, KEPT_SCHEMA, filesystem=filesystem) as writer:
        for faces in committed_tables(output, "faces", list(dict.fromkeys(columns))):
            manifest: dict[str, list] = {}
            for row in faces.to_pylist():
                restored = row["restored_thumbnail"]
                summary.add_face(
                    key=f"{row['image_id']}_{row['face_index']}",
                    values={m.name: row[m.name] for m in specs},
                    size_px=row["face_size"],
                    yaw=row["yaw"] if row["yaw"] is not None else float("nan"),
                    kept=row["keep"],
                    dropped_by=row["dropped_by"],
                    thumbnail=row["thumbnail"]["bytes"],
                    restored=restored["bytes"] if restored else None,
                )
                if row["keep"]:
                    manifest.setdefault(row["source_uri"], []).append(row["landmarks"])
            kept += sum(len(v) for v in manifest.values())
            writer.write_table(manifest_table(manifest))
    return summary, kept


def manifest_table(manifest: dict[str, list]) -> pa.Table:
    """kept.parquet rows: each source with the landmarks of its kept faces (null where a face has none: an aligned input)."""
    uris = sorted(manifest)
    landmarks = [None if any(lm is None for lm in manifest[u]) else [[float(v) for v in lm] for lm in manifest[u]] for u in uris]
    return pa.table({"source_uri": uris, "landmarks": landmarks}, schema=KEPT_SCHEMA)
