"""AuditSummary against numbers computed from the rows themselves, its merges, JSON and bounded
size; the HTML report's contents, and the report in headless Chromium."""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from codeformer_core.report import render
from codeformer_core.samples import synthetic_face
from codeformer_core.summary import MAX_NAMES, OTHER, AuditSummary, MetricSpec
from tests import browser

METRICS = (
    MetricSpec("sharpness", "sharpness", 0.0, 1.0, bins=20),
    MetricSpec("brightness", "mean brightness (0-255)", 0.0, 255.0),
    MetricSpec("noise", "noise sigma", 0.0, 20.0, higher_is_better=False),
)
THRESHOLDS = {"min_size": 48, "max_abs_yaw": 60.0, "min_sharpness": 0.2}
STATUSES = ("ok", "decode: truncated file", "too many pixels", '<b>bad</b> & "odd"')
STATUS_P = (0.85, 0.06, 0.04, 0.05)
GALLERY = 6


@dataclass(frozen=True)
class Face:
    key: str
    values: dict[str, float | None]
    size_px: float
    yaw: float
    kept: bool
    dropped_by: tuple[str, ...]
    thumbnail: bytes
    restored: bytes | None


Row = tuple[str, list[Face]]


def png(rgb: np.ndarray, size: int) -> bytes:
    small = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


@cache
def thumbnails(i: int) -> tuple[bytes, bytes]:
    """A face's thumbnail and a larger 'restored' one."""
    face = synthetic_face(i, degrade=False)
    return png(face, 48), png(face, 96)


def make_rows(n_images: int, seed: int = 0, thumbnail: bytes | None = None) -> list[Row]:
    """Images with 0-3 faces each; some metric values missing, NaN or out of range. With
    `thumbnail`, every face has that thumbnail and no restored one."""
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    for i in range(n_images):
        status = str(rng.choice(STATUSES, p=STATUS_P))
        faces = []
        for f in range(int(rng.integers(0, 4)) if status == "ok" else 0):
            sharp = [float(rng.uniform(-0.1, 1.1)), None, math.nan][int(rng.choice(3, p=(0.9, 0.05, 0.05)))]
            values = {"sharpness": sharp, "brightness": float(rng.normal(120, 50)), "noise": float(rng.gamma(2, 3))}
            if rng.random() < 0.1:
                del values["noise"]
            size = float(np.exp(rng.uniform(math.log(6), math.log(3000))))
            yaw = float(rng.uniform(-100, 100)) if rng.random() > 0.03 else math.nan
            hits = {
                "min_size": size < 48,
                "max_abs_yaw": abs(yaw) > 60,
                "min_sharpness": sharp is not None and sharp < 0.2,
            }
            dropped = tuple(rule for rule, hit in hits.items() if hit)
            thumb, restored = (thumbnail, None) if thumbnail else thumbnails(len(rows) * 4 + f)
            key = f"s3://corpus/img{i:06d}.jpg#{f}"
            faces.append(Face(key, values, size, yaw, not dropped, dropped, thumb, restored if not dropped else None))
        rows.append((status, faces))
    return rows


def feed(summary: AuditSummary, rows: list[Row]) -> AuditSummary:
    for status, faces in rows:
        summary.add_image(status)
        for f in faces:
            summary.add_face(f.key, f.values, f.size_px, f.yaw, f.kept, f.dropped_by, f.thumbnail, f.restored)
    return summary


def summarise(rows: list[Row]) -> AuditSummary:
    return feed(AuditSummary(METRICS, gallery_size=GALLERY), rows)


def finite(faces: list[Face], name: str) -> list[tuple[float, str]]:
    values = ((f.values.get(name), f.key) for f in faces)
    return [(float(v), k) for v, k in values if v is not None and math.isfinite(v)]


def expected(rows: list[Row]) -> dict:
    """The report's numbers, computed directly from the rows."""
    faces = [f for _, fs in rows for f in fs]
    metrics = {}
    for m in METRICS:
        values = [v for v, _ in finite(faces, m.name)]
        metrics[m.name] = {
            "count": len(values),
            "missing": len(faces) - len(values),
            "mean": float(sum(map(Fraction, values), Fraction(0)) / len(values)),
            "min": min(values),
            "max": max(values),
        }
    return {
        "totals": {
            "images": len(rows),
            "images_ok": sum(status == "ok" for status, _ in rows),
            "faces": len(faces),
            "kept": sum(f.kept for f in faces),
        },
        "failures": dict(Counter(status for status, _ in rows if status != "ok")),
        "dropped_by": dict(Counter(rule for f in faces for rule in f.dropped_by)),
        "metrics": metrics,
    }


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return make_rows(200)


@pytest.fixture(scope="module")
def summary(rows) -> AuditSummary:
    return summarise(rows)


@pytest.fixture(scope="module")
def files(summary) -> dict[str, bytes]:
    return render(summary, THRESHOLDS, "Audit of <corpus> & co")


def summary_data(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="summary-data">(.*?)</script>', page, re.DOTALL)
    assert match
    return json.loads(match.group(1))


def test_rows_are_a_fair_sample(rows):
    faces = [f for _, fs in rows for f in fs]
    assert 200 <= len(faces) <= 400
    assert {s for s, _ in rows} == set(STATUSES)
    assert any(f.kept for f in faces) and any(len(f.dropped_by) > 1 for f in faces)
    assert any(f.values["sharpness"] is None for f in faces) and any("noise" not in f.values for f in faces)


def test_summary_equals_numbers_from_the_rows(rows, summary):
    want = expected(rows)
    assert summary.totals() == want["totals"]
    assert summary.failures() == want["failures"]
    assert summary.drops() == want["dropped_by"]
    faces = [f for _, fs in rows for f in fs]
    for m in METRICS:
        stats = summary.metric_stats(m.name)
        assert (stats.count, stats.missing, stats.mean, stats.min, stats.max) == tuple(want["metrics"][m.name].values())
        values = np.array([v for v, _ in finite(faces, m.name)])
        edges, counts = summary.histogram(m.name)
        np.testing.assert_allclose(edges, np.linspace(m.low, m.high, m.bins + 1))
        want_counts, _ = np.histogram(np.clip(values, m.low, m.high), bins=m.bins, range=(m.low, m.high))
        np.testing.assert_array_equal(counts, want_counts)
        sign = 1 if m.higher_is_better else -1
        for gallery, direction in ((summary.worst(m.name), sign), (summary.best(m.name), -sign)):
            ranked = sorted(finite(faces, m.name), key=lambda vk: (direction * vk[0], vk[1]))
            assert [(f.key, f.value) for f in gallery] == [(k, v) for v, k in ranked[:GALLERY]]
    grid, unplaced = summary.size_yaw()
    assert grid.sum() + unplaced == len(faces)
    assert unplaced == sum(not math.isfinite(f.yaw) for f in faces)


def test_gallery_ties_do_not_depend_on_arrival_order():
    thumb = thumbnails(0)[0]
    keys = [f"face{i:02d}" for i in range(20)]
    results = []
    for order in (keys, keys[::-1]):
        s = AuditSummary(METRICS[:1], gallery_size=4)
        for key in order:
            s.add_face(key, {"sharpness": 0.5}, 100.0, 0.0, True, (), thumb)
        results.append(([f.key for f in s.worst("sharpness")], [f.key for f in s.best("sharpness")]))
    assert results[0] == results[1] == (keys[:4], keys[:4])


def test_merge_equals_one_pass(rows, summary):
    rng = np.random.default_rng(1)
    order = rng.permutation(len(rows))
    parts = [summarise([rows[i] for i in chunk]) for chunk in np.array_split(order, 3)]
    merged = AuditSummary(METRICS, gallery_size=GALLERY)
    for part in parts[::-1]:
        merged.merge(part)
    assert merged.to_json() == summary.to_json()
    with pytest.raises(ValueError):
        merged.merge(AuditSummary(METRICS[:2], gallery_size=GALLERY))


def test_many_failure_reasons_fold_the_same_in_any_order():
    reasons = [f"reason {i:03d}" for i in range(MAX_NAMES + 50)]
    one = AuditSummary(METRICS)
    for r in reasons[::-1]:
        one.add_image(r)
    halves = [AuditSummary(METRICS), AuditSummary(METRICS)]
    for i, r in enumerate(reasons):
        halves[i % 2].add_image(r)
    halves[0].merge(halves[1])
    assert halves[0].failures() == one.failures() == {**{r: 1 for r in reasons[:MAX_NAMES]}, OTHER: 50}


def test_json_round_trip(summary, files):
    d = summary.to_json()
    again = AuditSummary.from_json(json.loads(json.dumps(d)))
    assert again.to_json() == d
    assert render(again, THRESHOLDS, "Audit of <corpus> & co") == files


def test_state_and_report_size_do_not_grow_with_faces():
    thumb = thumbnails(0)[0]
    small, large = (summarise(make_rows(n, seed=2, thumbnail=thumb)) for n in (1_600, 16_000))
    assert 1_900 < small.totals()["faces"] < 2_100 and 19_000 < large.totals()["faces"] < 21_000
    small_json, large_json = (len(json.dumps(s.to_json())) for s in (small, large))
    assert abs(large_json - small_json) / small_json < 0.03
    small_html, large_html = (len(render(s, THRESHOLDS, "t")["report.html"]) for s in (small, large))
    assert abs(large_html - small_html) / small_html < 0.05


def test_report_files(summary, files):
    assert set(files) == {"report.html", "figures/size-yaw.png"} | {f"figures/hist-{m.name}.png" for m in METRICS}
    for name, data in files.items():
        if name.endswith(".png"):
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape[1] == 600 and image.shape[0] >= 300 and image.std() > 10, name


def test_report_html_contents(rows, summary, files):
    page = files["report.html"].decode("utf-8")
    for m in METRICS:
        assert f'<figure class="histogram" data-metric="{m.name}">' in page
        assert f'<table class="stats" data-metric="{m.name}">' in page
        for kind in ("worst", "best"):
            assert f'<div class="gallery" data-metric="{m.name}" data-kind="{kind}">' in page
    assert page.count('class="scatter"') == 1
    for table in ("totals", "failures", "thresholds"):
        assert f'<table id="{table}">' in page
    assert page.count('class="after"') == sum(
        f.restored is not None for m in METRICS for f in summary.worst(m.name) + summary.best(m.name)
    )
    # Escaped text; nothing loaded from elsewhere; no script but the data.
    assert "<b>bad</b>" not in page and "&lt;b&gt;bad&lt;/b&gt; &amp; &quot;odd&quot;" in page
    assert "&lt;corpus&gt; &amp; co" in page
    assert not re.search(r'(src|href)="(?!data:)', page) and "<link" not in page
    assert page.count("<script") == 1
    data = summary_data(page)
    want = expected(rows)
    for key in ("totals", "failures", "dropped_by", "metrics"):
        assert data[key] == want[key], key
    assert data["thresholds"] == THRESHOLDS


class Images(HTMLParser):
    """Each <img> with the classes of its ancestors and its own attributes."""

    VOID = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.open: list[tuple[str, list[str]]] = []
        self.images: list[tuple[set[str], dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(({c for _, classes in self.open for c in classes}, a))
        elif tag not in self.VOID:
            self.open.append((tag, (a.get("class") or "").split()))

    def handle_endtag(self, tag):
        while self.open and self.open.pop()[0] != tag:
            pass


@pytest.fixture(scope="module")
def chromium() -> str:
    script = Path(__file__).parents[1] / "setup-chromium.sh"
    setup = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True, timeout=1800)
    found = browser.find_chromium()
    if found is None:
        pytest.skip(f"no headless Chromium on PATH; {script.name} said: {setup.stdout.strip() or setup.returncode}")
    return found


# Marks each image with its decoded width once the page has loaded, for --dump-dom to show.
PROBE = (
    "<script>addEventListener('load', () => {"
    "for (const i of document.images) i.dataset.loadedWidth = i.naturalWidth})</script>"
)


def test_report_in_headless_chromium(chromium, summary, files, tmp_path):
    page = tmp_path / "report.html"
    page.write_bytes(files["report.html"])
    shot = tmp_path / "report.png"
    browser.screenshot(page, shot, width=1280, height=2400)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[1] == 1280 and image.std() > 20

    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    parser = Images()
    parser.feed(browser.dump_dom(probed))
    histograms = [a for classes, a in parser.images if "histogram" in classes]
    scatter = [a for classes, a in parser.images if "scatter" in classes]
    gallery = [a for classes, a in parser.images if "gallery" in classes]
    assert [a["data-loaded-width"] for a in histograms + scatter] == ["600"] * (len(METRICS) + 1)
    faces = [f for m in METRICS for f in summary.worst(m.name) + summary.best(m.name)]
    assert len(gallery) == len(faces) + sum(f.restored is not None for f in faces)
    assert all(int(a["data-loaded-width"]) in (48, 96) for a in gallery)
