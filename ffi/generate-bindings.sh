#!/usr/bin/env bash
# Builds libtern_ffi and generates the Kotlin, Swift and Python bindings from it
# (uniffi library mode, with the uniffi-bindgen built in this workspace).
#
#   ffi/generate-bindings.sh [PROFILE] [OUT_DIR]
#
# PROFILE: debug, release (default) or mobile (size-tuned, see Cargo.toml).
# OUT_DIR: default target/bindings; gets kotlin/, swift/, python/ and a copy of the library.
# The Python package in ffi/python/tern/ receives the module and the library too.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-release}
out=${2:-target/bindings}
case "$profile" in
  debug) flags=(); dir=debug ;;
  release) flags=(--release); dir=release ;;
  *) flags=(--profile "$profile"); dir=$profile ;;
esac
cargo build -p tern-ffi -p tern-uniffi-bindgen "${flags[@]}"
case "$(uname -s)" in
  Darwin) lib=target/$dir/libtern_ffi.dylib ;;
  *) lib=target/$dir/libtern_ffi.so ;;
esac
rm -rf "$out"
mkdir -p "$out"
for lang in kotlin swift python; do
  "target/$dir/uniffi-bindgen" generate "$lib" --language "$lang" --out-dir "$out/$lang" --no-format >/dev/null
done
cp "$lib" "$out/"
cp "$out/python/tern_ffi.py" "$out/python/tern_client.py" ffi/python/tern/
cp "$lib" ffi/python/tern/
echo "bindings in $out (library: $lib, $(du -h "$lib" | cut -f1))"
