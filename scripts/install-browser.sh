#!/usr/bin/env bash
# Headless Chromium and its WebDriver from Debian's packages, for tests/test_serve_browser.py (the explorer page of
# `ctxlm serve`) and benchmarks/serve_screenshot.py. Does nothing when both are there; needs root (or sudo) to
# install. Without them the browser tests skip, saying why.
set -euo pipefail
if command -v chromium >/dev/null && { command -v chromedriver >/dev/null || [ -x /usr/lib/chromium/chromedriver ]; }; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install-browser: chromium and chromium-driver are missing and this is not root: the browser tests will skip" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "install-browser: $(chromium --version 2>/dev/null | head -1), $(chromedriver --version 2>/dev/null | head -1)"
