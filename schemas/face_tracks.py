"""`face_tracks/`: the track of each face of a video, joined to faces/ on (image_id, frame_index, face_index).

Committed faces files are never rewritten, and a track needs every frame of its video, so the
track ids are this table of their own, written after the run."""

import pyarrow as pa

from schemas import versioned

VERSION = 1

SCHEMA = versioned(
    "face_tracks",
    VERSION,
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("track_id", pa.int32(), nullable=False),
    ],
)
