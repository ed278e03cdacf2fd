#!/usr/bin/env bash
# Where a training step's time goes: samples one rank (1 OpenBLAS thread) training MODEL at BATCH on the full MNIST
# with perf, and sums the samples by kind of work (oneDNN's convolutions and reorders, Starling's own convolution
# kernels, sgemm and its packing, im2col and other convolution glue, zeroing fresh buffers, pooling, upsampling,
# activations, loss, optimizer, data). Needs perf (Debian: linux-perf). BIN=path profiles another build (e.g. main's,
# for a before/after) on the same data.
#   Launch/profile-step.sh conv-ae 128 [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?model family}
batch=${2:?batch size}
steps=${3:-80}
command -v perf >/dev/null || { echo "error: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
source Launch/bench-setup.sh
bin=${BIN:-$bin}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
perf record -F 999 -o "$out/perf.data" "$bin" train --model "$model" --data "$data" --epochs 1 --steps-per-epoch "$steps" \
  --batch-size "$batch" --blas-threads 1 --val-split none --out "$out/run" > "$out/train.log" 2>&1
echo "$model, batch $batch, $steps steps, 1 rank, OpenBLAS $(grep -o 'BLAS [A-Za-z0-9]* x[0-9]*' "$out/train.log" | head -1 | cut -d' ' -f2-)"
grep -o "[0-9]* img/s" "$out/train.log" | tail -1 | sed 's/^/throughput at the end of the epoch: /'
# The rules live in a quoted here-document, not a single-quoted argument: a category name may then hold an apostrophe
# ("Starling's ...") without ending the shell's quoting.
read -r -d '' categories <<'AWK' || true
    {
      pct = $1; sub(/%/, "", pct); line = $0
      if (line ~ /libopenblas/) kind = "sgemm (OpenBLAS kernel and packing)"
      else if (line ~ /\[JIT\]|libdnnl/) kind = "oneDNN (convolutions, reorders: JIT code)"
      else if (line ~ /narrow(Forward|InputGradient|WeightGradient)|NarrowOutput/) kind = "Starling's narrow-output convolution"
      else if (line ~ /directForward|WeightGradient3x3|fiveWide/) kind = "Starling's other convolution kernels"
      else if (line ~ /conv2dBlockedReLU/) kind = "activations"
      else if (line ~ /memset/) kind = "zeroing fresh buffers (memset)"
      else if (line ~ /memmove|memcpy/) kind = "copies (memmove)"
      else if (line ~ /ConvGeometry|conv2d|Transposed|im2col|col2im/) kind = "convolution glue (im2col, col2im, padding, bias)"
      else if (line ~ /maxPool|avgPool/) kind = "pooling"
      else if (line ~ /upsample/) kind = "upsampling"
      else if (line ~ /relu|elu|sigmoid|tanh|Activation/) kind = "activations"
      else if (line ~ /bce|[Ee]ntropy|Loss|kl/) kind = "loss"
      else if (line ~ /Adam|SGD|Optimizer|step\(/) kind = "optimizer"
      else if (line ~ /lstm|LSTM/) kind = "LSTM cell"
      else if (line ~ /H5|hdf5|Dataset|read\(/) kind = "data (HDF5 read, conversion)"
      else if (line ~ /kernel\.kallsyms|\[k\]/) kind = "kernel (page faults, scheduling)"
      else kind = "other"
      share[kind] += pct
    }
    END { for (k in share) printf "%6.1f %%  %s\n", share[k], k }
AWK
perf report -i "$out/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | swift demangle --simplified \
  | awk "$categories" | sort -rn
