#!/usr/bin/env bash
# The dashboard's browser tests drive Debian's Chromium through Playwright's Python package; they never
# download a browser (`playwright install` is not used). Make sure the system Chromium exists.
set -euo pipefail
find_chromium() { for c in /usr/bin/chromium "$(command -v chromium || true)"; do [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return; }; done; true; }
if [ -n "$(find_chromium)" ]; then exit 0; fi
echo "chromium not found; installing it with apt-get (for the dashboard's browser tests)" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "error: chromium is missing and I cannot install it without root: run 'apt-get install chromium' (the browser tests are skipped without it)" >&2
    exit 1
  fi
fi
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
else
  echo "error: chromium is missing and apt-get is not available: install Chromium (the browser tests are skipped without it)" >&2
  exit 1
fi
[ -n "$(find_chromium)" ] || { echo "error: chromium still not found after install" >&2; exit 1; }
