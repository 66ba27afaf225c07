#!/usr/bin/env bash
# Checks the generated Swift bindings as far as a Linux machine can: the C header that
# Swift imports (TernFFI.h) compiles as C11, and every function it declares is exported
# by the built library. (No Swift compiler runs here; the iOS demo is built on macOS.)
#
#   ffi/swift-header-check.sh [BINDINGS_DIR] [LIBRARY]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/bindings}
lib=${2:-$dir/libtern_ffi.so}
header=$dir/swift/TernFFI.h
test -f "$header" && test -f "$dir/swift/Tern.swift" && test -f "$dir/swift/TernFFI.modulemap"
probe=$(mktemp --suffix=.c)
trap 'rm -f "$probe"' EXIT
printf '#include "%s"\nint main(void) { return 0; }\n' "$(realpath "$header")" >"$probe"
if command -v clang >/dev/null 2>&1; then
  clang -std=c11 -Wall -Werror -Wno-pragma-once-outside-header -fsyntax-only "$probe"
  echo "TernFFI.h compiles as C11 (clang)"
else
  # _Nonnull/_Nullable are Clang nullability qualifiers; GCC checks the rest.
  gcc -std=c11 -Wall -Werror -D_Nonnull= -D_Nullable= -fsyntax-only "$probe"
  echo "TernFFI.h compiles as C11 (gcc, nullability qualifiers stripped)"
fi
declared=$(grep -oE '\b(uniffi|ffi)_tern_ffi_[a-z0-9_]+\(' "$header" | tr -d '(' | sort -u)
exported=$(nm -D --defined-only "$lib" | awk '{print $3}' | sort -u)
missing=$(comm -23 <(echo "$declared") <(echo "$exported"))
if [ -n "$missing" ]; then
  echo "declared in TernFFI.h but not exported by $lib:" >&2
  echo "$missing" >&2
  exit 1
fi
echo "all $(echo "$declared" | wc -l) functions declared in TernFFI.h are exported by $(basename "$lib")"
