# Sourced by the other scripts: paths, and what mpirun needs on these machines.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.build/release"

# mpirun refuses to run as root unless told twice; set that only when we are root.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# More ranks than cores is fine for correctness runs; do not pin ranks to cores then.
MPIRUN=(mpirun --oversubscribe --bind-to none)

# Is everything installed and built? (cheap check, used to skip setup)
is_set_up() {
  command -v mpirun >/dev/null 2>&1 && pkg-config --exists ompi 2>/dev/null \
    && [ -s "$ROOT/data/words.txt" ] && ! LC_ALL=C sort -c "$ROOT/data/words.txt" 2>/dev/null && [ -x "$BIN/train" ] && [ -x "$BIN/train_fsdp" ]
}

# Runs a build quietly (no per-file progress lines) but never hides a failure.
quiet_build() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "error: '$*' failed" >&2
    return 1
  fi
  grep -E 'warning:|error:' "$log" | grep -v '^\[' >&2 || true
  rm -f "$log"
}
