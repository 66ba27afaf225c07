#!/usr/bin/env bash
# Assembles what the TernKit Swift package needs from generated bindings, on any OS:
# the C headers plus one module.modulemap declaring both C modules (TernFFI for tern-ffi,
# TernClientFFI for the types tern-client derives uniffi on) into HEADERS_DIR, for
# `xcodebuild -create-xcframework -headers`; the generated Swift sources into
# PACKAGE_DIR/Sources/Tern (one Swift module, `import Tern`).
#
#   ios-demo/assemble-ternkit.sh BINDINGS_DIR HEADERS_DIR PACKAGE_DIR
#
# build-xcframework.sh (macOS) runs it before packing the xcframework;
# ffi/swift-header-check.sh (Linux, CI) runs it into a scratch copy and checks the result.
set -euo pipefail
bindings=$1 headers=$2 package=$3
mkdir -p "$headers" "$package/Sources/Tern"
cp "$bindings/swift/TernFFI.h" "$bindings/swift/TernClientFFI.h" "$headers/"
# An xcframework wants one module map named module.modulemap.
{
  cat "$bindings/swift/TernFFI.modulemap"; echo
  cat "$bindings/swift/TernClientFFI.modulemap"; echo
} >"$headers/module.modulemap"
cp "$bindings/swift/Tern.swift" "$bindings/swift/TernClient.swift" "$package/Sources/Tern/"
