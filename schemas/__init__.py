"""Versioned pyarrow schemas of every output table, one module per table.

Each schema carries its table name and version in the Parquet key-value metadata.
"""

from __future__ import annotations

import pyarrow as pa

from codeformer_core.statuses import MEANINGS

# The layout Hugging Face `datasets` reads as an Image feature.
IMAGE_STRUCT = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


# The first columns of every images/ table (jobs.ledger.images_table fills them): one row per
# input, its status ("ok" or a short reason, one of codeformer_core.statuses) and error.
IMAGE_ROW = [
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False, metadata={"values": ",".join(MEANINGS)}),
    pa.field("error", pa.string()),  # null when ok
    pa.field("width", pa.int32()),  # after EXIF orientation; null when unknown
    pa.field("height", pa.int32()),
    # The input's columns carried through (--keep-columns; a WebDataset sample's .json) as a JSON object; null when none.
    pa.field("kept", pa.string()),
]


# The last columns of the images/ table of a job that takes videos: null for an image. A video has
# a row per segment (its frames in frames/), whose status is the segment's decode, and whose
# num_* columns are null: its frames' rows count those.
VIDEO_ROW = [
    pa.field("segment", pa.int32()),  # from 0
    pa.field("frame_start", pa.int64()),  # the segment's frames [frame_start, frame_stop) of the video
    pa.field("frame_stop", pa.int64()),  # null: to the end
    pa.field("frames", pa.int32()),  # its kept frames decoded: its rows in frames/
    pa.field("fps", pa.float64()),  # the video's, as its container says (average rate)
    pa.field("duration", pa.float64()),  # seconds
    pa.field("frame_count", pa.int64()),  # the container's count of frames (else duration x fps)
    pa.field("codec", pa.string()),
    pa.field("audio_codec", pa.string()),  # null without an audio stream
]


# Where in its video a face (or a pasted frame) is; null for an image's.
FRAME_FIELDS = [pa.field("frame_index", pa.int64()), pa.field("timestamp", pa.float64())]
# The last columns of a faces table: FRAME_FIELDS and, for a video's face whose identity was
# measured, the restored face's ArcFace embedding (L2-normalised), which its track compares frame to frame.
FACE_FRAME_FIELDS = [*FRAME_FIELDS, pa.field("restored_embedding", pa.list_(pa.float32(), 512))]


def versioned(name: str, version: int, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"table": name, "schema_version": str(version)})


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly the schema's columns, types and metadata; raises ValueError when it cannot."""
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names]
    if missing or extra:
        raise ValueError(f"table {schema.metadata[b'table'].decode()}: missing columns {missing}, unexpected {extra}")
    return table.select(schema.names).cast(schema)
