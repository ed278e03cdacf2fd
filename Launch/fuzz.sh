#!/usr/bin/env bash
# Issue 16 item 7: runs each libFuzzer target (Sources/starling-fuzz) for a fixed number of inputs or a bounded time.
#   bash Launch/fuzz.sh [TARGET...]          all targets when none is named
#   STARLING_FUZZ_RUNS=N                     exactly N inputs per target (libFuzzer -runs=N), from the seeds alone
#   STARLING_FUZZ_RUNS=ci                    each target's own count from the table below (about 20 s each here; CI)
#   STARLING_FUZZ_SECONDS=S                  without STARLING_FUZZ_RUNS: run each target for S seconds (default 20),
#                                            growing .build-fuzz/corpus/TARGET from run to run (exploration);
#                                            with it: the time cap of each target's run (default 600), a safety net
#   STARLING_FUZZ_SHARED=DIR                 the sample data (default ../shared/data beside the repository)
# The targets are built with libFuzzer and AddressSanitizer into .build-fuzz (the main build never sees these
# flags). The seed corpora are written from the sample data by `starling-fuzz seeds` (nothing is committed).
# A counted run (STARLING_FUZZ_RUNS) does not depend on the machine's speed: it starts from the seeds in an empty
# corpus and runs exactly N inputs with -seed=1 and nothing else that varies from process to process (below), so a
# failure in CI replays with the same command (and its input is saved): every target runs the very same inputs
# every time (the checkpoint target for its first few thousand inputs; README "Reliability").
# A timed run keeps the inputs libFuzzer finds interesting in .build-fuzz/corpus/TARGET for the next run; how far it
# gets depends on the machine's speed.
# A crash, a sanitizer report, a hang (-timeout, 10 s), or an input that needs more than -rss_limit_mb ends the
# target's run: the input is saved as .build-fuzz/crashes/TARGET-*, the script exits non-zero, and the input becomes
# a regression case in FuzzTests (replay it with `.build/debug/starling-fuzz TARGET FILE`).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${STARLING_FUZZ_RUNS:-}
if [ -n "$runs" ]; then
  seconds=${STARLING_FUZZ_SECONDS:-600}
else
  seconds=${STARLING_FUZZ_SECONDS:-20}
fi
# Inputs per target in CI (STARLING_FUZZ_RUNS=ci): about 20 s of CPU each on the project's machines (2 cores AMD EPYC
# family 25 model 17), from the CPU time 3,000 inputs of each target took (0.65-1.0 ms an input; README "Reliability").
declare -A ci_runs=([idx]=20000 [csv]=23000 [kitti]=24000 [voc]=24000 [coco]=25000
  [coco-results]=28000 [yolo]=25000 [jpeg]=20000 [png]=30000 [checkpoint]=24000)
if [ -n "$runs" ] && [ "$runs" != ci ] && ! [[ "$runs" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz.sh: STARLING_FUZZ_RUNS must be a positive number or 'ci'; got '$runs'" >&2
  exit 2
fi
shared=${STARLING_FUZZ_SHARED:-$(cd .. && pwd)/shared/data}
all=(idx csv kitti voc coco coco-results yolo jpeg png checkpoint)
targets=("${@:-${all[@]}}")
if [ ! -d "$shared/udacity" ]; then
  echo "fuzz.sh: no sample data at $shared (set STARLING_FUZZ_SHARED)" >&2
  exit 1
fi

# The seed writer (and replay tool) is the ordinary build of the same target, built as the test command builds it
# (--build-tests, a no-op right after Launch/test.sh): `--product starling-fuzz` alone compiles its modules again
# without -enable-testing (32 s in CI), and the next test build compiles them back.
nice -n 10 swift build --build-tests
replay=$(swift build --show-bin-path)/starling-fuzz
seeds=.build-fuzz/seeds
rm -rf "$seeds"
"$replay" seeds "$seeds" "$shared" Launch/data/mnist-sample

# swiftc 6.3.1 keeps only the last of several -sanitize= options ("-sanitize=fuzzer -sanitize=address", SwiftPM's
# order for --sanitize=fuzzer --sanitize=address, builds no coverage counters and libFuzzer runs blind), so both
# sanitizers go in one option after SwiftPM's own; --sanitize=fuzzer still tells SwiftPM that libFuzzer owns main.
flags=(--scratch-path .build-fuzz --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address -Xswiftc -DSTARLING_LIBFUZZER)
# Without the debug -O of the core and the kernels (Package.swift): the targets parse files, and the build takes less
# time; only this build sees the variable (the main build above keeps its -O).
STARLING_DEBUG_UNOPTIMIZED=1 nice -n 10 swift build "${flags[@]}" --product starling-fuzz
fuzzer=$(STARLING_DEBUG_UNOPTIMIZED=1 swift build "${flags[@]}" --show-bin-path)/starling-fuzz

mkdir -p .build-fuzz/crashes
root=$PWD
# Address-space randomisation off for the fuzzer (when the kernel lets setarch do it), a precaution: addresses can
# reach the comparisons libFuzzer records (a dictionary keyed by an object's address probes in another order), and
# those records steer its mutations.
no_aslr=(setarch "$(uname -m)" -R)
"${no_aslr[@]}" true 2>/dev/null || { echo "fuzz.sh: setarch -R is not permitted here; address randomisation stays on" >&2; no_aslr=(); }
# One target's run; its summary goes to .build-fuzz/TARGET.result and its outcome to TARGET.status, since targets run
# side by side (below).
fuzz_one() {
  local target=$1 corpus count bound log start run_dir executed coverage
  if [ -n "$runs" ]; then
    # A fresh corpus each time: the run depends on nothing but the seeds and the count.
    corpus=.build-fuzz/corpus-counted/$target
    rm -rf "$corpus"
    count=$runs
    [ "$runs" = ci ] && count=${ci_runs[$target]}
    bound=(-runs="$count" -max_total_time="$seconds")
  else
    corpus=.build-fuzz/corpus/$target
    bound=(-max_total_time="$seconds")
  fi
  mkdir -p "$corpus"
  log=.build-fuzz/$target.log
  start=$(date +%s)
  # What made counted runs of the checkpoint target differ was its seeds (HDF5 stamped each object header with the
  # second it was written; Starling's files no longer record times) and the random name of the temporary file the
  # target wrote each input through (now written in place). The rest are precautions, which alone did not change
  # 1,500-input runs: the fuzzer runs in a fresh folder of its own and writes each input to the same relative path
  # there (STARLING_FUZZ_WORK), as the path can reach the string comparisons libFuzzer records (HDF5's and
  # Foundation's, through the sanitizer's strcmp and memcmp hooks) and held the process id.
  # Swift's backtracer would spend seconds on every crash; leaks are not what these runs look for (the Swift
  # runtime keeps allocations until exit); deterministic hashing keeps Swift's dictionaries, and so the coverage
  # libFuzzer steers by, the same in every process; one thread for OpenBLAS, OpenMP and Starling's loops, and no
  # HDF5 call watchdog (libFuzzer's -timeout is the limit here), so that no other thread runs instrumented code
  # while an input runs (its edges would count towards that input's coverage, by the clock); one libFuzzer job a
  # target (targets run side by side as separate processes, below).
  run_dir=$root/.build-fuzz/run/$target
  rm -rf "$run_dir"
  mkdir -p "$run_dir"
  if (cd "$run_dir" && STARLING_FUZZ_TARGET=$target STARLING_FUZZ_WORK=work SWIFT_BACKTRACE=enable=no \
      SWIFT_DETERMINISTIC_HASHING=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 STARLING_HDF5_CALL_SECONDS=0 \
      ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
      nice -n 10 timeout -k 10 $((seconds + 60)) "${no_aslr[@]}" "$fuzzer" "$root/$corpus" "$root/$seeds/$target" \
      -seed=1 "${bound[@]}" -timeout=10 -rss_limit_mb=3072 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$root/.build-fuzz/crashes/$target-") >"$log" 2>&1; then
    executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    coverage=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | grep -oE 'cov: [0-9]+ ft: [0-9]+' | tail -1)
    echo "fuzz $target: ${executed:-?} inputs in $(($(date +%s) - start)) s, no crash (corpus $(ls "$corpus" | wc -l) files; ${coverage:-coverage ?})"
    if [ -n "$runs" ] && [ "${executed:-0}" -lt "$count" ]; then
      # The time cap ended the run early, before the count: said, not a failure (a very slow machine).
      echo "fuzz $target: stopped by the ${seconds}-s cap after ${executed:-0} of $count inputs"
    fi
    echo ok >".build-fuzz/$target.status"
  else
    echo "fuzz $target: FAILED; the input is in .build-fuzz/crashes/, the report in $log:"
    grep -E "ERROR|Fatal error|SUMMARY|deadly signal|Test unit written" "$log" | head -8 || tail -20 "$log"
    echo failed >".build-fuzz/$target.status"
  fi
}

# Targets run side by side, one a core (STARLING_FUZZ_JOBS, default the cores the machine has): each is one process of
# one thread, and a counted run executes the same inputs however many run beside it. Their lines are printed in the
# targets' order once all have finished.
jobs=${STARLING_FUZZ_JOBS:-$(nproc)}
if ! [[ "$jobs" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz.sh: STARLING_FUZZ_JOBS must be a positive number; got '$jobs'" >&2
  exit 2
fi
for target in "${targets[@]}"; do
  rm -f ".build-fuzz/$target.status" ".build-fuzz/$target.result"
done
running=0
for target in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  fuzz_one "$target" >".build-fuzz/$target.result" 2>&1 &
  running=$((running + 1))
done
wait || true
failed=()
for target in "${targets[@]}"; do
  if [ "$(cat ".build-fuzz/$target.status" 2>/dev/null)" = ok ]; then
    cat ".build-fuzz/$target.result"
  else
    cat ".build-fuzz/$target.result" >&2 2>/dev/null || echo "fuzz $target: FAILED (no result)" >&2
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
