#!/usr/bin/env bash
# Make sure a program the tests need exists, installing its Debian package when it is missing.
#   scripts/ensure-package.sh PROGRAM [APT_PACKAGE] [WHAT_FOR]
# PROGRAM is a name on PATH, or a path glob for programs off PATH (PostgreSQL's
# '/usr/lib/postgresql/*/bin/initdb'). The tests start their own Mosquitto and PostgreSQL on free
# ports and drive the system Chromium: they only need the binaries. Exits non-zero with one clear line when the program cannot be had.
set -euo pipefail
prog=$1; pkg=${2:-$1}; why=${3:-the tests}
found() {
  case $prog in
    */*) compgen -G "$prog" >/dev/null ;;
    *) command -v "$prog" >/dev/null 2>&1 || [ -x "/usr/sbin/$prog" ] || [ -x "/usr/bin/$prog" ] ;;
  esac
}
found && exit 0
echo "$prog not found; installing the $pkg package with apt-get (for $why)" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "error: $prog is missing and I cannot install it without root: run 'apt-get install $pkg'" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null; then
  echo "error: $prog is missing and apt-get is not available: install $pkg with your package manager" >&2
  exit 1
fi
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$pkg" >/dev/null
found || { echo "error: $prog still not found after installing $pkg" >&2; exit 1; }
