#!/usr/bin/env bash
# The whole test suite: set up (install, data, release build), then `swift test`, then a real
# two-host run (scripts/multihost-test.sh: two network namespaces; prints "skipped" without root).
# The end-to-end tests launch the release executables under mpirun, so the build comes first.
#
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --quick    the edit-build-test loop: the unit tests (CoreTests, TrainingTests)
#                              and one equivalence run against `train` per executable
#   scripts/test.sh ARGS...    other arguments go to `swift test` (e.g. --filter PipelineParallelTests)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi

"$ROOT/scripts/setup.sh"
cd "$ROOT"
quiet_build swift build --build-tests

if [ "$quick" = 1 ]; then
  # One equivalence test per executable (each compares losses, gradient norms, validation, the
  # dumps after steps 1 and 5, and plan = ledger against `train`).
  swift test --skip-build --disable-swift-testing \
    --filter 'CoreTests\.' --filter 'TrainingTests\.' \
    --filter 'DataParallelTests/testDefaultSizesAdamAndBuckets' \
    --filter 'TensorParallelTests/testAdamMatchesTrain' \
    --filter 'PipelineParallelTests/testAdamMatchesTrain' \
    --filter 'ThreeDimensionalTests/testAdamAllThree222' \
    --filter 'ExpertParallelTests/testOneGroupOfTwoMatchesTrain' \
    --filter 'DiLoCoTests/testOneInnerStepWithoutMomentumMatchesTrain' \
    "$@"
  exit 0
fi

swift test --skip-build --disable-swift-testing "$@"
"$ROOT/scripts/multihost-test.sh"
