#!/usr/bin/env bash
# Checks the generated Swift bindings as far as a Linux machine can: the C headers that
# Swift imports (TernFFI.h for tern-ffi, TernClientFFI.h for the types tern-client derives
# uniffi on) compile as C11, alone and together (one Swift target imports both), and every
# function they declare is exported by the built library. (No Swift compiler runs here;
# the iOS demo is built on macOS.)
#
#   ffi/swift-header-check.sh [BINDINGS_DIR] [LIBRARY]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/bindings}
lib=${2:-$dir/libtern_ffi.so}
headers=("$dir/swift/TernFFI.h" "$dir/swift/TernClientFFI.h")
test -f "$dir/swift/Tern.swift" && test -f "$dir/swift/TernFFI.modulemap"
test -f "$dir/swift/TernClient.swift" && test -f "$dir/swift/TernClientFFI.modulemap"
probe=$(mktemp --suffix=.c)
trap 'rm -f "$probe"' EXIT
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
