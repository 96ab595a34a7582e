"""The dedup report: one self-contained HTML page in the audit report's style, from the grouping's
bounded summary (counts, size histograms, the largest groups and the pairs nearest the thresholds)
and the thumbnails of the faces it shows."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping

from codeformer_core.report import STYLE, _attrs, _data_uri, _share, _table

EXTRA_STYLE = """
.group{display:flex;gap:4px;align-items:flex-start;flex-wrap:wrap;border-top:1px solid #ddd;padding:6px 0}
.group h4{flex-basis:100%;margin:4px 0}
.group img,.pair img{width:96px;height:96px}
.dropped{opacity:.45}
.pairs{display:flex;flex-wrap:wrap;gap:16px}
.bar{background:#1f77b4;height:12px}
#rules td{text-align:left}
"""


def size_bins(counts: list[list[int]]) -> list[tuple[str, int]]:
    """[size, groups] -> groups per size bin 2, 3-4, 5-8, ... (powers of two)."""
    bins: dict[int, int] = {}
    for size, n in counts:
        top = 2
        while top < size:
            top *= 2
        bins[top] = bins.get(top, 0) + n
    return [(str(top) if top == 2 else f"{top // 2 + 1}-{top}", bins[top]) for top in sorted(bins)]


def histogram_html(title: str, counts: list[list[int]], id_: str) -> str:
    rows = size_bins(counts)
    most = max((n for _, n in rows), default=1)
    cells = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{n:,}</td><td style='width:320px'><div class='bar' style='width:{100 * n / most:.1f}%'></div></td></tr>"
        for label, n in rows
    )
    body = f"<table{_attrs(id=id_)}><tr><th>faces in the group</th><th>groups</th><th></th></tr>{cells}</table>" if rows else "<p>None.</p>"
    return f"<h3>{html.escape(title)}</h3>{body}"


def face_img(face_id: int, thumbnails: Mapping[int, bytes], kept: bool = True, label: str = "") -> str:
    data = thumbnails.get(face_id)
    if data is None:
        return f"<span>{face_id}</span>"
    title = f"face {face_id}{' (dropped)' if not kept else ''}{label}"
    return f"<img{_attrs(src=_data_uri(data), alt=title, title=title, class_='' if kept else 'dropped')}>"


def galleries_html(kind: str, groups: list[dict], thumbnails: Mapping[int, bytes]) -> str:
    out = []
    for g in groups:
        faces = "".join(face_img(f, thumbnails, k) for f, k in zip(g["faces"], g["keep"]))
        shown = f", {len(g['faces'])} shown (kept first; dropped faces are faded)" if g["size"] > len(g["faces"]) else ""
        out.append(f"<div{_attrs(class_='group', data_kind=kind)}><h4>{kind} {g['group']}: {g['size']:,} faces{shown}</h4>{faces}</div>")
    return "".join(out) or "<p>None.</p>"


def pairs_html(rule: str, pairs: list[dict], thumbnails: Mapping[int, bytes], threshold: str) -> str:
    items = "".join(
        f"<figure class='pair'>{face_img(p['a'], thumbnails)}{face_img(p['b'], thumbnails)}"
        f"<figcaption>cosine {p['cosine']:.3f}, pHash distance {p['phash_distance']}</figcaption></figure>"
        for p in pairs
    )
    return f"<h3>{html.escape(rule.capitalize())}: nearest the threshold ({html.escape(threshold)})</h3><div class='pairs'>{items or '<p>None.</p>'}</div>"


def render(shown: dict, images: int, thumbnails: Mapping[int, bytes], title: str) -> bytes:
    """The page. `shown` is the grouping's summary (jobs.dedup_groups.regroup); `images` the inputs."""
    cfg = shown["settings"]["config"]
    faces, kept, dropped = shown["faces"], shown["kept"], shown["dropped"]
    rows = [("inputs", f"{images:,}", ""), ("faces", f"{faces:,}", ""), ("kept", f"{kept:,}", _share(kept, faces))]
    rows += [(f"removed: {reason}", f"{n:,}", _share(n, faces)) for reason, n in sorted(dropped.items())]
    rows += [("duplicate groups (2+ faces)", f"{sum(n for _, n in shown['dup_sizes']):,}", ""),
             (f"identity clusters ({cfg['min_identity_size']}+ faces)", f"{sum(n for _, n in shown['identity_sizes']):,}", "")]
    rules = [
        ("duplicate", f"same file bytes, or pHash distance <= {cfg['phash_distance']} of 64 bits and ArcFace cosine >= {cfg['dup_cosine']}"),
        ("identity", f"ArcFace cosine >= {cfg['identity_cosine']} between neighbours, joined transitively; clusters of at least {cfg['min_identity_size']}"),
        ("keep", f"one face per duplicate group, the best by {' then '.join(dict.fromkeys([shown['settings']['keep_by'], 'face_size', 'sharpness', 'image id']))}"
                 + (f"; at most {cfg['max_per_identity']} per identity cluster" if cfg["max_per_identity"] else "")),
    ]
    near = shown["near"]
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}{EXTRA_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "<h2>Totals</h2>" + _table(_attrs(id="totals"), ("", "count", "share of faces"), rows)
        + "<h2>Rules</h2>" + _table(_attrs(id="rules"), ("rule", "what it takes"), rules)
        + "<h2>Group sizes</h2>"
        + histogram_html("Duplicate groups", shown["dup_sizes"], "dup-sizes")
        + histogram_html("Identity clusters", shown["identity_sizes"], "identity-sizes")
        + "<h2>Largest duplicate groups</h2>" + galleries_html("duplicate group", shown["dup_gallery"], thumbnails)
        + "<h2>Largest identity clusters</h2>" + galleries_html("identity", shown["identity_gallery"], thumbnails)
        + "<h2>Pairs near the thresholds</h2><p>Judge the thresholds by eye: pairs on both sides of each.</p>"
        + pairs_html("duplicate", near["duplicate"], thumbnails, f"pHash distance {cfg['phash_distance']}, among pairs with cosine >= {cfg['dup_cosine']}")
        + pairs_html("identity", near["identity"], thumbnails, f"cosine {cfg['identity_cosine']}")
        + f'<script type="application/json" id="summary-data">{html.escape(json.dumps(shown, sort_keys=True), quote=False)}</script>'
        + "</body></html>\n"
    )
    return page.encode("utf-8")


def shown_faces(shown: dict) -> set[int]:
    """The faces whose thumbnails the page shows."""
    ids = {f for key in ("dup_gallery", "identity_gallery") for g in shown[key] for f in g["faces"]}
    return ids | {p[k] for pairs in shown["near"].values() for p in pairs for k in ("a", "b")}
