#!/usr/bin/env bash
# Installs what is missing (OpenMPI, pkg-config, the word list), writes data/words.txt and builds
# release. Safe to run again: each step is skipped when already done (the build is incremental).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

missing=()
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkgconf)
pkg-config --exists ompi 2>/dev/null || missing+=(libopenmpi-dev)
[ -s /usr/share/dict/words ] || missing+=(wamerican)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The default dataset: one lowercase a–z word per line from the system dictionary.
if [ ! -s data/words.txt ]; then
  mkdir -p data
  LC_ALL=C grep -E '^[a-z]+$' /usr/share/dict/words | LC_ALL=C sort -u > data/words.txt.tmp
  mv data/words.txt.tmp data/words.txt
  echo "setup: wrote data/words.txt ($(wc -l < data/words.txt) words)"
fi

quiet_build swift build -c release
test -x "$BIN/train"
