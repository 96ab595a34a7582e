"""Streaming, mergeable summary of a face audit: everything the report shows, in bounded state.

Memory bound: the state does not grow with the number of images or faces. It holds
- per metric: `bins` counters, count, missing, min, max, an exact sum (an int of at most
  about 2,100 + log2(faces) bits) and 2 * gallery_size faces (key, value, thumbnail and
  restored thumbnail bytes, as the caller made them);
- a SIZE_AXIS.bins x YAW_AXIS.bins grid of face counts;
- counts for at most MAX_NAMES failure reasons and MAX_NAMES drop rules; further names are
  added up under one "other" count.
So its size is about metrics * 2 * gallery_size * (key + thumbnails) plus a few kilobytes.

Merging is exact: merging summaries of the parts of a set of rows gives the same state as
one summary fed every row, in any order (ties are broken by key, then by thumbnail bytes).
"""

from __future__ import annotations

import base64
import bisect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MAX_NAMES = 100
OTHER = "(other)"
# Every finite float is a whole multiple of 2**-1074: sums kept in those units are exact,
# so the mean does not depend on the order in which values (or partial summaries) arrive.
_SUM_BITS = 1074
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Axis:
    """`bins` equal bins from low to high (equal in log scale with `log`)."""

    low: float
    high: float
    bins: int
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high or self.bins < 1 or (self.log and self.low <= 0):
            raise ValueError(f"bad axis {self}")

    def index(self, x: float) -> int:
        """The bin of a finite `x`; values outside [low, high] fall in the end bins."""
        if x <= self.low:
            return 0
        if x >= self.high:
            return self.bins - 1
        lo, hi, v = (math.log(self.low), math.log(self.high), math.log(x)) if self.log else (self.low, self.high, x)
        return min(int((v - lo) / (hi - lo) * self.bins), self.bins - 1)

    def edges(self) -> np.ndarray:
        space = np.geomspace if self.log else np.linspace
        return space(self.low, self.high, self.bins + 1)


SIZE_AXIS = Axis(8.0, 2048.0, 16, log=True)
YAW_AXIS = Axis(-90.0, 90.0, 18)


@dataclass(frozen=True)
class MetricSpec:
    """A per-face metric; values outside [low, high] are counted in the end bins."""

    name: str
    label: str
    low: float
    high: float
    bins: int = 40
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"metric name must match {_NAME.pattern}: {self.name!r}")
        Axis(self.low, self.high, self.bins)  # raises on a bad range

    @property
    def axis(self) -> Axis:
        return Axis(self.low, self.high, self.bins)


@dataclass(frozen=True)
class GalleryFace:
    key: str
    value: float
    thumbnail: bytes
    restored: bytes | None = None


@dataclass(frozen=True)
class MetricStats:
    """`mean`, `min` and `max` are None when no face had a value."""

    count: int
    missing: int
    mean: float | None
    min: float | None
    max: float | None


def _scaled(x: float) -> int:
    n, d = x.as_integer_ratio()
    return n << (_SUM_BITS + 1 - d.bit_length())


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


class _Tally:
    """Counts per name. Keeps the MAX_NAMES alphabetically first names and adds the others up in
    `other`: which names are kept depends only on the set of names seen, so merges are exact."""

    def __init__(self, counts: Mapping[str, int] | None = None, other: int = 0) -> None:
        self.counts: dict[str, int] = {}
        self.other = other
        for name, n in (counts or {}).items():
            self.add(name, n)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n
        if len(self.counts) > MAX_NAMES:
            self.other += self.counts.pop(max(self.counts))

    def merge(self, other: _Tally) -> None:
        for name, n in other.counts.items():
            self.add(name, n)
        self.other += other.other

    def as_dict(self) -> dict[str, int]:
        """Sorted by name, with OTHER last when names were folded."""
        return dict(sorted(self.counts.items())) | ({OTHER: self.other} if self.other else {})

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "other": self.other}


class _Gallery:
    """The `size` faces that sort first by (sign * value, key, thumbnail, restored)."""

    def __init__(self, size: int, sign: float) -> None:
        self.size = size
        self.sign = sign
        self.faces: list[GalleryFace] = []

    def _order(self, face: GalleryFace) -> tuple[float, str, bytes, bytes]:
        return self.sign * face.value, face.key, face.thumbnail, face.restored or b""

    def wants(self, value: float) -> bool:
        """False when a face with this value cannot enter (a cheap test before `offer`)."""
        return len(self.faces) < self.size or self.sign * value <= self.sign * self.faces[-1].value

    def offer(self, face: GalleryFace) -> None:
        if len(self.faces) == self.size and self._order(face) >= self._order(self.faces[-1]):
            return
        bisect.insort(self.faces, face, key=self._order)
        del self.faces[self.size :]

    def merge(self, other: _Gallery) -> None:
        for face in other.faces:
            self.offer(face)


class _MetricState:
    def __init__(self, spec: MetricSpec, gallery_size: int) -> None:
        self.spec = spec
        self.axis = spec.axis
        self.hist = [0] * spec.bins
        self.count = 0
        self.missing = 0
        self.sum = 0  # in units of 2**-_SUM_BITS
        self.min: float | None = None
        self.max: float | None = None
        sign = 1.0 if spec.higher_is_better else -1.0
        self.worst = _Gallery(gallery_size, sign)
        self.best = _Gallery(gallery_size, -sign)

    def add(self, key: str, value: float | None, thumbnail: bytes, restored: bytes | None) -> None:
        if value is None or not math.isfinite(value):
            self.missing += 1
            return
        value = float(value) + 0.0  # -0.0 becomes 0.0, so min/max do not depend on arrival order
        self.hist[self.axis.index(value)] += 1
        self.count += 1
        self.sum += _scaled(value)
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)
        face = None
        for gallery in (self.worst, self.best):
            if gallery.wants(value):
                face = face or GalleryFace(key, value, bytes(thumbnail), None if restored is None else bytes(restored))
                gallery.offer(face)

    def merge(self, other: _MetricState) -> None:
        self.hist = [a + b for a, b in zip(self.hist, other.hist, strict=True)]
        self.count += other.count
        self.missing += other.missing
        self.sum += other.sum
        for bound, pick in (("min", min), ("max", max)):
            values = [v for v in (getattr(self, bound), getattr(other, bound)) if v is not None]
            setattr(self, bound, pick(values) if values else None)
        self.worst.merge(other.worst)
        self.best.merge(other.best)

    def stats(self) -> MetricStats:
        mean = self.sum / (self.count << _SUM_BITS) if self.count else None
        return MetricStats(self.count, self.missing, mean, self.min, self.max)

    def to_json(self) -> dict[str, Any]:
        def faces(gallery: _Gallery) -> list[dict[str, Any]]:
            return [
                {"key": f.key, "value": f.value, "thumbnail": _b64(f.thumbnail), "restored": _b64(f.restored)}
                for f in gallery.faces
            ]

        return {
            "hist": list(self.hist),
            "count": self.count,
            "missing": self.missing,
            "exact_sum": self.sum,
            "min": self.min,
            "max": self.max,
            "worst": faces(self.worst),
            "best": faces(self.best),
        }

    def load_json(self, d: Mapping[str, Any]) -> None:
        if len(d["hist"]) != self.spec.bins:
            raise ValueError(f"{self.spec.name}: histogram has {len(d['hist'])} bins, expected {self.spec.bins}")
        self.hist = [int(n) for n in d["hist"]]
        self.count, self.missing, self.sum = int(d["count"]), int(d["missing"]), int(d["exact_sum"])
        self.min, self.max = d["min"], d["max"]
        for gallery, faces in ((self.worst, d["worst"]), (self.best, d["best"])):
            for f in faces:
                gallery.offer(GalleryFace(f["key"], float(f["value"]), _unb64(f["thumbnail"]), _unb64(f["restored"])))


class AuditSummary:
    """Counts, histograms and worst/best galleries of an audit, fed row by row (see module doc)."""

    def __init__(self, metrics: Sequence[MetricSpec], gallery_size: int = 8) -> None:
        names = [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names repeat: {names}")
        if gallery_size < 1:
            raise ValueError("gallery_size must be at least 1")
        self.metrics = tuple(metrics)
        self.gallery_size = gallery_size
        self._metrics = {m.name: _MetricState(m, gallery_size) for m in self.metrics}
        self._totals = dict.fromkeys(("images", "images_ok", "faces", "kept"), 0)
        self._failures = _Tally()
        self._drops = _Tally()
        self._size_yaw = np.zeros((SIZE_AXIS.bins, YAW_AXIS.bins), np.int64)
        self._size_yaw_missing = 0

    def add_image(self, status: str) -> None:
        """`status` is "ok" or a short failure reason."""
        self._totals["images"] += 1
        if status == "ok":
            self._totals["images_ok"] += 1
        else:
            self._failures.add(status)

    def add_face(
        self,
        key: str,
        values: Mapping[str, float | None],
        size_px: float,
        yaw: float,
        kept: bool,
        dropped_by: Sequence[str],
        thumbnail: bytes,
        restored: bytes | None = None,
    ) -> None:
        """A metric absent from `values`, None or not finite counts as missing."""
        self._totals["faces"] += 1
        self._totals["kept"] += bool(kept)
        for rule in set(dropped_by):
            self._drops.add(rule)
        if math.isfinite(size_px) and math.isfinite(yaw):
            self._size_yaw[SIZE_AXIS.index(size_px), YAW_AXIS.index(yaw)] += 1
        else:
            self._size_yaw_missing += 1
        for name, state in self._metrics.items():
            state.add(key, values.get(name), thumbnail, restored)

    def merge(self, other: AuditSummary) -> None:
        if other.metrics != self.metrics or other.gallery_size != self.gallery_size:
            raise ValueError("can only merge summaries with the same metrics and gallery size")
        for name, n in other._totals.items():
            self._totals[name] += n
        self._failures.merge(other._failures)
        self._drops.merge(other._drops)
        self._size_yaw += other._size_yaw
        self._size_yaw_missing += other._size_yaw_missing
        for name, state in self._metrics.items():
            state.merge(other._metrics[name])

    def totals(self) -> dict[str, int]:
        """images, images_ok, faces, kept."""
        return dict(self._totals)

    def failures(self) -> dict[str, int]:
        """Images per failure reason."""
        return self._failures.as_dict()

    def drops(self) -> dict[str, int]:
        """Faces dropped by each rule (a face dropped by several rules counts for each)."""
        return self._drops.as_dict()

    def metric_stats(self, name: str) -> MetricStats:
        return self._metrics[name].stats()

    def histogram(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(bin edges, counts)."""
        state = self._metrics[name]
        return state.spec.axis.edges(), np.array(state.hist, np.int64)

    def worst(self, name: str) -> tuple[GalleryFace, ...]:
        """The worst faces first."""
        return tuple(self._metrics[name].worst.faces)

    def best(self, name: str) -> tuple[GalleryFace, ...]:
        """The best faces first."""
        return tuple(self._metrics[name].best.faces)

    def size_yaw(self) -> tuple[np.ndarray, int]:
        """Face counts on SIZE_AXIS x YAW_AXIS, and the number of faces without a finite size or yaw."""
        return self._size_yaw.copy(), self._size_yaw_missing

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; thumbnails in base64, exact sums as ints in units of 2**-1074."""
        return {
            "version": 1,
            "metrics": [asdict(m) for m in self.metrics],
            "gallery_size": self.gallery_size,
            "totals": self.totals(),
            "failures": self._failures.to_json(),
            "drops": self._drops.to_json(),
            "size_yaw": {"counts": self._size_yaw.tolist(), "missing": self._size_yaw_missing},
            "stats": {name: state.to_json() for name, state in self._metrics.items()},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AuditSummary:
        if d.get("version") != 1:
            raise ValueError(f"unknown summary version {d.get('version')!r}")
        summary = cls([MetricSpec(**m) for m in d["metrics"]], d["gallery_size"])
        summary._totals = {name: int(d["totals"][name]) for name in summary._totals}
        summary._failures = _Tally(d["failures"]["counts"], d["failures"]["other"])
        summary._drops = _Tally(d["drops"]["counts"], d["drops"]["other"])
        counts = np.array(d["size_yaw"]["counts"], np.int64)
        if counts.shape != summary._size_yaw.shape:
            raise ValueError(f"size/yaw grid has shape {counts.shape}, expected {summary._size_yaw.shape}")
        summary._size_yaw, summary._size_yaw_missing = counts, int(d["size_yaw"]["missing"])
        for name, state in summary._metrics.items():
            state.load_json(d["stats"][name])
        return summary
