"""`tracks/`: one row per track, a face followed through the frames of a video (codeformer_core.tracking)."""

import pyarrow as pa

from schemas import versioned

VERSION = 1

SCHEMA = versioned(
    "tracks",
    VERSION,
    [
        pa.field("image_id", pa.string(), nullable=False),  # the video's
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("track_id", pa.int32(), nullable=False),  # from 0 within the video, in order of appearance
        pa.field("first_frame", pa.int64(), nullable=False),
        pa.field("last_frame", pa.int64(), nullable=False),
        pa.field("faces", pa.int32(), nullable=False),  # its rows in faces/ (and face_tracks/)
        # Mean ArcFace cosine between the restored faces of consecutive appearances; null without
        # restoration, identity (--no-identity) or a second appearance.
        pa.field("identity_cosine", pa.float64()),
        # Mean absolute difference (grey levels, crops at 128x128) between consecutive restored
        # crops, and the same of the input crops beside it: restoration that flickers adds to the first.
        pa.field("restored_change", pa.float64()),
        pa.field("input_change", pa.float64()),
    ],
)
