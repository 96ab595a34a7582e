"""Every kind of input a job takes, in one place: how a source is listed into rows, and how a row's
bytes are read. A new kind is added here.

A listed row names its input by `source_uri` (what the tables show). An input inside another file
also has a `container` (the Parquet or tar file's URI) and a `member`: the row of the Parquet file,
or the byte offset of the tar member (`member_size` its bytes). `kept` holds the columns carried
through to the output (--keep-columns; a WebDataset sample's .json), as a JSON object.

Kinds:
- a file or object: a local path, s3://, gs://; in a manifest also an http(s) URL (jobs read those
  through codeformer_core.http);
- a row of a Parquet file whose image column holds bytes, or {bytes, path} structs (a Hugging Face
  Image feature, img2dataset's Parquet output, this project's own faces/ tables): `<parquet>#<row>`,
  or the struct's `path` when that is a full URI or an absolute path;
- a sample of a WebDataset tar (members `<key>.<ext>`, a sample the consecutive members of one key):
  its first image member, `<tar>#<key>`.
A Parquet file with an image column is read as images; one without is a manifest of URIs (with
optional landmarks), as a CSV is. In a folder, Parquet files without an image column are skipped.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from codeformer_core import storage
from codeformer_core.statuses import OK, READ_ERROR, UNAVAILABLE

PARQUET, TAR, CSV = ".parquet", ".tar", ".csv"
CONTAINER_SUFFIXES = (PARQUET, TAR)
URI_COLUMNS = ("uri", "source_uri", "path", "url", "image")
ABSOLUTE = ("s3://", "gs://", "http://", "https://", "/")
ROW = pa.schema([
    pa.field("source_uri", pa.string()),
    pa.field("container", pa.string()),
    pa.field("member", pa.int64()),
    pa.field("member_size", pa.int64()),
    pa.field("member_column", pa.string()),
    pa.field("kept", pa.string()),
])
FRAGMENT = re.compile(r"^(.+\.(?:parquet|tar))#(.+)$", re.IGNORECASE)  # an input inside a Parquet file or a tar
SAMPLE_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's: a key, then the extension from its first dot
JSON_LIMIT = 1 << 20  # bytes of a sample's .json read into `kept`
READ_ROWS = 64  # rows of a Parquet image column decoded at a time while reading


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def is_image_type(type: pa.DataType) -> bool:
    if pa.types.is_binary(type) or pa.types.is_large_binary(type) or pa.types.is_binary_view(type):
        return True
    return pa.types.is_struct(type) and type.get_field_index("bytes") >= 0 and is_image_type(type.field("bytes").type)


def image_column(schema: pa.Schema, given: str | None) -> str | None:
    """The column of images: `given` (ValueError when it is missing or not of image type), else the
    first of image type, else None."""
    if given is not None:
        if given not in schema.names:
            raise ValueError(f"no column {given!r}; the columns are {', '.join(schema.names)}")
        if not is_image_type(schema.field(given).type):
            raise ValueError(f"column {given!r} is {schema.field(given).type}, not bytes or a {{bytes, path}} struct")
        return given
    return next((f.name for f in schema if is_image_type(f.type)), None)


def is_manifest(source: str, given_column: str | None) -> bool:
    """A CSV, or a Parquet file without an image column: a list of URIs, which may repeat."""
    lower = source.lower()
    if not lower.endswith(PARQUET):
        return lower.endswith(CSV)
    with _parquet(source) as parquet:
        return image_column(parquet.schema_arrow, given_column) is None


def iter_rows(source: str, chunk: int, suffixes: tuple[str, ...], uri_column: str | None, given_column: str | None,
              keep: tuple[str, ...], extra: tuple[str, ...] = ()) -> Iterator[pa.Table]:
    """The inputs of `source` in order, as tables of ROW's columns (a manifest's `extra` columns too,
    when it has them), about `chunk` rows each, never the whole listing at once. A folder or prefix
    is walked for files with `suffixes` and for Parquet and tar files; those, and the Parquet and tar
    files a manifest names, are expanded in place (in a folder, Parquet files without an image
    column are skipped; a manifest naming one is refused)."""
    lower = source.lower()
    if is_manifest(source, given_column):
        for rows in manifest_rows(source, uri_column, chunk, keep, extra):
            yield from expanded(rows, chunk, given_column, keep, strict=True)
    elif lower.endswith(PARQUET):
        with _parquet(source) as parquet:
            name = image_column(parquet.schema_arrow, given_column)
        yield from parquet_rows(source, name, chunk, keep)
    elif lower.endswith(TAR):
        yield from tar_rows(source, chunk, keep)
    else:
        for uris in storage.iter_images(source, chunk, suffixes + CONTAINER_SUFFIXES):
            yield from expanded(plain_rows(uris), chunk, given_column, keep, strict=False)


def expanded(rows: pa.Table, chunk: int, given_column: str | None, keep: tuple[str, ...], strict: bool) -> Iterator[pa.Table]:
    """`rows` with each row that names a Parquet file of images or a tar replaced by its inputs (their
    columns beyond ROW's null). With `strict` (a manifest), a row that names one input inside such a
    file is located, and a Parquet file without an image column is an error; else it is skipped."""
    rows = located(rows, given_column) if strict else rows
    uris = rows.column("source_uri").to_pylist()
    start = 0
    for i, uri in enumerate(uris):
        if not uri.lower().endswith(CONTAINER_SUFFIXES):
            continue
        if i > start:
            yield rows.slice(start, i - start)
        start = i + 1
        if uri.lower().endswith(TAR):
            inside = tar_rows(uri, chunk, keep)
        else:
            with _parquet(uri) as parquet:
                name = image_column(parquet.schema_arrow, given_column)
            if name is None and strict:
                raise ValueError(f"{uri} has no column of images (bytes or {{bytes, path}} structs)")
            inside = parquet_rows(uri, name, chunk, keep) if name else iter(())
        for table in inside:
            yield pa.table({n: table.column(n) if n in ROW.names else pa.nulls(table.num_rows, rows.schema.field(n).type) for n in rows.column_names}).cast(rows.schema)
    if start < len(uris):
        yield rows.slice(start)


def located(rows: pa.Table, given_column: str | None) -> pa.Table:
    """`rows` where those whose URI names one input inside a Parquet file of images or a tar, as the
    tables of a job on such inputs write it (`<parquet>#<row>`, `<tar>#<key>`: a kept.parquet, say),
    have its container and member. Each file named is opened once per call (a tar's headers read);
    a URI that names no such input is left as it is, and reading it says so."""
    uris = rows.column("source_uri").to_pylist()
    hits = [(i, m.group(1), m.group(2)) for i, u in enumerate(uris) if u is not None and (m := FRAGMENT.match(u))]
    if not hits:
        return rows
    container, member, size, column = (rows.column(n).to_pylist() for n in ("container", "member", "member_size", "member_column"))
    for i, file, part in hits:
        found = _contents(file, given_column)
        if isinstance(found, tuple) and found[0] is not None and part.isdigit() and int(part) < found[1]:
            container[i], member[i], column[i] = file, int(part), found[0]
        elif isinstance(found, dict) and part in found:
            container[i], (member[i], size[i]) = file, found[part]
    replaced = {"container": container, "member": member, "member_size": size, "member_column": column}
    return pa.table({n: pa.array(replaced[n], rows.schema.field(n).type) if n in replaced else rows.column(n) for n in rows.column_names}).cast(rows.schema)


@functools.lru_cache(maxsize=16)
def _contents(file: str, given_column: str | None) -> tuple[str | None, int] | dict[str, tuple[int, int]] | None:
    """What `located` needs of a file, kept for the next chunks of the same manifest: a Parquet file's
    image column and row count, a tar's image members by sample key; None when it cannot be read."""
    try:
        if file.lower().endswith(PARQUET):
            with _parquet(file) as parquet:
                return image_column(parquet.schema_arrow, given_column), parquet.metadata.num_rows
        return {key: (offset, length) for key, offset, length, _ in tar_samples(file, ())}
    except (OSError, ValueError, pa.ArrowException, tarfile.TarError):
        return None


def plain_rows(uris: list[str]) -> pa.Table:
    return _rows(pa.array(uris, pa.string()))


def _rows(source_uri: pa.Array, container: str | None = None, member: object = None, member_size: object = None,
          member_column: str | None = None, kept: object = None) -> pa.Table:
    n = len(source_uri)

    def column(value: object, type: pa.DataType) -> pa.Array:
        return value if isinstance(value, (pa.Array, pa.ChunkedArray)) else pa.array([value] * n if not isinstance(value, list) else value, type)

    return pa.table([source_uri, column(container, pa.string()), column(member, pa.int64()), column(member_size, pa.int64()),
                     column(member_column, pa.string()), column(kept, pa.string())], schema=ROW)


@contextlib.contextmanager
def _parquet(uri: str) -> Iterator[pq.ParquetFile]:
    """A Parquet file open for reading, its pages streamed through a 1 MiB buffer, closed after."""
    filesystem, path = storage.filesystem_and_path(uri)
    with filesystem.open_input_file(path) as f, pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20) as parquet:
        yield parquet


def kept_cells(table: pa.Table, keep: tuple[str, ...]) -> list[str | None]:
    """Each row's `keep` columns (those the table has) as a JSON object; null when none are kept."""
    names = [k for k in keep if k in table.column_names]
    if not names:
        return [None] * table.num_rows
    columns = [table.column(k).to_pylist() for k in names]
    return [json.dumps(dict(zip(names, values)), default=str, ensure_ascii=False) for values in zip(*columns)]


def parquet_rows(uri: str, name: str, chunk: int, keep: tuple[str, ...]) -> Iterator[pa.Table]:
    """One row per row of the Parquet file `uri`, its images in column `name` (read later, not here)."""
    with _parquet(uri) as parquet:
        schema = parquet.schema_arrow
        type = schema.field(name).type
        paths = pa.types.is_struct(type) and type.get_field_index("path") >= 0
        others = tuple(k for k in keep if k in schema.names and k != name)
        columns = ([f"{name}.path"] if paths else []) + list(others)
        batches = (pa.Table.from_batches([b]) for b in parquet.iter_batches(batch_size=chunk, columns=columns)) if columns else _row_counts(parquet, chunk)
        start = 0
        for table in batches:
            rows = pa.array(np.arange(start, start + table.num_rows), pa.int64())
            uris = pc.binary_join_element_wise(uri, pc.cast(rows, pa.string()), "#")
            if paths:
                given = pc.struct_field(table.column(name), "path")
                uris = pc.if_else(pc.fill_null(_absolute(given), False), given, uris)
            yield _rows(uris, uri, rows, None, name, pa.array(kept_cells(table, others), pa.string()))
            start += table.num_rows


def _absolute(paths: pa.Array) -> pa.Array:
    absolute = pc.starts_with(paths, ABSOLUTE[0])
    for prefix in ABSOLUTE[1:]:
        absolute = pc.or_(absolute, pc.starts_with(paths, prefix))
    return absolute


def _row_counts(parquet: pq.ParquetFile, chunk: int) -> Iterator[pa.Table]:
    """Tables of no column, of the file's rows `chunk` at most each: nothing read but the footer."""
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        for start in range(0, rows, chunk):
            yield pa.table({"rows": pa.nulls(min(chunk, rows - start))})


def tar_rows(uri: str, chunk: int, keep: tuple[str, ...]) -> Iterator[pa.Table]:
    """One row per WebDataset sample of the tar `uri` that has an image member."""
    samples = tar_samples(uri, keep)
    while batch := list(itertools.islice(samples, chunk)):
        keys, offsets, sizes, kept = zip(*batch)
        yield _rows(pa.array([f"{uri}#{k}" for k in keys], pa.string()), uri, list(offsets), list(sizes), None, list(kept))


def tar_samples(uri: str, keep: tuple[str, ...]) -> Iterator[tuple[str, int, int, str | None]]:
    """(key, offset and size of its first image member, its `kept` cell) of each sample of the tar
    `uri` that has an image member. The headers are read in order, through a 1 MiB read-ahead, so a
    tar of small images is read once, whole."""
    filesystem, path = storage.filesystem_and_path(uri)
    with filesystem.open_input_file(path) as raw, tarfile.open(fileobj=io.BufferedReader(raw, 1 << 20), mode="r:") as tar:
        sample: dict = {}
        for info in _samples(tar):
            if info is None or (sample and info[0] != sample["key"]):
                if sample.get("image") is not None:
                    yield sample["key"], sample["image"].offset_data, sample["image"].size, _kept_json(tar, sample.get("json"), keep)
                sample = {}
            if info is None:
                break
            key, ext, member = info
            sample["key"] = key
            last = "." + ext.rsplit(".", 1)[-1].lower()
            if last in storage.IMAGE_EXTENSIONS and "image" not in sample:
                sample["image"] = member
            elif last == ".json" and "json" not in sample:
                sample["json"] = member


def _samples(tar: tarfile.TarFile) -> Iterator[tuple[str, str, tarfile.TarInfo] | None]:
    """(key, extension, member) of each regular member named as WebDataset names them, then None."""
    while (member := tar.next()) is not None:
        tar.members = []  # tarfile keeps every header it read: a tar of millions of members would sit in memory
        match = SAMPLE_NAME.match(member.name)
        if member.isfile() and match:
            yield match.group(1), match.group(2), member
    yield None


def _kept_json(tar: tarfile.TarFile, member: tarfile.TarInfo | None, keep: tuple[str, ...]) -> str | None:
    """A sample's .json (only its `keep` keys when some are named) as the row's `kept` cell."""
    if member is None or member.size > JSON_LIMIT:
        return None
    at = tar.fileobj.tell()
    try:
        value = json.loads(tar.extractfile(member).read())
    except ValueError:
        return None
    finally:
        tar.fileobj.seek(at)
    if keep and isinstance(value, dict):
        value = {k: value[k] for k in keep if k in value}
    return json.dumps(value, ensure_ascii=False)


def manifest_rows(uri: str, column: str | None, chunk: int, keep: tuple[str, ...], extra: tuple[str, ...]) -> Iterator[pa.Table]:
    """A Parquet or CSV manifest, `chunk` rows at a time in file order: its URIs as `source_uri`, its
    `keep` columns as `kept`, and those of `extra` it has as columns of their own.

    The URIs come from `column`, or the first of URI_COLUMNS present. Rows without one are dropped.
    Relative local paths are taken relative to the manifest's folder."""
    filesystem, path = storage.filesystem_and_path(uri)
    with filesystem.open_input_file(path) as f:
        if path.lower().endswith(PARQUET):
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            name = _uri_column(uri, names, column)
            wanted = [name, *(k for k in dict.fromkeys((*keep, *extra)) if k in names and k != name)]
            batches = parquet.iter_batches(batch_size=chunk, columns=wanted)
        else:
            # Types fixed up front: a streaming reader infers them from its first block only.
            strings = pacsv.ConvertOptions(column_types={c: pa.string() for c in (*URI_COLUMNS, *keep, *extra, column) if c})
            reader = pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=1 << 22), convert_options=strings)
            names = reader.schema.names
            name = _uri_column(uri, names, column)
            batches = reader
        base = uri.rsplit("/", 1)[0] if "://" in uri else str(Path(path).parent)
        for batch in batches:
            table = pa.Table.from_batches([batch])
            table = table.filter(pc.is_valid(table.column(name)))
            given = table.column(name).cast(pa.string()).combine_chunks()
            uris = pc.if_else(_absolute(given), given, pc.binary_join_element_wise(base.rstrip("/"), pc.utf8_ltrim(given, "/"), "/"))
            rows = _rows(uris, kept=pa.array(kept_cells(table, tuple(k for k in keep if k != name)), pa.string()))
            for k in extra:
                if k in table.column_names and k != name:
                    rows = rows.append_column(k, table.column(k))
            yield rows


def _uri_column(uri: str, names: list[str], column: str | None) -> str:
    name = column or next((c for c in URI_COLUMNS if c in names), None)
    if name is None or name not in names:
        wanted = repr(column) if column else f"one of {', '.join(URI_COLUMNS)}"
        raise ValueError(f"manifest {uri} has no column {wanted}; its columns are {', '.join(names)}")
    return name


def read_member(container: str, offset: int, size: int, attempts: int) -> bytes:
    """The bytes of a tar member (storage.ReadError when they cannot be read)."""
    return storage.read_range(container, offset, size, attempts)


def read_parquet_images(table: pa.Table) -> pa.Table:
    """`table` (listed rows) with `data`, `status` and `error`: for the rows inside Parquet files,
    their image bytes read here, each run of rows of one file in one pass over the row groups that
    hold them; null for the other rows, which are read one by one later."""
    n = table.num_rows
    data: list[bytes | None] = [None] * n
    status: list[str | None] = [None] * n
    error: list[str | None] = [None] * n
    containers = table.column("container").to_pylist()
    members = table.column("member").to_pylist()
    columns = table.column("member_column").to_pylist()
    runs: dict[tuple[str, str], list[int]] = {}
    for i, (container, column) in enumerate(zip(containers, columns)):
        if column is not None:
            runs.setdefault((container, column), []).append(i)
    for (container, column), places in runs.items():
        try:
            for i, value in zip(places, _parquet_cells(container, column, [members[i] for i in places])):
                data[i], status[i], error[i] = (value, OK, None) if value is not None else (None, READ_ERROR, f"{table.column('source_uri')[i]}: no image bytes in this row")
        except (OSError, pa.ArrowException, ValueError) as exc:
            transient = isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError))
            for i in places:
                data[i], status[i], error[i] = None, UNAVAILABLE if transient else READ_ERROR, f"{container}: {exc}"
    return table.append_column("data", pa.array(data, pa.binary())).append_column("status", pa.array(status, pa.string())).append_column("error", pa.array(error, pa.string()))


def _parquet_cells(uri: str, column: str, rows: list[int]) -> list[bytes | None]:
    """The image bytes of `rows` (ascending) of column `column` of the Parquet file `uri`, reading
    only the row groups that hold them, READ_ROWS rows at a time, up to the last row wanted."""
    wanted = np.asarray(rows, np.int64)
    out: list[bytes | None] = []
    with _parquet(uri) as parquet:
        struct = pa.types.is_struct(parquet.schema_arrow.field(column).type)
        bounds = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
        for group in np.unique(np.searchsorted(bounds, wanted, side="right") - 1):
            inside = wanted[(wanted >= bounds[group]) & (wanted < bounds[group + 1])] - bounds[group]
            start = 0
            for batch in parquet.iter_batches(batch_size=READ_ROWS, row_groups=[int(group)], columns=[column]):
                cells = batch.column(0)
                values = pc.struct_field(cells, "bytes") if struct else cells
                here = inside[(inside >= start) & (inside < start + batch.num_rows)] - start
                out.extend(values.take(pa.array(here, pa.int64())).to_pylist())
                start += batch.num_rows
                if start > inside[-1]:
                    break
    return out
