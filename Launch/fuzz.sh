#!/usr/bin/env bash
# Issue 16 item 7: runs each libFuzzer target (Sources/starling-fuzz) for a bounded time.
#   bash Launch/fuzz.sh [TARGET...]          all targets when none is named
#   STARLING_FUZZ_SECONDS=S                  seconds per target (default 20; CI uses the default)
#   STARLING_FUZZ_SHARED=DIR                 the sample data (default ../shared/data beside the repository)
# The targets are built with libFuzzer and AddressSanitizer into .build-fuzz (the main build never sees these
# flags). The seed corpora are written from the sample data by `starling-fuzz seeds` (nothing is committed); inputs
# libFuzzer finds interesting are kept in .build-fuzz/corpus/TARGET for the next run. A crash, a sanitizer report, a
# hang (-timeout) or an input that needs more than -rss_limit_mb ends the target's run: the input is saved as
# .build-fuzz/crashes/TARGET-*, the script exits non-zero, and the input becomes a regression case in FuzzTests
# (replay it with `.build/debug/starling-fuzz TARGET FILE`).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${STARLING_FUZZ_SECONDS:-20}
shared=${STARLING_FUZZ_SHARED:-$(cd .. && pwd)/shared/data}
all=(idx csv kitti voc coco coco-results yolo jpeg png checkpoint)
targets=("${@:-${all[@]}}")
if [ ! -d "$shared/udacity" ]; then
  echo "fuzz.sh: no sample data at $shared (set STARLING_FUZZ_SHARED)" >&2
  exit 1
fi

# The seed writer (and replay tool) is the ordinary build of the same target.
nice -n 10 swift build --product starling-fuzz
replay=$(swift build --show-bin-path)/starling-fuzz
seeds=.build-fuzz/seeds
rm -rf "$seeds"
"$replay" seeds "$seeds" "$shared" Launch/data/mnist-sample

# swiftc 6.3.1 keeps only the last of several -sanitize= options ("-sanitize=fuzzer -sanitize=address", SwiftPM's
# order for --sanitize=fuzzer --sanitize=address, builds no coverage counters and libFuzzer runs blind), so both
# sanitizers go in one option after SwiftPM's own; --sanitize=fuzzer still tells SwiftPM that libFuzzer owns main.
flags=(--scratch-path .build-fuzz --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address -Xswiftc -DSTARLING_LIBFUZZER)
nice -n 10 swift build "${flags[@]}" --product starling-fuzz
fuzzer=$(swift build "${flags[@]}" --show-bin-path)/starling-fuzz

mkdir -p .build-fuzz/crashes
failed=()
for target in "${targets[@]}"; do
  corpus=.build-fuzz/corpus/$target
  mkdir -p "$corpus"
  log=.build-fuzz/$target.log
  # Swift's backtracer would spend seconds on every crash; leaks are not what these runs look for (the Swift
  # runtime keeps allocations until exit); one job, so that the machine's other work keeps its cores.
  if STARLING_FUZZ_TARGET=$target SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
      nice -n 10 timeout -k 10 $((seconds + 60)) "$fuzzer" "$corpus" "$seeds/$target" \
      -seed=1 -max_total_time="$seconds" -timeout=10 -rss_limit_mb=3072 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix=".build-fuzz/crashes/$target-" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz $target: ${runs:-?} inputs in ${seconds} s, no crash (corpus $(ls "$corpus" | wc -l) files)"
  elif [ "$target" = checkpoint ] && grep -q "ERROR: libFuzzer: timeout" "$log" && grep -q "H5HG_read" "$log"; then
    # Known and not fixed here: Debian's HDF5 1.10.8 loops without end in H5HG_read (H5Aread of a variable-length
    # string attribute whose global heap is corrupt); see README "Reliability". Reported, not counted as a failure.
    echo "fuzz $target: WARNING: the known HDF5 hang in H5HG_read (input in .build-fuzz/crashes/, report in $log)" >&2
  else
    echo "fuzz $target: FAILED; the input is in .build-fuzz/crashes/, the report in $log:" >&2
    grep -E "ERROR|Fatal error|SUMMARY|deadly signal|Test unit written" "$log" | head -8 >&2 || tail -20 "$log" >&2
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
