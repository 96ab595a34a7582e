"""The one vocabulary of row statuses: `ok`, or why an input gave no (or fewer) results."""

from __future__ import annotations

OK = "ok"
READ_ERROR = "read_error"
UNAVAILABLE = "unavailable"
EMPTY = "empty"
TOO_LARGE = "too_large"
DECODE_ERROR = "decode_error"
NO_FACE = "no_face"
BAD_LANDMARKS = "bad_landmarks"
DETECT_ERROR = "detect_error"
RESTORE_ERROR = "restore_error"
MEASURE_ERROR = "measure_error"
DEGRADE_ERROR = "degrade_error"
HTTP_TIMEOUT = "http_timeout"
OPTOUT = "optout"
HTTP = "http_<code>"


def http_status(code: int | str) -> str:
    """The status of an http(s) input answered with a status that will not change: http_404, http_403."""
    return f"http_{code}"


MEANINGS = {
    OK: "processed",
    READ_ERROR: "the bytes could not be read, for good: missing object or file, broken link, no permission",
    UNAVAILABLE: "the storage failed in a way that may pass (throttling, reset, timeout, 5xx) on every try; a rerun tries again",
    EMPTY: "the file has 0 bytes",
    TOO_LARGE: "more pixels than --max-pixels, checked from the header before decoding",
    DECODE_ERROR: "not a readable image: unknown format, damaged header or data",
    NO_FACE: "no face was found or given",
    BAD_LANDMARKS: "given landmarks are unusable: NaN, collinear, or far outside the image",
    DETECT_ERROR: "the detector failed on this batch (e.g. out of memory)",
    RESTORE_ERROR: "the restoration network failed on this batch",
    MEASURE_ERROR: "measuring failed on this batch",
    DEGRADE_ERROR: "making the LQ images failed on this batch",
    HTTP: "an http(s) input answered this status (404, 403, 410 ...), which a retry would not change",
    HTTP_TIMEOUT: "an http(s) input timed out on every try; a rerun tries again",
    OPTOUT: "the server's X-Robots-Tag opts the image out of AI uses (noai, noimageai)",
}

# A video segment's closing row inside a job, after its frames' rows: decoded to its end. Never
# written: the segment's images/ row says ok.
SEGMENT_DONE = "segment_done"

RETRYABLE = frozenset({UNAVAILABLE, HTTP_TIMEOUT})  # a rerun of the same command processes these inputs again
