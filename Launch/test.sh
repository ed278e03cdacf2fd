#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash Launch/install-deps.sh
swift build --build-tests
swift test --skip-build
