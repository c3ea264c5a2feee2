#!/usr/bin/env bash
# Installs what is missing (OpenMPI, pkg-config, the word list, matplotlib for scripts/plot.py),
# writes data/words.txt and builds release. Safe to run again: each step is skipped when already done (the build is incremental).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

missing=()
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkgconf)
pkg-config --exists ompi 2>/dev/null || missing+=(libopenmpi-dev)
[ -s /usr/share/dict/words ] || missing+=(wamerican)
/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1 || missing+=(python3-matplotlib)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The default dataset: every lowercase a–z word of the system dictionary, one per line, in a fixed
# pseudo-random order, so that the 90/10 training/validation split (in file order) is a fair sample
# rather than "a…tired" against "tiredness…z". The order is a sort by a hash of each word (ties by
# the word): a polynomial hash mod the prime 2^31 − 1, then three rounds of the Lehmer generator
# (× 48271 mod 2^31 − 1) to scatter neighbouring values; every product stays below 2^53, so any
# awk computes it exactly: the same file on every machine with the same dictionary. A file left in alphabetical order by an older
# set-up is rewritten.
if [ ! -s data/words.txt ] || LC_ALL=C sort -c data/words.txt 2>/dev/null; then
  mkdir -p data
  LC_ALL=C grep -E '^[a-z]+$' /usr/share/dict/words | LC_ALL=C sort -u | LC_ALL=C awk '
    BEGIN { for (i = 0; i < 26; i++) code[substr("abcdefghijklmnopqrstuvwxyz", i + 1, 1)] = i + 1 }
    {
      h = 0
      for (i = 1; i <= length($0); i++) h = (h * 31 + code[substr($0, i, 1)]) % 2147483647
      for (r = 0; r < 3; r++) h = (h + 1) * 48271 % 2147483647
      printf "%010d %s\n", h, $0
    }' | LC_ALL=C sort | cut -d' ' -f2 > data/words.txt.tmp
  mv data/words.txt.tmp data/words.txt
  echo "setup: wrote data/words.txt ($(wc -l < data/words.txt) words, shuffled)"
fi

quiet_build swift build -c release
test -x "$BIN/train"
