#!/usr/bin/env bash
# Builds the Python wheel as a user would get it (maturin, uniffi bindings mode: a
# platform wheel carrying libtern_ffi and the generated modules), installs it with pip into
# a fresh virtual environment, and runs the pytest suite against the installed package
# (not the source tree) and a real tern-server process.
#
#   bash ffi/python-test.sh                 # debug build, wheel by maturin
#   PROFILE=release bash ffi/python-test.sh # the wheel you would publish
#   WHEEL=workspace bash ffi/python-test.sh # what CI runs: see below
#
# WHEEL=workspace packs the wheel (ffi/python/pack_wheel.py: maturin's files, in maturin's
# places) from the library `cargo build --workspace` built and the modules uniffi generates
# from it, instead of having maturin build tern-ffi again with the features that crate
# alone selects (tokio, quinn, SQLite and the rest compiled a second time: ~6 minutes of CI).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
rm -rf target/wheels
if [ "${WHEEL:-maturin}" = workspace ] && [ "${PROFILE:-debug}" = debug ]; then
  echo "== packing the wheel from the workspace's debug build (ffi/python/pack_wheel.py)"
  ffi/generate-bindings.sh debug target/py-bindings >/dev/null
  python3 ffi/python/pack_wheel.py target/py-bindings/libtern_ffi.so target/py-bindings/python target/wheels >/dev/null
else
  tools=$root/target/tools/maturin-venv
  if [ ! -x "$tools/bin/maturin" ]; then
    echo "== installing maturin 1.16.0 (PyPI) into $tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet "maturin==1.16.0"
  fi
  flags=()
  [ "${PROFILE:-debug}" = release ] && flags=(--release)
  echo "== building the wheel (maturin build ${flags[*]})"
  (cd ffi/python && "$tools/bin/maturin" build "${flags[@]}" --quiet 2>&1 | grep -v "old-style --config" | tail -n 3)
fi
wheel=$(ls target/wheels/tern_client-*.whl)
echo "   $wheel ($(du -h "$wheel" | cut -f1))"
# --workspace, not -p: the features the test pass built with, so its artifacts are reused
# (with -p, cargo resolves other features and builds tokio, quinn, SQLite and the rest again).
cargo build --workspace --bins --quiet

venv=$root/target/py-test-venv
rm -rf "$venv"
python3 -m venv "$venv"
echo "== pip install the wheel and pytest into a fresh virtual environment"
"$venv/bin/pip" install --quiet "$wheel" pytest
"$venv/bin/python" -c 'import tern, sys; print("   tern from", tern.__file__)'
# Run from an empty directory so nothing but the installed package can be imported.
cd "$(mktemp -d)"
TERN_PY_EXPECT_PREFIX=$venv TERN_SERVER_BIN=$root/target/debug/tern-server \
  "$venv/bin/pytest" -q -p no:cacheprovider "$root/ffi/python/tests"
