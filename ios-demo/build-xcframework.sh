#!/usr/bin/env bash
# Builds Tern for iOS devices and simulators, packs the static libraries into
# TernFFI.xcframework, and assembles the Swift package TernKit/ around it
# (generated Tern.swift + the binary target). Run on macOS with Xcode and rustup.
#
#   cd ios-demo && ./build-xcframework.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
[ "$(uname -s)" = Darwin ] || { echo "build-xcframework.sh needs macOS with Xcode" >&2; exit 1; }
targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios)
rustup target add "${targets[@]}"
for t in "${targets[@]}"; do
  cargo rustc -p tern-ffi --profile mobile --target "$t" --crate-type staticlib
done
# Swift bindings and the C header, generated from a host build of the same crate.
ffi/generate-bindings.sh release target/bindings >/dev/null

work=target/ios
rm -rf "$work" && mkdir -p "$work/sim"
"$here/assemble-ternkit.sh" target/bindings "$work/headers" "$here/TernKit"
lipo -create target/aarch64-apple-ios-sim/mobile/libtern_ffi.a target/x86_64-apple-ios/mobile/libtern_ffi.a \
  -output "$work/sim/libtern_ffi.a"
rm -rf "$here/TernKit/TernFFI.xcframework"
xcodebuild -create-xcframework \
  -library target/aarch64-apple-ios/mobile/libtern_ffi.a -headers "$work/headers" \
  -library "$work/sim/libtern_ffi.a" -headers "$work/headers" \
  -output "$here/TernKit/TernFFI.xcframework"
if [ -f tern-data/dev-cert.pem ]; then cp tern-data/dev-cert.pem "$here/TernDemo/dev-cert.pem"; fi
du -sh "$here/TernKit/TernFFI.xcframework"
echo "TernKit is ready: add ios-demo/TernKit as a local Swift package (or run xcodegen in ios-demo/)."
