#!/usr/bin/env bash
# Checks the generated Swift bindings as far as a Linux machine can: the C headers that
# Swift imports (TernFFI.h for tern-ffi, TernClientFFI.h for the types tern-client derives
# uniffi on) compile as C11, alone and together (one Swift target imports both), and every
# function they declare is exported by the built library; and the TernKit Swift package
# assembles (ios-demo/assemble-ternkit.sh, as build-xcframework.sh runs it on macOS) into a
# layout whose module map declares exactly the C modules the generated Swift imports, whose
# headers exist, and whose paths and names match Package.swift. (No Swift compiler runs
# here; the iOS demo and the xcframework are built on macOS.)
#
#   ffi/swift-header-check.sh [BINDINGS_DIR] [LIBRARY]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/bindings}
lib=${2:-$dir/libtern_ffi.so}
[ -f "$dir/swift/Tern.swift" ] || ffi/generate-bindings.sh debug "$dir" >/dev/null
headers=("$dir/swift/TernFFI.h" "$dir/swift/TernClientFFI.h")
test -f "$dir/swift/Tern.swift" && test -f "$dir/swift/TernFFI.modulemap"
test -f "$dir/swift/TernClient.swift" && test -f "$dir/swift/TernClientFFI.modulemap"
probe=$(mktemp --suffix=.c)
scratch=$(mktemp -d)
trap 'rm -f "$probe"; rm -rf "$scratch"' EXIT
{
  for h in "${headers[@]}"; do printf '#include "%s"\n' "$(realpath "$h")"; done
  printf 'int main(void) { return 0; }\n'
} >"$probe"
if command -v clang >/dev/null 2>&1; then
  clang -std=c11 -Wall -Werror -Wno-pragma-once-outside-header -fsyntax-only "$probe"
  echo "TernFFI.h + TernClientFFI.h compile as C11 (clang)"
else
  # _Nonnull/_Nullable are Clang nullability qualifiers; GCC checks the rest.
  gcc -std=c11 -Wall -Werror -D_Nonnull= -D_Nullable= -fsyntax-only "$probe"
  echo "TernFFI.h + TernClientFFI.h compile as C11 (gcc, nullability qualifiers stripped)"
fi
declared=$(cat "${headers[@]}" | grep -oE '\b(uniffi|ffi)_tern_(ffi|client)_[a-z0-9_]+\(' | tr -d '(' | sort -u)
exported=$(nm -D --defined-only "$lib" | awk '{print $3}' | sort -u)
missing=$(comm -23 <(echo "$declared") <(echo "$exported"))
if [ -n "$missing" ]; then
  echo "declared in the headers but not exported by $lib:" >&2
  echo "$missing" >&2
  exit 1
fi
echo "all $(echo "$declared" | wc -l) functions declared in the headers are exported by $(basename "$lib")"

# The Swift package, assembled as on macOS (without the xcframework's static libraries).
cp -r ios-demo/TernKit "$scratch/TernKit"
rm -rf "$scratch/TernKit/Sources/Tern/"*.swift
ios-demo/assemble-ternkit.sh "$dir" "$scratch/headers" "$scratch/TernKit"
map=$scratch/headers/module.modulemap
declared_modules=$(grep -oE '^module [A-Za-z0-9_]+' "$map" | awk '{print $2}' | sort -u)
imported_modules=$(cat "$scratch"/TernKit/Sources/Tern/*.swift | grep -oE '^import [A-Za-z0-9_]+FFI$' | awk '{print $2}' | sort -u)
if [ "$declared_modules" != "$imported_modules" ]; then
  echo "module.modulemap declares [$(echo $declared_modules)] but the Swift sources import [$(echo $imported_modules)]" >&2
  exit 1
fi
for h in $(grep -oE 'header "[^"]+"' "$map" | cut -d'"' -f2); do
  test -f "$scratch/headers/$h" || { echo "module.modulemap names $h, which is not in the headers" >&2; exit 1; }
done
pkg=$scratch/TernKit/Package.swift
grep -q '\.binaryTarget(name: "TernFFI", path: "TernFFI.xcframework")' "$pkg"
grep -q '\.target(name: "Tern", dependencies: \["TernFFI"\], path: "Sources/Tern")' "$pkg"
grep -q '\.library(name: "Tern", targets: \["Tern"\])' "$pkg"
test -f "$scratch/TernKit/Sources/Tern/Tern.swift" && test -f "$scratch/TernKit/Sources/Tern/TernClient.swift"
echo "TernKit assembles: module.modulemap declares $(echo $declared_modules), as the Swift sources import; Package.swift paths and names match"
