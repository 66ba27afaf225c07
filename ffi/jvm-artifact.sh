#!/usr/bin/env bash
# Builds the JVM artifact a Gradle or Maven project depends on: dev.tern:tern-client-jvm,
# a jar with the compiled Kotlin bindings and the Linux x86_64 native library at
# linux-x86-64/libtern_ffi.so, where JNA looks for it on the class path (JNA unpacks and
# loads it; no -Djna.library.path needed), plus its POM (JNA, kotlinx-coroutines, the
# Kotlin standard library). Written in Maven repository layout to target/maven/:
#
#   bash ffi/jvm-artifact.sh [debug|release]     # default release
#   # Gradle: repositories { maven { url = uri("/path/to/tern/target/maven") } }
#   #         dependencies { implementation("dev.tern:tern-client-jvm:0.1.0") }
#
# Needs: java 17+, npm (the kotlin-compiler package), Debian's libjna-java.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
profile=${1:-release}
version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
group_path=dev/tern artifact=tern-client-jvm
tools=$root/target/tools
kotlinc=$tools/kotlin/package/bin/kotlinc
if [ ! -x "$kotlinc" ]; then
  echo "== fetching kotlinc (npm package kotlin-compiler 2.4.20)"
  mkdir -p "$tools/kotlin"
  (cd "$tools/kotlin" && npm pack --silent kotlin-compiler@2.4.20 >/dev/null && tar xzf kotlin-compiler-2.4.20.tgz)
fi
klib=$tools/kotlin/package/lib
if [ ! -f /usr/share/java/jna.jar ]; then
  echo "== installing JNA (Debian)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null && apt-get install -y -qq libjna-java >/dev/null
  else sudo apt-get update -qq >/dev/null && sudo apt-get install -y -qq libjna-java >/dev/null; fi
fi

echo "== building tern-ffi ($profile) and generating the Kotlin bindings"
ffi/generate-bindings.sh "$profile" target/bindings >/dev/null
build=$root/target/jvm-artifact
rm -rf "$build" && mkdir -p "$build/classes/linux-x86-64"
"$kotlinc" -nowarn -jvm-target 17 -cp "/usr/share/java/jna.jar:$klib/kotlinx-coroutines-core-jvm.jar" \
  -d "$build/classes" \
  target/bindings/kotlin/dev/tern/tern_ffi.kt \
  target/bindings/kotlin/dev/tern/client/tern_client.kt 2>&1 | grep -v '^warning:' || true
test -f "$build/classes/dev/tern/TernClient.class"
cp target/bindings/libtern_ffi.so "$build/classes/linux-x86-64/libtern_ffi.so"
strip --strip-debug "$build/classes/linux-x86-64/libtern_ffi.so"

jna_version=$(unzip -p /usr/share/java/jna.jar META-INF/MANIFEST.MF | awk '/^Implementation-Version:/ {print $2}' | tr -d '\r')
coroutines_version=$(unzip -p "$klib/kotlinx-coroutines-core-jvm.jar" META-INF/kotlinx_coroutines_core.version)
kotlin_version=$(unzip -p "$klib/kotlin-stdlib.jar" META-INF/MANIFEST.MF | awk '/^Implementation-Version:/ {print $2}' | tr -d '\r')
out=$root/target/maven/$group_path/$artifact/$version
mkdir -p "$out" "$build/classes/META-INF/maven/dev.tern/$artifact"
pom=$out/$artifact-$version.pom
cat >"$pom" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.tern</groupId>
  <artifactId>$artifact</artifactId>
  <version>$version</version>
  <packaging>jar</packaging>
  <name>Tern client (JVM, Linux x86_64)</name>
  <description>Kotlin bindings over the Tern client core, with libtern_ffi for linux-x86-64</description>
  <licenses><license><name>MIT OR Apache-2.0</name></license></licenses>
  <dependencies>
    <dependency>
      <groupId>net.java.dev.jna</groupId>
      <artifactId>jna</artifactId>
      <version>$jna_version</version>
    </dependency>
    <dependency>
      <groupId>org.jetbrains.kotlinx</groupId>
      <artifactId>kotlinx-coroutines-core-jvm</artifactId>
      <version>$coroutines_version</version>
    </dependency>
    <dependency>
      <groupId>org.jetbrains.kotlin</groupId>
      <artifactId>kotlin-stdlib</artifactId>
      <version>$kotlin_version</version>
    </dependency>
  </dependencies>
</project>
POM
cp "$pom" "$build/classes/META-INF/maven/dev.tern/$artifact/pom.xml"
jar=$out/$artifact-$version.jar
rm -f "$jar"
(cd "$build/classes" && jar --create --file "$jar" .)
for f in "$jar" "$pom"; do sha1sum "$f" | cut -d' ' -f1 >"$f.sha1"; done
python3 -c 'import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])' "$pom"
echo "$jar ($(du -h "$jar" | cut -f1))"
