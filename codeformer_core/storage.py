"""URIs: local paths, s3:// and gs:// objects, read and written through pyarrow filesystems.

S3 settings come from the standard AWS configuration (environment, profiles). An
S3-compatible endpoint is taken from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`.
Google Cloud Storage uses Application Default Credentials; `STORAGE_EMULATOR_HOST` points it at an
emulator (anonymous, plain http). Listing a gs:// prefix goes through google-cloud-storage, page
by page, since pyarrow's GCS listing is not paged.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from pyarrow import fs as pafs


READ_ATTEMPTS = 5  # tries of an input read that fails in a way that may pass, with exponential backoff
OTHER_ATTEMPTS = 10  # tries of every other S3 request (listing, the output's files), which a job cannot do without
CHECK_ATTEMPTS = 3  # tries of the first request to a bucket, so that a wrong endpoint or bucket is told in seconds
BACKOFF_SECONDS = 20.0  # the longest wait between two tries
# Local errors that may pass: timeouts, and what network filesystems and FUSE mounts of object stores report
TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.EIO, errno.ECONNRESET, errno.ECONNABORTED,
                              errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EMFILE, errno.ENFILE, errno.ENOMEM})
# S3 error codes that may pass besides 5xx and 429: throttling, timeouts, a token or clock to be refreshed
TRANSIENT_S3_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded",
                                "ExpiredToken", "TokenRefreshRequired", "RequestTimeTooSkewed"})


class ReadError(OSError):
    """A read that failed for good (`transient` False: missing, no permission, a directory) or after
    every try of a failure that may pass (`transient` True: throttling, resets, timeouts, 5xx)."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def is_gs(uri: str) -> bool:
    return uri.startswith("gs://")


def is_remote(uri: str) -> bool:
    """An object store URI: objects appear whole when written, and there are no folders to make."""
    return is_s3(uri) or is_gs(uri)


def gcs_filesystem() -> pafs.GcsFileSystem:
    return _gcs_filesystem(os.environ.get("STORAGE_EMULATOR_HOST"))


@functools.lru_cache(maxsize=4)
def _gcs_filesystem(emulator: str | None) -> pafs.GcsFileSystem:
    import datetime

    retry = datetime.timedelta(seconds=60)
    if emulator:
        host = emulator.split("://", 1)[-1].rstrip("/")
        return pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=host, retry_time_limit=retry)
    return pafs.GcsFileSystem(retry_time_limit=retry)


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _s3_filesystem(endpoint, region)


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    """One client per endpoint and region, so that thousands of small reads share its connections."""
    kwargs: dict[str, object] = {
        "connect_timeout": 10,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=OTHER_ATTEMPTS),
    }
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        if endpoint.startswith("http://"):
            kwargs["scheme"] = "http"
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def filesystem_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem that holds `uri` and the path inside it."""
    if is_s3(uri):
        return s3_filesystem(), uri.removeprefix("s3://").rstrip("/")
    if is_gs(uri):
        return gcs_filesystem(), uri.removeprefix("gs://").rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def file_size(uri: str) -> int | None:
    """Size in bytes, or None when nothing is there."""
    filesystem, path = filesystem_and_path(uri)
    info = filesystem.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


def download(uri: str, dest: Path) -> None:
    """Copy `uri` to `dest`, atomically: a partial copy never appears under `dest`."""
    filesystem, path = filesystem_and_path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with filesystem.open_input_stream(path) as src, open(partial, "wb") as out:
            while chunk := src.read(1 << 22):
                out.write(chunk)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # what OpenCV decodes (GIF: its first frame)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def _uri_of(uri: str, path: str) -> str:
    return f"s3://{path}" if is_s3(uri) else f"gs://{path}" if is_gs(uri) else path


def iter_images(uri: str, chunk: int, suffixes: tuple[str, ...] = IMAGE_EXTENSIONS) -> Iterator[list[str]]:
    """Files with `suffixes` (images by default) under a folder or prefix, recursively, in lists of
    up to `chunk`, in the order of their full paths (S3's key order; locally a walk whose order is
    the same), without ever holding the whole listing. Extensions match in any case."""
    filesystem, path = filesystem_and_path(uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"nothing at {uri}")
    if info.type == pafs.FileType.File:
        yield [uri] if path.lower().endswith(suffixes) else []
        return
    walk = _s3_keys(path) if is_s3(uri) else _gcs_keys(path) if is_gs(uri) else _walk(path)
    found = (p for p in walk if p.lower().endswith(suffixes))
    while batch := [_uri_of(uri, p) for p in itertools.islice(found, chunk)]:
        yield batch


def _walk(folder: str, inside: frozenset[tuple[int, int]] = frozenset()) -> Iterator[str]:
    """Files under `folder` in the order of their full paths: a directory sorts as its name plus '/'.
    Links to folders are followed, but never into a folder the walk is already inside; a broken
    link is a file (reading it gives a row that says so)."""
    stat = os.stat(folder)
    inside = inside | {(stat.st_dev, stat.st_ino)}
    with os.scandir(folder) as it:
        entries = sorted(((e.name + "/" if e.is_dir() else e.name), e.path) for e in it)
    for name, path in entries:
        if not name.endswith("/"):
            yield path
        elif (os.stat(path).st_dev, os.stat(path).st_ino) not in inside:
            yield from _walk(path, inside)


def _gcs_keys(path: str) -> Iterator[str]:
    """`bucket/name` of every object under the prefix `path`, page by page (1,000 names a request),
    through google-cloud-storage: pyarrow's GCS listing holds a whole prefix in memory."""
    from google.api_core.exceptions import GoogleAPIError

    bucket, _, prefix = path.partition("/")
    try:
        for blob in gcs_client().list_blobs(bucket, prefix=f"{prefix}/" if prefix else None, page_size=1000):
            if not blob.name.endswith("/"):
                yield f"{bucket}/{blob.name}"
    except GoogleAPIError as exc:
        raise OSError(f"listing gs://{path}: {type(exc).__name__}: {exc}") from None


def gcs_client():
    """A google-cloud-storage client of Application Default Credentials, or anonymous on an emulator
    (which the client finds through STORAGE_EMULATOR_HOST itself)."""
    return _gcs_client(os.environ.get("STORAGE_EMULATOR_HOST"))


@functools.lru_cache(maxsize=4)
def _gcs_client(emulator: str | None):
    from google.cloud import storage as gcs

    if emulator:
        from google.auth.credentials import AnonymousCredentials

        return gcs.Client(project="emulator", credentials=AnonymousCredentials())
    return gcs.Client()


def _s3_keys(path: str) -> Iterator[str]:
    """`bucket/key` of every object under the prefix `path`, page by page (1,000 keys a request)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = path.partition("/")
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
    try:
        for page in pages:
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):
                    yield f"{bucket}/{item['Key']}"
    except ClientError as exc:
        raise OSError(f"listing {s3_error(exc, f's3://{path}')}") from None
    except BotoCoreError as exc:
        raise OSError(f"listing s3://{path}: {type(exc).__name__}: {exc}") from None


def read_bytes(uri: str, attempts: int = OTHER_ATTEMPTS) -> bytes:
    """A whole object or file, tried `attempts` times in all while it fails in a way that may pass,
    with exponential backoff; ReadError when it cannot be read."""
    return read_range(uri, 0, None, attempts)


def read_range(uri: str, offset: int, size: int | None, attempts: int = OTHER_ATTEMPTS) -> bytes:
    """`size` bytes (None: to the end) from `offset` of an object or file, as read_bytes reads."""
    if size == 0:
        return b""
    if is_s3(uri):
        return _read_s3(uri, attempts, None if size is None and not offset else f"bytes={offset}-{'' if size is None else offset + size - 1}")
    if is_gs(uri):
        return _read_pyarrow(uri, offset, size, attempts)
    path = str(Path(uri).expanduser())
    for attempt in range(1, attempts + 1):
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(-1 if size is None else size)
        except OSError as exc:
            transient = exc.errno in TRANSIENT_ERRNOS
            if not transient or attempt == attempts:
                raise ReadError(_local_error(path, exc, attempt), transient) from None
            _backoff(attempt)
    raise AssertionError("unreachable")


def _read_pyarrow(uri: str, offset: int, size: int | None, attempts: int) -> bytes:
    """Through the URI's pyarrow filesystem (which retries requests itself), tried again here while
    it fails in a way that may pass; a missing object or a refusal is not tried again."""
    filesystem, path = filesystem_and_path(uri)
    for attempt in range(1, attempts + 1):
        try:
            if size is None and not offset:
                with filesystem.open_input_stream(path) as f:
                    return f.read()
            with filesystem.open_input_file(path) as f:
                return f.read_at(f.size() - offset if size is None else size, offset)
        except FileNotFoundError:
            raise ReadError(f"no such object: {uri}", False) from None
        except (PermissionError, IsADirectoryError) as exc:
            raise ReadError(f"{type(exc).__name__}: {uri}: {str(exc).splitlines()[0][:300]}", False) from None
        except OSError as exc:
            if attempt == attempts:
                raise ReadError(f"{uri}: {exc} (after {attempts} attempts)", True) from None
            _backoff(attempt)
    raise AssertionError("unreachable")


def _local_error(path: str, exc: OSError, attempts: int) -> str:
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        return f"broken link: {path} -> {os.readlink(path)}"
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return f"{exc.strerror or type(exc).__name__}: {path}{tries}"


def _backoff(attempt: int) -> None:
    """Full-jitter exponential backoff before try `attempt + 1`: up to 1, 2, 4 ... BACKOFF_SECONDS s."""
    time.sleep(random.uniform(0, min(BACKOFF_SECONDS, 2.0 ** (attempt - 1))))


_CLIENTS_LOCK = threading.Lock()


def s3_client(attempts: int = OTHER_ATTEMPTS, quick: bool = False):
    """A boto3 S3 client of this process (thread-safe) whose requests botocore tries `attempts`
    times in all on throttling, 5xx, resets and timeouts, with exponential backoff (and, as its
    standard mode does, fewer while most requests of the client fail). `quick`: short timeouts,
    for checks that must answer within seconds. The endpoint and credentials come from the
    standard AWS configuration, AWS_ENDPOINT_URL(_S3) included."""
    settings = tuple(os.environ.get(k) for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ACCESS_KEY_ID"))
    with _CLIENTS_LOCK:  # botocore sessions are not thread-safe while they make a client
        return _s3_client(settings, attempts, quick)


@functools.lru_cache(maxsize=8)
def _s3_client(settings: tuple[str | None, ...], attempts: int, quick: bool):
    import boto3
    from botocore.config import Config

    endpoint_s3, endpoint, region, default_region = settings[:4]
    timeouts = {"connect_timeout": 3, "read_timeout": 5} if quick else {"connect_timeout": 10, "read_timeout": 60}
    config = Config(**timeouts, retries={"total_max_attempts": attempts, "mode": "standard"}, max_pool_connections=32)
    return boto3.session.Session().client("s3", endpoint_url=endpoint_s3 or endpoint, region_name=region or default_region, config=config)


def _read_s3(uri: str, attempts: int, byte_range: str | None) -> bytes:
    """botocore retries the request; a body cut off while it streams is fetched again here."""
    from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    for attempt in range(1, attempts + 1):
        try:
            response = s3_client(attempts).get_object(Bucket=bucket, Key=key, **({"Range": byte_range} if byte_range else {}))
        except ClientError as exc:
            raise ReadError(s3_error(exc, uri), s3_transient(exc)) from None
        except ParamValidationError as exc:  # a bad bucket name or key: retrying cannot help
            raise ReadError(f"S3 GetObject {uri}: {exc}", False) from None
        except BotoCoreError as exc:  # refused, reset, timed out, credentials not fetched in time: botocore has tried
            raise ReadError(f"S3 GetObject {uri}: {type(exc).__name__}: {exc} (after {attempts} attempts)", True) from None
        try:
            with contextlib.closing(response["Body"]) as body:
                return body.read()
        except BotoCoreError as exc:  # cut off, timed out, or a checksum that does not match
            if attempt == attempts:
                raise ReadError(f"S3 GetObject {uri}: the body did not arrive whole: {type(exc).__name__}: {exc} (after {attempts} attempts)", True) from None
            _backoff(attempt)
    raise AssertionError("unreachable")


def check_bucket(uri: str) -> None:
    """OSError with a plain reason, within seconds, when the bucket of an s3:// URI does not exist
    or the endpoint does not answer (rather than the advice of pyarrow's S3 client, which would
    create the bucket). No right to the bucket itself (HTTP 403) passes: a policy may allow a
    prefix's objects alone, and the first real request tells."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = uri.removeprefix("s3://").split("/", 1)[0]
    try:
        s3_client(CHECK_ATTEMPTS, quick=True).head_bucket(Bucket=bucket)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404:
            raise OSError(f"the bucket {bucket} does not exist") from None
        if status != 403:
            raise OSError(s3_error(exc, f"s3://{bucket}")) from None
    except BotoCoreError as exc:
        raise OSError(f"S3 HeadBucket s3://{bucket}: {type(exc).__name__}: {exc}") from None


def s3_error(exc, uri: str) -> str:
    """A botocore ClientError as one line: the operation, the URI, the HTTP status, the S3 error code and message, the tries."""
    meta, error = exc.response.get("ResponseMetadata", {}), exc.response.get("Error", {})
    message = f": {error['Message']}" if error.get("Message") else ""
    tries = meta.get("RetryAttempts", 0) + 1
    return f"S3 {exc.operation_name} {uri}: HTTP {meta.get('HTTPStatusCode', '?')} {error.get('Code', '?')}{message}" + (f" (after {tries} attempts)" if tries > 1 else "")


def s3_transient(exc) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    code = exc.response.get("Error", {}).get("Code", "")
    return status >= 500 or status == 429 or code in TRANSIENT_S3_CODES


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object; readers never see it half-written."""
    with output_stream(uri) as f:
        f.write(data)


@contextlib.contextmanager
def output_stream(uri: str) -> Iterator[pa.NativeFile]:
    """A stream that writes the whole object `uri`: on S3 a PUT or multipart upload, visible once it
    completes; locally a temporary file beside it, renamed when the stream ends without an error."""
    filesystem, path = filesystem_and_path(uri)
    if is_remote(uri):
        with filesystem.open_output_stream(path) as f:
            yield f
        return
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    partial = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with filesystem.open_output_stream(partial) as f:
            yield f
        filesystem.move(partial, path)
    except BaseException:
        if filesystem.get_file_info(partial).type != pafs.FileType.NotFound:
            filesystem.delete_file(partial)
        raise


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Files directly under a folder or prefix (not recursive), sorted; empty when it does not exist."""
    filesystem, path = filesystem_and_path(uri)
    selector = pafs.FileSelector(path, allow_not_found=True)
    return sorted(
        _uri_of(uri, f.path)
        for f in filesystem.get_file_info(selector)
        if f.type == pafs.FileType.File and f.path.endswith(suffix)
    )


def delete(uri: str) -> None:
    filesystem, path = filesystem_and_path(uri)
    filesystem.delete_file(path)


def delete_dir(uri: str) -> None:
    """A folder or prefix and everything under it; nothing when it is not there."""
    filesystem, path = filesystem_and_path(uri)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return
    if not is_gs(uri):
        filesystem.delete_dir(path)
        return
    filesystem.delete_dir_contents(path, missing_dir_ok=True)
    with contextlib.suppress(OSError):  # GCS holds no folder, at most a marker object
        filesystem.delete_dir(path)
