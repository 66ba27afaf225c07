#!/usr/bin/env bash
# Builds libtern_ffi.so for the emulator and devices into the :tern library module
# (tern/src/main/jniLibs), generates the Kotlin bindings into it (tern/src/main/java), and
# copies the dev server's certificate into the app's assets. Then `./gradlew
# :tern:assembleRelease` makes the AAR and `./gradlew :app:installDebug` installs the demo.
#
# Needs: the Android NDK (ANDROID_NDK_HOME), rustup, and cargo-ndk (installed if missing).
#   cd android-demo && ./build-native.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
command -v cargo-ndk >/dev/null || cargo install cargo-ndk --locked
rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android
cargo ndk -t arm64-v8a -t armeabi-v7a -t x86_64 -o "$here/tern/src/main/jniLibs" \
  build --profile mobile -p tern-ffi
# Bindings are the same for every target; generate them from a host build.
ffi/generate-bindings.sh release target/bindings >/dev/null
mkdir -p "$here/tern/src/main/java/dev/tern/client"
cp target/bindings/kotlin/dev/tern/tern_ffi.kt "$here/tern/src/main/java/dev/tern/tern_ffi.kt"
cp target/bindings/kotlin/dev/tern/client/tern_client.kt "$here/tern/src/main/java/dev/tern/client/tern_client.kt"
if [ -f tern-data/dev-cert.pem ]; then
  mkdir -p "$here/app/src/main/assets"
  cp tern-data/dev-cert.pem "$here/app/src/main/assets/dev-cert.pem"
fi
du -h "$here"/tern/src/main/jniLibs/*/libtern_ffi.so
