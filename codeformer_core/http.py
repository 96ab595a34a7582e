"""http(s) inputs, fetched politely: a bounded number of requests to each host at once, retries with
backoff on 429 and 5xx (waiting what `Retry-After` asks, within a limit), a timeout, a User-Agent
that names this tool, and the opt-out of AI uses that img2dataset honours (`X-Robots-Tag: noai`,
`noimageai`) honoured by default.

For a crawl of hundreds of millions of URLs use img2dataset, and give its output (Parquet or
WebDataset tars) to the jobs; this is for manifests of modest size.
"""

from __future__ import annotations

import email.utils
import functools
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from codeformer_core import __version__
from codeformer_core.statuses import HTTP_TIMEOUT, OK, OPTOUT, READ_ERROR, UNAVAILABLE, http_status

TOOL = "codeformer-data"
USER_AGENT = f"{TOOL}/{__version__} (face dataset tool; honours X-Robots-Tag noai)"
OPTOUT_DIRECTIVES = frozenset({"noai", "noimageai"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
THREADS = 16  # requests of one batch in flight at once, over all hosts
REDIRECTS = 5  # followed by urllib3 within one try; every other retry is this module's, with its backoff


@dataclass(frozen=True)
class HttpConfig:
    attempts: int = 5  # tries of a request that fails in a way that may pass
    timeout: float = 20.0  # seconds to connect, and between two reads of the response
    per_host: int = 4  # requests to one host in flight at once, from one batch
    honour_optout: bool = True
    max_wait: float = 60.0  # the longest Retry-After waited for; a longer one is cut to this


@dataclass(frozen=True)
class Fetched:
    data: bytes
    status: str
    error: str | None


def fetch_all(urls: list[str], config: HttpConfig) -> list[Fetched]:
    """fetch of each URL, at most config.per_host at once to one host, in order."""
    if not urls:
        return []
    gates: dict[str, threading.Semaphore] = {}
    for url in urls:
        gates.setdefault(urlsplit(url).netloc, threading.Semaphore(config.per_host))

    def one(url: str) -> Fetched:
        return fetch(url, config, gates[urlsplit(url).netloc])

    with ThreadPoolExecutor(min(THREADS, len(urls))) as pool:
        return list(pool.map(one, urls))


def fetch(url: str, config: HttpConfig, gate: threading.Semaphore | None = None, sleep: Callable[[float], None] = time.sleep) -> Fetched:
    """GET `url`: its bytes and `ok`; `optout` (the response's X-Robots-Tag forbids AI uses);
    `http_<code>` for a status that will not change (404, 403, ...); `http_timeout` when every try
    timed out; `unavailable` when every try failed in another way that may pass (429, 5xx, resets)."""
    import urllib3

    gate = gate or threading.Semaphore(1)
    failure = Fetched(b"", UNAVAILABLE, None)
    for attempt in range(1, config.attempts + 1):
        wait = None
        try:
            with gate:
                response = _pool(config.timeout).request("GET", url, headers={"User-Agent": USER_AGENT}, retries=_redirects_only(), preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None else exc
            if isinstance(cause, urllib3.exceptions.TimeoutError):
                failure = Fetched(b"", HTTP_TIMEOUT, f"GET {url}: timed out after {config.timeout:g} s ({type(cause).__name__}), {attempt} attempts")
            else:
                failure = Fetched(b"", UNAVAILABLE, f"GET {url}: {type(cause).__name__}: {cause} ({attempt} attempts)")
        except ValueError as exc:  # not a URL urllib3 can request
            return Fetched(b"", READ_ERROR, f"GET {url}: {exc}")
        else:
            if config.honour_optout and opted_out(response.headers.getlist("X-Robots-Tag")):
                return Fetched(b"", OPTOUT, f"GET {url}: X-Robots-Tag {', '.join(response.headers.getlist('X-Robots-Tag'))}")
            if response.status == 200:
                return Fetched(response.data, OK, None)
            if response.status not in RETRY_STATUSES:
                return Fetched(b"", http_status(response.status), f"GET {url}: HTTP {response.status} {response.reason or ''}".rstrip())
            failure = Fetched(b"", UNAVAILABLE, f"GET {url}: HTTP {response.status} {response.reason or ''}".rstrip() + f" ({attempt} attempts)")
            wait = retry_after(response.headers.get("Retry-After"), config.max_wait)
        if attempt < config.attempts:
            sleep(wait if wait is not None else random.uniform(0, min(config.max_wait, 2.0 ** (attempt - 1))))
    return failure


def _redirects_only():
    import urllib3

    return urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=REDIRECTS, raise_on_redirect=False, raise_on_status=False)


@functools.lru_cache(maxsize=4)
def _pool(timeout: float):
    """One connection pool manager per process (thread-safe), so that requests to a host reuse connections."""
    import urllib3

    return urllib3.PoolManager(num_pools=64, maxsize=THREADS, timeout=urllib3.Timeout(connect=timeout, read=timeout))


def opted_out(values: list[str]) -> bool:
    """Whether X-Robots-Tag values forbid AI uses to every robot or to this tool: `noai`,
    `noimageai`, or those after `codeformer-data:` (img2dataset's reading of the header)."""
    for value in values:
        robot, _, rest = value.partition(":") if ":" in value else ("", "", value)
        if robot.strip() and robot.strip().lower() not in (TOOL, "*"):
            continue
        if OPTOUT_DIRECTIVES & {d.strip().lower() for d in rest.split(",")}:
            return True
    return False


def retry_after(value: str | None, limit: float) -> float | None:
    """Seconds a Retry-After header asks to wait (seconds or an HTTP date), at most `limit`."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if email.utils.parsedate_tz(value) else None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), limit)
