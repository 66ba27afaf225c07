#!/usr/bin/env bash
# Runs the whole benchmark suite (release build) and regenerates docs/bench/README.md,
# its plots and docs/bench/results.json. Takes about 25 minutes on 2 cores; run it on
# an otherwise idle machine.
#
#   bash docs/bench/run-bench.sh            # full suite
#   bash docs/bench/run-bench.sh --quick    # smoke sizes into target/bench-smoke (what CI runs)
#
# TERN_BENCH_BASELINE=<an older tern-server binary> makes the throughput stage measure it
# right after this build, the same way, and the report compare the two (issue 17 measured
# against the build before it: docs/bench/analysis.md says how that binary was built).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p tern-server -p tern-bench
# Flush the build's writes (hundreds of MB of binaries) before the first measurement: the
# throughput stage fsyncs every commit. Two reports generated right after a build had a
# p99 at 50 % load of 254 and 305 ms where the same binaries gave 22-37 ms when run later
# (docs/bench/cost-round6/README.md); the build's writeback is the suspect, not proven.
sync
if [ "${1:-}" = "--quick" ]; then
  out=target/bench-smoke
  target/release/tern-bench all --quick --out "$out/results.json" \
    ${TERN_BENCH_BASELINE:+--baseline "$TERN_BENCH_BASELINE"}
else
  out=docs/bench
  target/release/tern-bench all --out "$out/results.json" \
    ${TERN_BENCH_BASELINE:+--baseline "$TERN_BENCH_BASELINE"}
fi
target/release/tern-bench report --results "$out/results.json" --out "$out"
# Group fan-out (write diffusion at 10..10,000 members): its own page.
if [ "${1:-}" = "--quick" ]; then
  target/release/tern-bench fanout --quick --out "$out/fanout.md" >/dev/null
else
  target/release/tern-bench fanout --online-max 10000 --out "$out/fanout.md" >/dev/null
fi
