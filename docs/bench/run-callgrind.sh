#!/usr/bin/env bash
# The server's instructions per message, counted by callgrind: repeatable to about 1 % on
# this noisy machine, where a throughput run moves by 10 % from one run to the next. Used
# to measure one change to the server at a time (docs/bench/analysis.md, "Cost per
# message: ninth round"); the throughput report stays the judge of msg/s and latency.
#
# `tern-bench wire` drives a server that runs under `valgrind --tool=callgrind`, twice
# per mode with a different number of messages; the difference divided by the
# difference in messages is the cost of one message, start-up and log-in taken out.
# Two modes: `single` (one message at a time: each message commits on its own, as at
# low load) and `burst` (pipelined: the writer's batches are full). Each is split into
# the store's writer and WAL checkpointer threads (`writer_loop`, `checkpoint::run`)
# and the rest of the process (QUIC, TLS, sessions, fan-out). The writer's count
# repeats to within 1 %; the rest counts timers and idle polls too, which grow with the
# (slowed-down) wall time, so it moves by up to 20 % between runs: compare the rest over
# several runs, or by function.
#
# Usage: docs/bench/run-callgrind.sh [tern-server binary ...]
#   (default: target/release/tern-server; several binaries are measured one after the
#   other in the same invocation). Needs valgrind and a release build of tern-bench.
# Env: TERN_CG_BENCH (the tern-bench binary, default target/release/tern-bench; CI's
#   smoke runs the debug build with a few messages), TERN_CG_OUT (directory for the callgrind files, default a temporary one),
#   TERN_CG_SINGLE="50 200", TERN_CG_BURST="300 1200" (the two sizes of each mode).
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
BENCH=${TERN_CG_BENCH:-target/release/tern-bench}
[ -x "$BENCH" ] || { echo "build it first: cargo build --release -p tern-bench -p tern-server" >&2; exit 1; }
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=(target/release/tern-server)
OUT=${TERN_CG_OUT:-$(mktemp -d /tmp/tern-callgrind.XXXXXX)}
mkdir -p "$OUT"
read -r S1 S2 <<<"${TERN_CG_SINGLE:-50 200}"
read -r B1 B2 <<<"${TERN_CG_BURST:-300 1200}"

# The server's stand-in: callgrind in the background, so that the bench's kill at the
# end (SIGKILL, which callgrind cannot survive to write its counts) leaves it running;
# it is then stopped with SIGTERM, the server shuts down and callgrind writes the files.
WRAP="$OUT/server.sh"
cat >"$WRAP" <<'EOF'
#!/usr/bin/env bash
valgrind --tool=callgrind --separate-threads=yes \
  --callgrind-out-file="$TERN_CG_FILE" "$TERN_CG_BIN" "$@" 2>"$TERN_CG_FILE.log" &
echo $! >"$TERN_CG_FILE.pid"
wait
EOF
chmod +x "$WRAP"

# run BIN TAG SINGLE BURST: prints "writer rest" (instructions, whole run).
run() {
  local bin=$1 tag=$2 single=$3 burst=$4 file="$OUT/$2"
  rm -f "$file"*
  TERN_CG_BIN=$(realpath "$bin") TERN_CG_FILE="$file" TERN_SERVER_BIN="$WRAP" \
    timeout 900 "$BENCH" wire --single "$single" --burst "$burst" >"$file.json" 2>"$file.err" \
    || { echo "tern-bench wire failed, see $file.err" >&2; exit 1; }
  local pid
  pid=$(cat "$file.pid")
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
  local writer=0 rest=0 f n
  for f in "$file"-*; do
    n=$(awk '/^summary:/ {print $2}' "$f")
    if grep -q "writer_loop\|sqlite::checkpoint::run" "$f"; then writer=$((writer + n)); else rest=$((rest + n)); fi
  done
  echo "$writer $rest"
}

echo "| server | mode | messages | writer instructions/msg | rest instructions/msg |"
echo "|---|---|---|---|---|"
for bin in "${BINS[@]}"; do
  i=0
  for mode in single burst; do
    if [ "$mode" = single ]; then a=$S1 b=$S2; else a=$B1 b=$B2; fi
    i=$((i + 1))
    if [ "$mode" = single ]; then
      read -r w1 r1 < <(run "$bin" "s$i-$a" "$a" 0)
      read -r w2 r2 < <(run "$bin" "s$i-$b" "$b" 0)
    else
      read -r w1 r1 < <(run "$bin" "b$i-$a" 0 "$a")
      read -r w2 r2 < <(run "$bin" "b$i-$b" 0 "$b")
    fi
    n=$((b - a))
    # The writer's count repeats, so it must grow with the messages. The rest counts
    # timers and idle polls too (above): with a few messages (CI's smoke) their noise can
    # outweigh the messages, and the rest is then reported as it came out, not failed.
    if [ "$w2" -le "$w1" ]; then
      echo "no cost per message measured ($mode: writer $w1 -> $w2, rest $r1 -> $r2): see $OUT" >&2
      exit 1
    fi
    if [ "$r2" -le "$r1" ]; then
      echo "$mode: the rest fell from $r1 to $r2 instructions: timer noise outweighs $n messages; read it with more" >&2
    fi
    echo "| $bin | $mode | $a → $b | $(((w2 - w1) / n)) | $(((r2 - r1) / n)) |"
  done
done
echo
echo "callgrind files: $OUT (callgrind_annotate --inclusive=yes <file> for the functions)"
