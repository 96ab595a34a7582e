"""One job per output: a lock file that a live job keeps fresh and a dead one stops refreshing.

`<output>/_lock.json` names its holder (host, pid, a random token) and when it last said it was
alive. A job refuses an output whose lock is fresh and whose holder is alive; a lock whose holder
ran on this host and is gone, or which nobody refreshed for STALE_SECONDS, is taken over. Two jobs
that start at the same moment both write the lock, wait SETTLE_SECONDS, and read it back: only
the one whose token is there goes on. This works the same on local folders and S3, whose reads
after a write are consistent."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from codeformer_core import storage

LOCK = "_lock.json"
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0
SETTLE_SECONDS = 2.0


class OutputLockedError(Exception):
    """Another live job holds the output; the message is for the user as it is."""


class OutputLock:
    def __init__(self, output: str) -> None:
        self.uri = storage.join(output, LOCK)
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.lost = threading.Event()  # set when another job has taken the output over
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.written = False

    def acquire(self) -> None:
        holder = self.read()
        if holder is not None and alive(holder):
            raise OutputLockedError(f"{self.uri.rsplit('/', 1)[0]} is in use by a running job ({describe(holder)}); wait for it to end, or use another --output")
        self.write()
        time.sleep(SETTLE_SECONDS)
        holder = self.read()
        if holder is None or holder["token"] != self.me["token"]:
            raise OutputLockedError(f"{self.uri.rsplit('/', 1)[0]} was taken by a job that started at the same time ({describe(holder)}); use another --output")
        self.thread = threading.Thread(target=self.beat, daemon=True, name="output-lock")
        self.thread.start()

    def release(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        if self.written:
            holder = self.read()
            if holder is not None and holder["token"] == self.me["token"]:
                storage.delete(self.uri)

    def beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                holder = self.read()
                if holder is not None and holder["token"] != self.me["token"]:
                    self.lost.set()
                    return
                self.write()
            except OSError:
                pass  # a storage hiccup; the next beat tries again, well within STALE_SECONDS

    def read(self) -> dict | None:
        if storage.file_size(self.uri) is None:
            return None
        try:
            return json.loads(storage.read_bytes(self.uri))
        except (FileNotFoundError, ValueError):  # released meanwhile, or edited by hand
            return None

    def write(self) -> None:
        storage.write_bytes(self.uri, json.dumps({**self.me, "heartbeat": time.time()}).encode())
        self.written = True


def alive(holder: dict) -> bool:
    if time.time() - holder.get("heartbeat", 0) > STALE_SECONDS:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict | None) -> str:
    if holder is None:
        return "unknown"
    seen = datetime.fromtimestamp(holder.get("heartbeat", 0), timezone.utc).strftime("%H:%M:%S UTC")
    return f"host {holder.get('host')}, pid {holder.get('pid')}, last seen {seen}"
