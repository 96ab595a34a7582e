#!/usr/bin/env bash
# Makes headless Chromium available for the report's browser test, if it can.
# Never fails: without Chromium that test is skipped with its reason.
set -u

found() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }

if found; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-chromium: not installing chromium (needs root and apt-get)"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
install() { timeout 900 apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }

if ! install; then
    # A fresh image has no package lists: fetch them once, then retry.
    if timeout 300 apt-get update -qq >/dev/null 2>&1; then
        install
    fi
fi
if found; then
    exit 0
fi
echo "setup-chromium: apt-get could not install chromium"
exit 0
