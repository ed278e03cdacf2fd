#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash Launch/install-deps.sh
# The test-only Python packages below install while Swift compiles: the build keeps both cores busy, pip mostly waits
# on the network and the disk (in a fresh clone the Keras venv alone downloads and unpacks TensorFlow). Their warnings
# and the time they took are printed after the build; a package that could not be installed only skips the comparisons
# that need it.
python_test_packages() {
  local began=$SECONDS
  # Test-only, from PyPI: onnx (its checker) and onnxruntime run the exported ONNX graphs against Starling's outputs;
  # pycocotools (the COCO API) checks the run-length masks of mask AP.
  if command -v python3 >/dev/null && ! python3 -c "import onnx, onnxruntime, numpy, pycocotools.mask" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check onnx onnxruntime numpy pycocotools \
      || echo "warning: onnx/onnxruntime/pycocotools could not be installed: the comparisons with them will be skipped" >&2
  fi
  # Test-only, from PyPI: tensorboard's own event reader reads the event files `train --tensorboard` writes.
  if command -v python3 >/dev/null && ! python3 -c "import tensorboard" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check tensorboard \
      || echo "warning: tensorboard could not be installed: the event-file test will be skipped" >&2
  fi
  # Test-only, from PyPI into a venv (its numpy and protobuf pins clash with onnx's): tf.keras 2.15, the course's
  # Keras 2, loads Starling's Keras files and saves weights for Starling to import (KerasRuntimeTests).
  venv=.build/keras-venv
  if command -v python3 >/dev/null && ! "$venv/bin/python" -c "import tensorflow" 2>/dev/null; then
    { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check "tensorflow-cpu==2.15.*"; } \
      || echo "warning: tensorflow-cpu 2.15 could not be installed: the Keras runtime comparison will be skipped" >&2
  fi
  echo "test.sh: the test-only Python packages took $((SECONDS - began)) s (beside the build)"
}
mkdir -p .build
python_test_packages >.build/python-test-packages.log 2>&1 &
python_packages=$!
swift build --build-tests || { kill "$python_packages" 2>/dev/null || true; exit 1; }
wait "$python_packages" || true
cat .build/python-test-packages.log >&2
# Swift Testing runs two tests at a time, and many tests start ranks, replicas or a child `starling` beside them: the
# cores are oversubscribed, and by libgomp's default oneDNN's OpenMP threads spin after every parallel region, taking
# the cores the other tests need (faster-rcnn's overfitting test alone, loaded machine: 308 s, three quarters of its
# samples in libgomp's wait loop, against 93 s with passive waiting). Passive waiting changes no result, only who gets
# the cores (README "One process on every core"); a value already set is kept.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
swift test --skip-build
# The R-CNN family's PyTorch peers (benchmark-only): their plain-torch RoI ops against torchvision's values and kernels,
# their refusal without torchvision, one step each; where the suite's torch venv exists (Launch/bench-suite.sh makes it).
torch_venv=${TORCH_VENV:-.build/torch-venv}
if "$torch_venv/bin/python" -c "import torch" 2>/dev/null; then
  "$torch_venv/bin/python" Launch/test_peer_rcnn.py
else
  echo "skipped Launch/test_peer_rcnn.py: no torch in $torch_venv (benchmark-only; Launch/bench-suite.sh creates it)"
fi
# On AVX2 machines Starling's own convolution kernels take some of SSD7's passes; run the convolution and SSD7 tests
# again with every pass on oneDNN, the path of other CPUs (STARLING_CONV=dnnl).
STARLING_CONV=dnnl swift test --skip-build --filter "BlockedLayoutTests|SSD7Tests"
