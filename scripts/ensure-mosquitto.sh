#!/usr/bin/env bash
# Tests start their own Mosquitto on a free loopback port; they need only the binary.
set -euo pipefail
find_mosquitto() { command -v mosquitto || { [ -x /usr/sbin/mosquitto ] && echo /usr/sbin/mosquitto; } || true; }
if [ -n "$(find_mosquitto)" ]; then exit 0; fi
echo "mosquitto not found; installing it with apt-get" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "error: mosquitto is missing and I cannot install it without root: run 'apt-get install mosquitto'" >&2
    exit 1
  fi
fi
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
else
  echo "error: mosquitto is missing and apt-get is not available: install Mosquitto (https://mosquitto.org/download/)" >&2
  exit 1
fi
[ -n "$(find_mosquitto)" ] || { echo "error: mosquitto still not found after install" >&2; exit 1; }
# A package install may start the system service; the tests do not need it.
