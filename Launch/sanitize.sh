#!/usr/bin/env bash
# Issue 16 item 7: the tests that read what users hand Starling, built with AddressSanitizer into .build-asan.
#   bash Launch/sanitize.sh [FILTER]        default: the subset below; FILTER is `swift test --filter`'s pattern
# The subset: the parsers, decoders and HDF5 reader in process (StarlingIOTests, FuzzTests, the detection and
# segmentation imports, checkpoints) and the bad-input corpus, whose 90-odd cases run the ASan-built `starling`
# binary. The rest of the suite (training numerics under oneDNN and OpenBLAS) is not run here: it reads no user
# bytes, and under ASan it would take most of CI's time.
# UndefinedBehaviorSanitizer: Swift 6.3.1 refuses `-sanitize=undefined` on Linux ("unsupported option ... for target
# x86_64-unknown-linux-gnu"), and the package has no C target of its own for clang's UBSan to instrument; Swift
# itself traps on overflow, out-of-bounds indices and bad unwraps in every build, and those traps fail the tests.
# The native libraries (HDF5, libjpeg-turbo, libpng, OpenBLAS, oneDNN, Open MPI) are Debian's, not instrumented:
# ASan sees their heap through its allocator but not their stack or globals.
set -euo pipefail
cd "$(dirname "$0")/.."
filter=${1:-"StarlingIOTests|FuzzTests|DetectionImportTests|SegmentationImportTests|CheckpointTests|BadInputCorpusTests|DatasetChecksTests"}
flags=(--scratch-path .build-asan --sanitize=address)
# Without the debug -O of the core and the kernels (Package.swift): this build's tests parse files, and it compiles in
# less time (both commands below must see it, or the second would rebuild).
export STARLING_DEBUG_UNOPTIMIZED=1
nice -n 10 swift build "${flags[@]}" --build-tests
# Leaks are not looked for: the Swift runtime's metadata caches and Foundation's singletons live until exit.
# SWIFT_BACKTRACE off: ASan prints the report; Swift's backtracer would only add seconds to a failure.
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 SWIFT_BACKTRACE=enable=no OMP_WAIT_POLICY=passive \
  nice -n 10 swift test "${flags[@]}" --skip-build --filter "$filter"
