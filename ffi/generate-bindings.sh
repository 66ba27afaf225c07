#!/usr/bin/env bash
# Builds libtern_ffi and generates the Kotlin, Swift and Python bindings from it
# (uniffi library mode, with the uniffi-bindgen built in this workspace).
#
#   ffi/generate-bindings.sh [PROFILE] [OUT_DIR]
#
# PROFILE: debug, release (default) or mobile (size-tuned, see Cargo.toml).
# OUT_DIR: default target/bindings; gets kotlin/, swift/, python/ and a copy of the library.
# (The Python package is built as a wheel by maturin instead: see ffi/python/pyproject.toml.)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-release}
out=${2:-target/bindings}
# A debug build selects the whole workspace, so it reuses what `cargo test --workspace` built
# (the same features; with -p, cargo resolves other features and builds every dependency
# again). The release and mobile builds, which nothing else shares, build only the two.
case "$profile" in
  debug) flags=(--workspace); dir=debug ;;
  release) flags=(-p tern-ffi -p tern-uniffi-bindgen --release); dir=release ;;
  *) flags=(-p tern-ffi -p tern-uniffi-bindgen --profile "$profile"); dir=$profile ;;
esac
cargo build "${flags[@]}"
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
echo "bindings in $out (library: $lib, $(du -h "$lib" | cut -f1))"
