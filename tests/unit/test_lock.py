"""One job per output: the lock refuses a live holder and takes over a dead one's."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from jobs import lock


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(lock, "SETTLE_SECONDS", 0.05)


def test_a_live_holder_is_refused_and_a_released_lock_is_free(tmp_path):
    first = lock.OutputLock(str(tmp_path))
    first.acquire()

    with pytest.raises(lock.OutputLockedError, match=f"pid {os.getpid()}"):
        lock.OutputLock(str(tmp_path)).acquire()
    first.release()
    second = lock.OutputLock(str(tmp_path))
    second.acquire()
    second.release()
    assert not (tmp_path / lock.LOCK).exists()


def test_a_dead_holder_on_this_host_and_a_silent_one_elsewhere_are_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / lock.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead), "token": "x", "heartbeat": time.time()}))
    taken = lock.OutputLock(str(tmp_path))
    taken.acquire()
    taken.release()

    (tmp_path / lock.LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y", "heartbeat": time.time() - lock.STALE_SECONDS - 1}))
    again = lock.OutputLock(str(tmp_path))
    again.acquire()
    again.release()


def test_a_holder_whose_lock_was_taken_over_notices(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 0.05)
    held = lock.OutputLock(str(tmp_path))
    held.acquire()
    (tmp_path / lock.LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "other", "heartbeat": time.time()}))

    assert held.lost.wait(5)
    held.release()
    assert json.loads((tmp_path / lock.LOCK).read_text())["token"] == "other"
