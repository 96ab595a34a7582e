"""Faces linked across the frames of a video into tracks, and how steady a track is.

A face is its aligned crop's square in the frame (every face has one: detected, given, or the
whole frame with --aligned) and, when known, its 5 landmarks. Each frame's faces are matched to the tracks seen in
the last `max_gap` kept frames by the Hungarian assignment (scipy) on a cost of 1 - IoU of the
squares plus the landmark distance in units of the square's side; a pair whose IoU is under
`min_iou` is never matched. Unmatched faces start new tracks, numbered from 0 in order of
appearance, so the same faces give the same ids on every run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from codeformer_core.align import FACE_SIZE

CHANGE_SIZE = 128  # crops are compared at this size, so that the restore job's 512 PNGs and the audit's 128 thumbnails agree


@dataclass(frozen=True)
class TrackConfig:
    min_iou: float = 0.2
    max_gap: int = 3  # kept frames a track may go unseen and still be continued
    landmark_weight: float = 1.0


@dataclass(frozen=True)
class Face:
    frame: int
    square: np.ndarray  # x1, y1, x2, y2 of the aligned crop in the frame
    landmarks: np.ndarray | None  # (5, 2) in the frame


def crop_square(affine: Sequence[float]) -> np.ndarray:
    """The box around the aligned crop's square in the input image, from its 2x3 input -> crop affine."""
    m = np.asarray(affine, np.float64).reshape(2, 3)
    inverse = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0], [FACE_SIZE, 0], [0, FACE_SIZE], [FACE_SIZE, FACE_SIZE]], np.float64)
    points = corners @ inverse[:, :2].T + inverse[:, 2]
    return np.concatenate([points.min(0), points.max(0)])


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (n, 4) with every box in `b` (m, 4)."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], axis=1), np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


class Tracker:
    """Track ids for one video's faces, fed frame by frame in order (`update`); it holds only the
    tracks seen in the last `max_gap` kept frames."""

    def __init__(self, config: TrackConfig = TrackConfig()) -> None:
        self.config = config
        self.live: list[tuple[int, Face, int]] = []  # id, last face, kept frames since it was seen
        self.count = 0

    def update(self, faces: list[Face]) -> list[int]:
        """The track id of each of this frame's faces."""
        ids = [-1] * len(faces)
        if self.live and faces:
            cost, overlap = self.cost([t[1] for t in self.live], faces)
            for i, j in zip(*linear_sum_assignment(cost)):
                if overlap[i, j] >= self.config.min_iou:
                    ids[j] = self.live[i][0]
        for j in range(len(faces)):
            if ids[j] < 0:
                ids[j], self.count = self.count, self.count + 1
        matched = set(ids)
        self.live = [(t, f, age + 1) for t, f, age in self.live if t not in matched and age + 1 <= self.config.max_gap]
        self.live += [(ids[j], face, 0) for j, face in enumerate(faces)]
        return ids

    def cost(self, seen: list[Face], faces: list[Face]) -> tuple[np.ndarray, np.ndarray]:
        """1 - IoU plus the weighted landmark distance over the square's side; pairs under min_iou priced out."""
        overlap = iou(np.stack([f.square for f in seen]), np.stack([f.square for f in faces]))
        cost = 1.0 - overlap
        for j, face in enumerate(faces):
            if face.landmarks is None:
                continue
            side = max(float(np.mean(face.square[2:] - face.square[:2])), 1e-9)
            for i, old in enumerate(seen):
                if old.landmarks is not None:
                    cost[i, j] += self.config.landmark_weight * float(np.linalg.norm(old.landmarks - face.landmarks, axis=1).mean()) / side
        cost[overlap < self.config.min_iou] = 1e6
        return cost, overlap


def link(frames: Iterable[list[Face]], config: TrackConfig = TrackConfig()) -> Iterator[list[int]]:
    """For each frame's faces (frames of one video, in order), their track ids."""
    tracker = Tracker(config)
    for faces in frames:
        yield tracker.update(faces)


def pixel_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference, in grey levels, of two RGB face crops resized to CHANGE_SIZE."""
    small = [cv2.resize(x, (CHANGE_SIZE, CHANGE_SIZE), interpolation=cv2.INTER_AREA) if x.shape[0] != CHANGE_SIZE else x for x in (a, b)]
    return float(np.abs(small[0].astype(np.float32) - small[1].astype(np.float32)).mean())


def consecutive_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


class Steadiness:
    """How much one track changes from one appearance to the next: the mean identity cosine of
    consecutive restored faces, and the mean pixel change of consecutive restored and input crops.
    It keeps only the last appearance."""

    def __init__(self, frame: int) -> None:
        self.first = self.last = frame
        self.faces = 0
        self.sums = {"identity_cosine": [0.0, 0], "restored_change": [0.0, 0], "input_change": [0.0, 0]}
        self.previous: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None] = (None, None, None)

    def add(self, frame: int, embedding: np.ndarray | None, restored: np.ndarray | None, crop: np.ndarray | None) -> None:
        before = self.previous
        for name, a, b, measure in (("identity_cosine", before[0], embedding, consecutive_cosine),
                                    ("restored_change", before[1], restored, pixel_change), ("input_change", before[2], crop, pixel_change)):
            if a is not None and b is not None:
                self.sums[name][0] += measure(a, b)
                self.sums[name][1] += 1
        self.previous = (embedding, restored, crop)
        self.last, self.faces = frame, self.faces + 1

    def forget(self) -> None:
        """The track has ended: drop the crops it kept."""
        self.previous = (None, None, None)

    def means(self) -> dict[str, float | None]:
        return {name: total / n if n else None for name, (total, n) in self.sums.items()}
