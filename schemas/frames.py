"""`frames/`: one row per kept frame of a video input, whatever happened to it."""

import pyarrow as pa

from codeformer_core.statuses import MEANINGS
from schemas import versioned

VERSION = 1

SCHEMA = versioned(
    "frames",
    VERSION,
    [
        pa.field("image_id", pa.string(), nullable=False),  # the video's, as in images/
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("segment", pa.int32(), nullable=False),  # the segment that decoded it (images/ has a row per segment)
        pa.field("frame_index", pa.int64(), nullable=False),  # from 0, by presentation time at the stream's average rate
        pa.field("timestamp", pa.float64(), nullable=False),  # seconds from the stream's start
        pa.field("status", pa.string(), nullable=False, metadata={"values": ",".join(MEANINGS)}),
        pa.field("error", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("num_faces", pa.int32(), nullable=False),  # its rows in faces/
    ],
)
