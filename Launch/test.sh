#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash Launch/install-deps.sh
# Test-only, from PyPI: onnx (its checker) and onnxruntime run the exported ONNX graphs against Starling's outputs.
if command -v python3 >/dev/null && ! python3 -c "import onnx, onnxruntime, numpy" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check onnx onnxruntime numpy \
    || echo "warning: onnx/onnxruntime could not be installed: the ONNX runtime comparison will be skipped" >&2
fi
swift build --build-tests
swift test --skip-build
