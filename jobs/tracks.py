"""Face tracks of every video in an output, after its run: tracks/ and face_tracks/.

A task per group of shards (jobs.per_video) streams its videos' faces/ rows in frame order, links
each video's faces (codeformer_core.tracking) and writes the group's two files, named by its first
shard: a rerun overwrites them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas.face_tracks
import schemas.tracks
from codeformer_core import storage
from codeformer_core.tracking import Face, Steadiness, TrackConfig, Tracker, crop_square
from jobs import listing
from jobs.per_video import committed_files, frames_of, run_groups

WRITE_ROWS = 10_000
RECORD = "_tracks.json"
TABLES = ("tracks", "face_tracks")


@dataclass(frozen=True)
class Crops:
    """The faces/ columns (IMAGE_STRUCT) whose consecutive crops a track compares."""

    restored: str
    input: str


def decoded(cell: dict | None) -> np.ndarray | None:
    if cell is None or cell.get("bytes") is None:
        return None
    return cv2.imdecode(np.frombuffer(cell["bytes"], np.uint8), cv2.IMREAD_COLOR)


class VideoTracks:
    """One video's tracker and the steadiness of each of its tracks."""

    def __init__(self, image_id: str, source_uri: str, config: TrackConfig) -> None:
        self.image_id, self.source_uri = image_id, source_uri
        self.tracker = Tracker(config)
        self.tracks: dict[int, Steadiness] = {}
        self.last_frame = -1

    def frame(self, rows: list[dict], crops: Crops) -> list[int]:
        """One frame's faces/ rows -> their track ids."""
        frame = rows[0]["frame_index"]
        if frame <= self.last_frame:
            raise ValueError(f"faces of {self.source_uri} are not in frame order ({frame} after {self.last_frame})")
        self.last_frame = frame
        faces = [Face(frame, crop_square(r["affine"]), None if r["landmarks"] is None else np.asarray(r["landmarks"], np.float64).reshape(5, 2)) for r in rows]
        ids = self.tracker.update(faces)
        for track, row in zip(ids, rows):
            embedding = None if row.get("restored_embedding") is None else np.asarray(row["restored_embedding"], np.float32)
            self.tracks.setdefault(track, Steadiness(frame)).add(frame, embedding, decoded(row.get(crops.restored)), decoded(row.get(crops.input)))
        live = {t for t, _, _ in self.tracker.live}
        for track, steadiness in self.tracks.items():
            if track not in live:
                steadiness.forget()
        return ids

    def rows(self) -> list[dict]:
        return [{"image_id": self.image_id, "source_uri": self.source_uri, "track_id": t, "first_frame": s.first, "last_frame": s.last,
                 "faces": s.faces, **s.means()} for t, s in sorted(self.tracks.items())]


def track_group(output: str, shards: list[int], crops: Crops, config: TrackConfig) -> dict:
    """Link the faces of the videos in `shards` (a group of shard_groups) and write the group's
    tracks/ and face_tracks/ files; what it found: {"videos", "tracks", "faces", sums of the track means}."""
    files = committed_files(output, shards, "faces")
    columns = ["image_id", "source_uri", "frame_index", "face_index", "affine", "landmarks", "restored_embedding", crops.restored, crops.input]
    name = f"group-{shards[0]:08d}.parquet"
    found = {"videos": 0, "tracks": 0, "faces": 0, "sums": {}}
    tracks: list[dict] = []
    with storage.output_stream(storage.join(output, "face_tracks", name)) as stream, pq.ParquetWriter(stream, schemas.face_tracks.SCHEMA) as writer:
        pending: list[dict] = []
        video: VideoTracks | None = None

        def finish_video() -> None:
            if video is not None:
                made = video.rows()
                tracks.extend(made)
                found["videos"] += 1
                found["tracks"] += len(made)

        for frame_rows in frames_of(files, columns):
            first = frame_rows[0]
            if video is None or video.image_id != first["image_id"]:
                finish_video()
                video = VideoTracks(first["image_id"], first["source_uri"], config)
            for row, track in zip(frame_rows, video.frame(frame_rows, crops)):
                pending.append({"image_id": row["image_id"], "frame_index": row["frame_index"], "face_index": row["face_index"], "track_id": track})
            found["faces"] += len(frame_rows)
            if len(pending) >= WRITE_ROWS:
                writer.write_table(pa.Table.from_pylist(pending, schema=schemas.face_tracks.SCHEMA))
                pending = []
        finish_video()
        writer.write_table(pa.Table.from_pylist(pending, schema=schemas.face_tracks.SCHEMA))
    with storage.output_stream(storage.join(output, "tracks", name)) as stream:
        pq.write_table(pa.Table.from_pylist(tracks, schema=schemas.tracks.SCHEMA), stream)
    for row in tracks:
        for key in ("identity_cosine", "restored_change", "input_change"):
            if row[key] is not None:
                total = found["sums"].setdefault(key, [0.0, 0])
                total[0] += row[key]
                total[1] += 1
    return found


def track_videos(output: str, inputs: listing.Listing, crops: Crops, changed: bool, start_ray: Callable[[], None], config: TrackConfig = TrackConfig()) -> list[str]:
    """Write the tracks of every video of the output (again, when the run `changed` it); summary lines."""
    record = storage.join(output, RECORD)
    if not changed and storage.file_size(record) is not None:
        return summary(json.loads(storage.read_bytes(record)), output)
    if storage.file_size(record) is not None:
        storage.delete(record)
    for table in TABLES:
        storage.delete_dir(storage.join(output, table))
    print("linking the faces of each video into tracks", file=sys.stderr)
    total = {"videos": 0, "tracks": 0, "faces": 0, "sums": {}}
    for found in run_groups(output, inputs, track_group, (crops, config), start_ray, "linking the faces of videos into tracks"):
        for key in ("videos", "tracks", "faces"):
            total[key] += found[key]
        for key, (value, n) in found["sums"].items():
            kept = total["sums"].setdefault(key, [0.0, 0])
            kept[0] += value
            kept[1] += n
    storage.write_bytes(record, json.dumps(total).encode())
    return summary(total, output)


def summary(total: dict, output: str) -> list[str]:
    means = {k: f"{value / n:.3f}" for k, (value, n) in total["sums"].items() if n}
    return [
        f"tracks {total['tracks']} in {total['videos']} videos with faces, {total['faces']} faces: {output}/tracks/ and {output}/face_tracks/"
        + (f"; mean per track: identity cosine frame to frame {means.get('identity_cosine', 'n/a')}, "
           f"restored change {means.get('restored_change', 'n/a')} vs input {means.get('input_change', 'n/a')} grey levels" if means else "")
    ]
