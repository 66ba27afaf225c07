#!/usr/bin/env bash
# Generates the Python bindings (debug library) and runs the pytest suite against a real
# tern-server process.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pytest --version >/dev/null 2>&1 || python3 -m pip install --quiet pytest
ffi/generate-bindings.sh debug target/bindings >/dev/null
cargo build -p tern-server --quiet
cd ffi/python
TERN_SERVER_BIN=../../target/debug/tern-server python3 -m pytest -q tests
