#!/usr/bin/env bash
# A three-node Tern cluster on loopback, for trying it out and for CI: PostgreSQL (via
# server/dev-postgres.sh), one NATS server (Debian's nats-server) and three tern-server
# nodes in dev mode sharing one data directory (dev certificate and QUIC reset key).
#
#   bash server/cluster.sh start      # builds tern-server if needed, starts everything
#   bash server/cluster.sh status     # which nodes answer /healthz
#   bash server/cluster.sh kill 1     # kill -9 node 1 (its clients move to another node)
#   bash server/cluster.sh restart 1  # start node 1 again
#   bash server/cluster.sh stop       # stops the nodes and NATS (PostgreSQL keeps running)
#   bash server/cluster.sh clean      # stop, then drop the cluster's database and files
#
# Node i listens on QUIC 127.0.0.1:74i3 (TCP fallback on the same port, WebSocket on
# the next) and HTTP 127.0.0.1:749i; NATS on 127.0.0.1:4222. Then:
#   tern --server 127.0.0.1:7403,127.0.0.1:7413,127.0.0.1:7423 \
#        --ca target/tern-cluster/data/dev-cert.pem --user bob listen
# Environment: TERN_CLUSTER_DIR (default target/tern-cluster), TERN_SERVER_BIN (default
# target/debug/tern-server, built if missing), TERN_CLUSTER_NODES (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${TERN_CLUSTER_DIR:-target/tern-cluster}
bin=${TERN_SERVER_BIN:-target/debug/tern-server}
nodes=${TERN_CLUSTER_NODES:-3}
nats_port=4222
mkdir -p "$dir"

quic_port() { echo $((7403 + 10 * $1)); }
http_port() { echo $((7490 + $1)); }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# Node i answers on its HTTP port (bash's /dev/tcp: no curl needed).
up() { (exec 3<>"/dev/tcp/127.0.0.1/$(http_port "$1")" && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && head -n 1 <&3 | grep -q " 200 ") 2>/dev/null; }

start_nats() {
  if alive "$dir/nats.pid"; then return; fi
  if ! command -v nats-server >/dev/null 2>&1; then
    echo "== installing nats-server (Debian's nats-server)" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq nats-server >/dev/null
    else sudo apt-get install -y -qq nats-server >/dev/null; fi
  fi
  nats-server -a 127.0.0.1 -p "$nats_port" > "$dir/nats.log" 2>&1 &
  echo $! > "$dir/nats.pid"
  for _ in $(seq 100); do
    (echo > "/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && return
    sleep 0.1
  done
  echo "nats-server did not start; see $dir/nats.log" >&2
  exit 1
}

store_url() {
  if [ -f "$dir/store-url" ]; then cat "$dir/store-url"; return; fi
  local base db url
  base=$(bash server/dev-postgres.sh)
  db=tern_cluster_$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
  psql "$base" -qc "CREATE DATABASE $db" >&2
  url=${base/\/tern\?/\/$db?}
  echo "$url" > "$dir/store-url"
  echo "$url"
}

start_node() {
  local i=$1 url=$2
  if alive "$dir/node$i.pid"; then return; fi
  "$bin" --dev --data "$dir/data" --store "$url" \
    --quic "127.0.0.1:$(quic_port "$i")" --http "127.0.0.1:$(http_port "$i")" \
    --nats "nats://127.0.0.1:$nats_port" --node "node$i" --node-number "$i" \
    > "$dir/node$i.out" 2> "$dir/node$i.log" &
  echo $! > "$dir/node$i.pid"
  for _ in $(seq 150); do
    if grep -q "^http listening on" "$dir/node$i.out" 2>/dev/null && up "$i"; then
      echo "node$i: QUIC 127.0.0.1:$(quic_port "$i"), HTTP 127.0.0.1:$(http_port "$i")"
      return
    fi
    if ! alive "$dir/node$i.pid"; then break; fi
    sleep 0.1
  done
  echo "node$i did not start; its log:" >&2
  tail -n 20 "$dir/node$i.log" >&2
  exit 1
}

stop_pid() {
  local f=$1 sig=${2:-TERM}
  if alive "$f"; then
    kill -"$sig" "$(cat "$f")" 2>/dev/null || true
    for _ in $(seq 100); do alive "$f" || break; sleep 0.1; done
  fi
  rm -f "$f"
}

servers() {
  local list="" i
  for i in $(seq 0 $((nodes - 1))); do list="$list${list:+,}127.0.0.1:$(quic_port "$i")"; done
  echo "$list"
}

case "${1:-start}" in
  start)
    # The nodes, and the `tern` CLI the README chats through the cluster with.
    if [ ! -x "$bin" ] || [ ! -x target/debug/tern ]; then cargo build -q --workspace --bins; fi
    start_nats
    url=$(store_url)
    for i in $(seq 0 $((nodes - 1))); do start_node "$i" "$url"; done
    echo "cluster up: tern --server $(servers) --ca $dir/data/dev-cert.pem ..."
    ;;
  status)
    alive "$dir/nats.pid" && echo "nats: up" || echo "nats: down"
    for i in $(seq 0 $((nodes - 1))); do
      if up "$i"; then
        echo "node$i: up"
      else
        echo "node$i: down"
      fi
    done
    ;;
  kill) stop_pid "$dir/node${2:?node number}.pid" KILL ;;
  restart) start_node "${2:?node number}" "$(store_url)" ;;
  servers) servers ;;
  stop|clean)
    for i in $(seq 0 $((nodes - 1))); do stop_pid "$dir/node$i.pid"; done
    stop_pid "$dir/nats.pid"
    if [ "$1" = clean ] && [ -f "$dir/store-url" ]; then
      url=$(cat "$dir/store-url")
      db=${url##*/}; db=${db%%\?*}
      base=$(bash server/dev-postgres.sh)
      psql "$base" -qc "DROP DATABASE IF EXISTS $db" >&2
      rm -rf "$dir"
    fi
    ;;
  *) echo "usage: $0 start|status|kill N|restart N|servers|stop|clean" >&2; exit 2 ;;
esac
