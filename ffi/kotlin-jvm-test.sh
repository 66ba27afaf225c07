#!/usr/bin/env bash
# Builds the JVM artifact (ffi/jvm-artifact.sh: the compiled bindings and the Linux
# library in one jar), compiles the Android demo's plain-Kotlin repository and its JUnit 5
# tests against it, and runs them on the JVM with the artifact on the class path: the
# stand-in for Android on a machine without an NDK.
#
# Needs: java (17+), npm (for the kotlin-compiler package), apt (libjna-java, junit5).
# Uses target/debug builds of tern-ffi and tern-server (built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools=$root/target/tools
mkdir -p "$tools"

# ffi/jvm-artifact.sh (below) fetches kotlinc (npm kotlin-compiler) if it is missing.
kotlinc=$tools/kotlin/package/bin/kotlinc
klib=$tools/kotlin/package/lib
if [ ! -f /usr/share/java/jna.jar ] || [ ! -f /usr/share/java/junit-platform-console-standalone.jar ]; then
  echo "== installing JNA and JUnit 5 (Debian)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null && apt-get install -y -qq libjna-java junit5 >/dev/null
  else sudo apt-get update -qq >/dev/null && sudo apt-get install -y -qq libjna-java junit5 >/dev/null; fi
fi

echo "== the JVM artifact (ffi/jvm-artifact.sh debug): bindings + linux-x86-64/libtern_ffi.so"
artifact=$(bash ffi/jvm-artifact.sh debug | tail -n 1 | cut -d' ' -f1)
test -f "$artifact"
# --workspace, not -p: the features the test pass built with, so its artifacts are reused
# (with -p, cargo resolves other features and builds tokio, quinn, SQLite and the rest again).
cargo build --workspace --bins --quiet

out=$root/target/kotlin-jvm
rm -rf "$out" && mkdir -p "$out"
# The app code and its tests are compiled against the artifact, as a Gradle project that
# depends on dev.tern:tern-client-jvm would be; the bindings' sources are not used here.
cp="$artifact:/usr/share/java/jna.jar:/usr/share/java/junit-jupiter-api.jar:/usr/share/java/apiguardian-api.jar:/usr/share/java/opentest4j.jar:$klib/kotlinx-coroutines-core-jvm.jar"
echo "== compiling the demo's repository and its tests against the artifact (kotlinc)"
"$kotlinc" -nowarn -jvm-target 17 -cp "$cp" -d "$out/classes" \
  android-demo/app/src/main/java/dev/tern/demo/data/ChatRepository.kt \
  android-demo/app/src/main/java/dev/tern/demo/data/DevToken.kt \
  android-demo/app/src/test/java/dev/tern/demo/ChatRepositoryTest.kt 2>&1 | grep -v '^warning:' || true
test -f "$out/classes/dev/tern/demo/ChatRepositoryTest.class"
test ! -e "$out/classes/dev/tern/TernClient.class"

if [ "${TERN_TEST_STORE:-}" = postgres ]; then
  # The test class starts one server: give it a new scratch database (TERN_STORE).
  TERN_STORE=$(bash server/dev-postgres.sh scratch tern_kt)
  export TERN_STORE
  db=${TERN_STORE##*/}
  echo "== on the PostgreSQL store (${db%%\?*})"
fi

echo "== running JUnit 5 (the native library comes from the artifact jar, through JNA)"
TERN_SERVER_BIN=$root/target/debug/tern-server java \
  -jar /usr/share/java/junit-platform-console-standalone.jar \
  -cp "$out/classes:$cp:$klib/kotlin-stdlib.jar" \
  --select-class dev.tern.demo.ChatRepositoryTest --disable-banner --details=summary 2>&1 | tee "$out/junit.log" | tail -n 25
grep -qE "\[ +[1-9][0-9]* tests successful +\]" "$out/junit.log"
grep -qE "\[ +0 tests failed +\]" "$out/junit.log"
