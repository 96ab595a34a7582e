"""`faces/` of the dedup job: every face with its duplicate group, identity cluster and keep decision."""

import pyarrow as pa

from schemas import versioned
from schemas.dedup_embedded import FACE

VERSION = 1

SCHEMA = versioned(
    "dedup_faces",
    VERSION,
    [
        *FACE,
        pa.field("dup_group", pa.int64(), nullable=False),  # the smallest face_id of the group; the face's own when alone
        pa.field("dup_group_size", pa.int64(), nullable=False),
        pa.field("identity", pa.int64()),  # the smallest face_id of its identity cluster; null below --min-identity-size
        pa.field("identity_size", pa.int64()),
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("dropped_by", pa.list_(pa.string()), nullable=False),  # "duplicate" or "identity_cap"; empty when kept
    ],
)
