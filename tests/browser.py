"""Headless Chromium for tests: find it, take a screenshot of a page, dump a page's DOM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 120.0


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


def _run(args: list[str], timeout: float) -> str:
    """Chromium's stdout; raises on a failure or after `timeout` seconds (killing its processes)."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError(f"none of {NAMES} is on PATH")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            exe,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--mute-audio",
            f"--user-data-dir={profile}",
            *args,
        ]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    if proc.returncode:
        raise RuntimeError(f"chromium exited with {proc.returncode}: {err[-2000:]}")
    return out


def screenshot(
    html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 2400, timeout: float = TIMEOUT_S
) -> None:
    """A PNG of the first `height` pixels of the page, laid out `width` pixels wide."""
    page = Path(html_path).resolve().as_uri()
    _run([f"--screenshot={Path(png_path).resolve()}", f"--window-size={width},{height}", page], timeout)


def dump_dom(html_path: str | Path, timeout: float = TIMEOUT_S, budget_ms: int = 5000) -> str:
    """The page's DOM serialised after load (and up to `budget_ms` of virtual time)."""
    page = Path(html_path).resolve().as_uri()
    return _run(["--dump-dom", f"--virtual-time-budget={budget_ms}", page], timeout)
