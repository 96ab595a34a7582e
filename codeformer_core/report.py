"""The audit report: one self-contained HTML page and its figures as PNG files, drawn from an
AuditSummary, so its size depends on the number of metrics, bins and gallery faces only.

The page inlines its figures and thumbnails as data URIs and its style; it needs no script and
loads nothing. A JSON copy of the numbers sits in <script type="application/json" id="summary-data">.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from codeformer_core.summary import SIZE_AXIS, YAW_AXIS, AuditSummary, GalleryFace, MetricSpec

FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.42
INK = (40, 40, 40)
GRID = (225, 225, 225)
BAR = (180, 119, 31)
EMPTY = (245, 245, 245)
# The tables print values to this many significant digits; the metrics' precision is tested against it.
SIGNIFICANT_DIGITS = 4


@dataclass(frozen=True)
class Plot:
    """Canvas size and the margins around the plot area, in pixels."""

    width: int = 600
    height: int = 300
    left: int = 64
    right: int = 20
    top: int = 30
    bottom: int = 50


HISTOGRAM_PLOT = Plot()
SIZE_YAW_PLOT = Plot(height=360, right=100)


def histogram_name(spec: MetricSpec) -> str:
    return f"figures/hist-{spec.name}.png"


SIZE_YAW_NAME = "figures/size-yaw.png"


def _nice_step(span: float, n: int) -> float:
    """The smallest 1, 2 or 5 times a power of ten that cuts `span` into at most `n` steps."""
    raw = span / n
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def _ticks(low: float, high: float, n: int = 5) -> list[float]:
    step = _nice_step(high - low, n)
    first = math.ceil(low / step - 1e-9)
    return [k * step for k in range(first, math.floor(high / step + 1e-9) + 1)]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.{SIGNIFICANT_DIGITS}g}"


def _fmt_count(n: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.4g}"


def _text(img: np.ndarray, text: str, x: int, y: int, align: str = "left", color: tuple = INK) -> None:
    """Draws ASCII `text` with its baseline at y; `align` says where x is: left, center or right."""
    text = text.encode("ascii", "replace").decode("ascii")
    (w, _), _ = cv2.getTextSize(text, FONT, FONT_SCALE, 1)
    x -= {"left": 0, "center": w // 2, "right": w}[align]
    cv2.putText(img, text, (x, y), FONT, FONT_SCALE, color, 1, cv2.LINE_AA)


def _png(img: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", img)
    assert ok
    return data.tobytes()


def histogram_png(spec: MetricSpec, counts: np.ndarray, plot: Plot = HISTOGRAM_PLOT) -> bytes:
    """Bars of faces per bin, with count and value axes."""
    img = np.full((plot.height, plot.width, 3), 255, np.uint8)
    x0, x1, y0, y1 = plot.left, plot.width - plot.right, plot.top, plot.height - plot.bottom
    peak = max(int(counts.max()), 1)
    step = max(_nice_step(peak, 4), 1.0)
    top = step * math.ceil(peak / step)
    for t in np.arange(0.0, top + step / 2, step):
        y = y1 - round(t / top * (y1 - y0))
        cv2.line(img, (x0, y), (x1, y), GRID, 1)
        _text(img, _fmt_count(t), x0 - 6, y + 4, "right")
    bins = len(counts)
    gap = 1 if (x1 - x0) / bins >= 4 else 0
    for i, n in enumerate(counts):
        if n:
            a, b = x0 + round(i * (x1 - x0) / bins), x0 + round((i + 1) * (x1 - x0) / bins) - 1 - gap
            cv2.rectangle(img, (a, y1 - max(round(n / top * (y1 - y0)), 1)), (max(a, b), y1), BAR, -1)
    cv2.line(img, (x0, y1), (x1, y1), INK, 1)
    cv2.line(img, (x0, y0), (x0, y1), INK, 1)
    for t in _ticks(spec.low, spec.high):
        x = x0 + round((t - spec.low) / (spec.high - spec.low) * (x1 - x0))
        cv2.line(img, (x, y1), (x, y1 + 4), INK, 1)
        _text(img, _fmt(t), x, y1 + 18, "center")
    _text(img, spec.label, (x0 + x1) // 2, plot.height - 10, "center")
    _text(img, "faces", 8, y0 - 12)
    _text(
        img, "higher is better" if spec.higher_is_better else "lower is better", x1, y0 - 12, "right", (120, 120, 120)
    )
    return _png(img)


def size_yaw_png(counts: np.ndarray, plot: Plot = SIZE_YAW_PLOT) -> bytes:
    """Heatmap of faces per (size, yaw) cell, colours on a log scale, empty cells grey."""
    img = np.full((plot.height, plot.width, 3), 255, np.uint8)
    x0, x1, y0, y1 = plot.left, plot.width - plot.right, plot.top, plot.height - plot.bottom
    peak = max(int(counts.max()), 1)
    level = np.round(np.log1p(counts) / math.log1p(peak) * 255).astype(np.uint8)
    colours = cv2.applyColorMap(level, cv2.COLORMAP_VIRIDIS)
    nx, ny = counts.shape
    for i in range(nx):
        for j in range(ny):
            a, b = x0 + round(i * (x1 - x0) / nx), x0 + round((i + 1) * (x1 - x0) / nx) - 1
            c, d = y1 - round((j + 1) * (y1 - y0) / ny), y1 - round(j * (y1 - y0) / ny) - 1
            colour = tuple(int(v) for v in colours[i, j]) if counts[i, j] else EMPTY
            cv2.rectangle(img, (a, c), (b, d), colour, -1)
    cv2.rectangle(img, (x0 - 1, y0 - 1), (x1, y1), INK, 1)
    for k, edge in enumerate(SIZE_AXIS.edges()):
        if k % 2 == 0:
            x = x0 + round(k * (x1 - x0) / nx)
            cv2.line(img, (x, y1), (x, y1 + 4), INK, 1)
            _text(img, f"{edge:.0f}", x, y1 + 18, "center")
    for t in np.arange(YAW_AXIS.low, YAW_AXIS.high + 1, 30.0):
        y = y1 - round((t - YAW_AXIS.low) / (YAW_AXIS.high - YAW_AXIS.low) * (y1 - y0))
        cv2.line(img, (x0 - 5, y), (x0 - 1, y), INK, 1)
        _text(img, f"{t:.0f}", x0 - 8, y + 4, "right")
    _text(img, "face size (px, log scale)", (x0 + x1) // 2, plot.height - 10, "center")
    _text(img, "yaw (deg)", 8, y0 - 12)
    _text(img, "faces (log scale)", plot.width - 8, y0 - 12, "right")
    bar_x = x1 + 20
    ramp = cv2.applyColorMap(np.linspace(255, 0, y1 - y0).astype(np.uint8)[:, None], cv2.COLORMAP_VIRIDIS)
    img[y0:y1, bar_x : bar_x + 14] = ramp
    cv2.rectangle(img, (bar_x - 1, y0 - 1), (bar_x + 14, y1), INK, 1)
    labels = [(0, y1), (peak, y0 + 8)] + (
        [(round(math.expm1(math.log1p(peak) / 2)), (y0 + y1) // 2)] if peak >= 10 else []
    )
    for n, y in labels:
        _text(img, _fmt_count(n), bar_x + 20, y)
    return _png(img)


def _data_uri(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        mime = "image/png"
    elif data.startswith(b"\xff\xd8"):
        mime = "image/jpeg"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    else:
        mime = "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _attrs(**attrs: object) -> str:
    """HTML attributes; a trailing underscore is dropped (class_ -> class), _ becomes -."""
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{html.escape(str(v))}"' for k, v in attrs.items())


def _table(attrs: str, head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    cells += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
    return f"<table{attrs}>{''.join(cells)}</table>"


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:.2f}%" if total else "-"


def _tracks_html(tracks: Mapping) -> str:
    """The videos' tracks: counts, and the steadiness means over tracks (codeformer_core.tracking)."""
    def mean(name: str) -> str:
        total, n = tracks["sums"].get(name, (0.0, 0))
        return f"{total / n:.3f}" if n else "n/a"

    rows = [("videos", f"{tracks['videos']:,}"), ("tracks", f"{tracks['tracks']:,}"), ("faces in tracks", f"{tracks['faces']:,}"),
            ("identity cosine of consecutive restored faces", mean("identity_cosine")),
            ("pixel change of consecutive restored crops (grey levels)", mean("restored_change")),
            ("pixel change of consecutive input crops (grey levels)", mean("input_change"))]
    return "<h2>Video tracks</h2>" + _table(_attrs(id="tracks"), ("", "mean over tracks, or count"), rows)


def _totals_html(summary: AuditSummary) -> str:
    t = summary.totals()
    rows = [
        ("images", f"{t['images']:,}", ""),
        ("images ok", f"{t['images_ok']:,}", _share(t["images_ok"], t["images"])),
        ("faces", f"{t['faces']:,}", ""),
        ("kept faces", f"{t['kept']:,}", _share(t["kept"], t["faces"])),
    ]
    failures = summary.failures()
    failed = sum(failures.values())
    failure_rows = [(reason, f"{n:,}", _share(n, failed)) for reason, n in failures.items()]
    return (
        "<h2>Totals</h2>"
        + _table(_attrs(id="totals"), ("", "count", "share"), rows)
        + "<h2>Failed images</h2>"
        + _table(_attrs(id="failures"), ("reason", "images", "share of failures"), failure_rows)
    )


def _thresholds_html(summary: AuditSummary, thresholds: Mapping[str, object]) -> str:
    drops, faces = summary.drops(), summary.totals()["faces"]
    rules = sorted(set(thresholds) | set(drops))
    rows = [
        (
            rule,
            thresholds.get(rule, "-"),
            f"{drops.get(rule, 0):,}",
            _share(drops.get(rule, 0), faces),
        )
        for rule in rules
    ]
    return "<h2>Thresholds</h2><p>A face dropped by several rules counts for each.</p>" + _table(
        _attrs(id="thresholds"), ("rule", "threshold", "faces removed", "share of faces"), rows
    )


def _face_html(face: GalleryFace) -> str:
    images = f"<img{_attrs(class_='before', src=_data_uri(face.thumbnail), alt=face.key)}>"
    if face.restored is not None:
        images += f"<img{_attrs(class_='after', src=_data_uri(face.restored), alt=face.key + ' (restored)')}>"
    return (
        f'<figure{_attrs(class_="face", title=face.key)}><div class="pair">{images}</div>'
        f"<figcaption><b>{html.escape(_fmt(face.value))}</b> {html.escape(face.key)}</figcaption></figure>"
    )


def _gallery_html(spec: MetricSpec, kind: str, faces: Sequence[GalleryFace]) -> str:
    heading = f"{kind.capitalize()} {len(faces)} by {spec.label}"
    body = "".join(_face_html(f) for f in faces) or "<p>No face has this metric.</p>"
    attrs = _attrs(class_="gallery", data_metric=spec.name, data_kind=kind)
    return f"<div{attrs}><h4>{html.escape(heading)}</h4>{body}</div>"


def _figure_html(png: bytes, plot: Plot, alt: str, caption: str, **attrs: object) -> str:
    image = _attrs(src=_data_uri(png), alt=alt, width=plot.width, height=plot.height)
    return f"<figure{_attrs(**attrs)}><img{image}><figcaption>{html.escape(caption)}</figcaption></figure>"


def _metric_html(summary: AuditSummary, spec: MetricSpec, figure: bytes) -> str:
    stats = summary.metric_stats(spec.name)
    rows = [
        ("count", f"{stats.count:,}"),
        ("missing", f"{stats.missing:,}"),
        ("mean", _fmt(stats.mean)),
        ("min", _fmt(stats.min)),
        ("max", _fmt(stats.max)),
    ]
    caption = f"{spec.bins} bins from {_fmt(spec.low)} to {_fmt(spec.high)}; values outside count in the end bins."
    return (
        f"<section{_attrs(class_='metric', data_metric=spec.name)}><h3>{html.escape(spec.label)}</h3>"
        '<div class="row">'
        + _figure_html(
            figure, HISTOGRAM_PLOT, f"histogram of {spec.label}", caption, class_="histogram", data_metric=spec.name
        )
        + _table(_attrs(class_="stats", data_metric=spec.name), ("", spec.name), rows)
        + "</div>"
        + _gallery_html(spec, "worst", summary.worst(spec.name))
        + _gallery_html(spec, "best", summary.best(spec.name))
        + "</section>"
    )


def _summary_data(summary: AuditSummary, thresholds: Mapping[str, object], title: str) -> str:
    data = {
        "title": title,
        "totals": summary.totals(),
        "failures": summary.failures(),
        "dropped_by": summary.drops(),
        "thresholds": dict(thresholds),
        "metrics": {m.name: asdict(summary.metric_stats(m.name)) for m in summary.metrics},
        "size_yaw_missing": summary.size_yaw()[1],
    }
    text = json.dumps(data, default=str, sort_keys=True)
    # Still valid JSON, and never closes the script element.
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1320px;color:#222;padding:0 16px}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 10px;text-align:left}
td+td{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:0}
figcaption{font-size:12px;color:#555}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.metric{border-top:1px solid #ddd;margin-top:24px}
.gallery{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
.gallery h4{flex-basis:100%;margin:12px 0 0}
.face{width:200px}
.face .pair{display:flex;gap:2px}
.face img{width:96px;height:96px;object-fit:contain;background:#eee}
.face figcaption{word-break:break-all}
"""


def render(summary: AuditSummary, thresholds: Mapping[str, object], title: str, tracks: Mapping | None = None) -> dict[str, bytes]:
    """{"report.html": page, "figures/<name>.png": figure, ...}; the page inlines the figures.
    `tracks`: what the tracks of the output's videos add up to (jobs.tracks' record), when it has videos."""
    figures = {histogram_name(m): histogram_png(m, summary.histogram(m.name)[1]) for m in summary.metrics}
    counts, unplaced = summary.size_yaw()
    figures[SIZE_YAW_NAME] = size_yaw_png(counts)
    caption = f"{unplaced:,} faces without a size or yaw are not shown."
    scatter = _figure_html(figures[SIZE_YAW_NAME], SIZE_YAW_PLOT, "faces by size and yaw", caption, class_="scatter")
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + _totals_html(summary)
        + _thresholds_html(summary, thresholds)
        + (_tracks_html(tracks) if tracks else "")
        + "<h2>Face size and yaw</h2>"
        + scatter
        + "<h2>Metrics</h2>"
        + "".join(_metric_html(summary, m, figures[histogram_name(m)]) for m in summary.metrics)
        + f'<script type="application/json" id="summary-data">{_summary_data(summary, thresholds, title)}</script>'
        + "</body></html>\n"
    )
    return {"report.html": page.encode("utf-8"), **figures}
