#!/usr/bin/env bash
# The whole test suite: set up (install, data, release build), then `swift test`, then a real
# two-host run (scripts/multihost-test.sh: two network namespaces; prints "skipped" without root).
# The end-to-end tests launch the release executables under mpirun, so the build comes first.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
quiet_build swift build --build-tests
swift test --skip-build --disable-swift-testing "$@"
"$ROOT/scripts/multihost-test.sh"
